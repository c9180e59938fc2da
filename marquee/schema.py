"""Arrow schemas and validated records shared by every layer.

One definition of an event, a title, a member and an artwork variant, so the world generator, the
MovieLens importer, the event log, the feature jobs and (later) the HTTP API cannot drift apart.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------

EVENT_TYPES: tuple[str, ...] = (
    "impression",  # a title was shown (row, position, artwork, propensity)
    "play",  # playback started
    "progress",  # value = fraction watched so far (0..1]; payload may carry {"episode": n}
    "completion",  # value = 1.0; title (or episode) finished
    "thumb",  # value = +1 (up), -1 (down) or 0 (cleared)
    "my_list_add",
    "my_list_remove",
    "search",  # title_id may be null; payload {"query": "..."}
    "preference",  # onboarding tastes; title_id may be null; payload {"genres": ["...", ...]}
)
TITLE_REQUIRED_TYPES = frozenset(EVENT_TYPES) - {"search", "preference"}
# A preference event replaces the member's preferred genres (an empty list clears them).
MAX_PREFERRED_GENRES = 20
MAX_GENRE_NAME = 64

# Maturity levels, ordered: a profile with level L may see titles with level <= L.
MATURITY_LABELS: tuple[str, ...] = ("kids", "family", "teen", "mature")
MAX_MATURITY = len(MATURITY_LABELS) - 1

ARTWORK_THEMES: tuple[str, ...] = (
    "action", "character", "romance", "comedy", "dark", "family", "scenic", "ensemble",
)
DEVICES: tuple[str, ...] = ("tv", "mobile", "web", "tablet")

# ---------------------------------------------------------------------------------------------
# Arrow schemas (what lands in Parquet)
# ---------------------------------------------------------------------------------------------

TIMESTAMP = pa.timestamp("ms", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("member_id", pa.int64(), nullable=False),
        pa.field("title_id", pa.int64()),
        pa.field("type", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("country", pa.string()),
        pa.field("device", pa.string()),
        pa.field("row", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("artwork", pa.string()),
        pa.field("propensity", pa.float64()),
        pa.field("value", pa.float64()),  # progress fraction, thumb +1/-1/0, MovieLens rating
        pa.field("experiments", pa.string()),  # JSON object {experiment: variant}
        pa.field("payload", pa.string()),  # JSON object, type-specific extras
    ]
)

# What the event log and the world store on disk: the event plus the log's sequence number.
# Parquet datasets are hive-partitioned by `day=YYYY-MM-DD` (UTC day of `timestamp`).
STORED_EVENT_SCHEMA = EVENT_SCHEMA.append(pa.field("seq", pa.int64(), nullable=False))

TITLE_SCHEMA = pa.schema(
    [
        pa.field("title_id", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
        pa.field("release_year", pa.int32()),
        pa.field("release_date", pa.date32()),
        pa.field("maturity", pa.int8(), nullable=False),  # index into MATURITY_LABELS
        pa.field("runtime_min", pa.int32()),
        pa.field("countries", pa.list_(pa.string()), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "movie" or "series"
        pa.field("series_id", pa.int64()),  # seasons of one show share it; null for movies
        pa.field("season", pa.int32()),
        pa.field("episodes", pa.int32(), nullable=False),  # 1 for a movie
    ]
)

ARTWORK_SCHEMA = pa.schema(
    [
        pa.field("artwork_id", pa.string(), nullable=False),  # f"{title_id}-{k}"
        pa.field("title_id", pa.int64(), nullable=False),
        pa.field("theme", pa.string(), nullable=False),
    ]
)

MEMBER_SCHEMA = pa.schema(
    [
        pa.field("member_id", pa.int64(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("maturity", pa.int8(), nullable=False),  # highest level the profile may see
        pa.field("language", pa.string(), nullable=False),
        pa.field("devices", pa.list_(pa.string()), nullable=False),
        # Ground truth of the synthetic world; models and feature jobs must never read it.
        pa.field("taste", pa.list_(pa.float32())),
        pa.field("activity", pa.float32()),  # expected sessions per day
        pa.field("join_date", pa.date32()),
    ]
)

# A dataset directory (world or imported MovieLens) always has this layout:
#   titles.parquet, artwork.parquet, members.parquet, events/day=YYYY-MM-DD/*.parquet,
#   manifest.json ({"source": ..., "seed": ..., counts, "start": iso, "end": iso, "genres": [...]})
DATASET_FILES = ("titles.parquet", "artwork.parquet", "members.parquet", "manifest.json")
EVENTS_DIR = "events"

# ---------------------------------------------------------------------------------------------
# Event validation (per event, with a reason)
# ---------------------------------------------------------------------------------------------


class EventError(ValueError):
    """A single event is malformed; the message names the field and what was expected."""


@dataclass(frozen=True, slots=True)
class Event:
    """A validated interaction. Build with `Event.parse(dict)`; never construct unchecked."""

    event_id: str
    member_id: int
    title_id: int | None
    type: str
    timestamp_ms: int
    country: str | None = None
    device: str | None = None
    row: str | None = None
    position: int | None = None
    artwork: str | None = None
    propensity: float | None = None
    value: float | None = None
    experiments: str | None = None
    payload: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> "Event":
        if not isinstance(raw, dict):
            raise EventError(f"event must be an object, got {type(raw).__name__}")
        unknown = set(raw) - _EVENT_FIELDS
        if unknown:
            raise EventError(f"unknown field(s): {', '.join(sorted(unknown))}")
        event_id = raw.get("event_id")
        if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > 128:
            raise EventError("event_id: expected a non-empty string of at most 128 characters")
        member_id = _int_field(raw, "member_id", required=True, minimum=0)
        etype = raw.get("type")
        if etype not in EVENT_TYPES:
            raise EventError(f"type: expected one of {', '.join(EVENT_TYPES)}, got {etype!r}")
        title_id = _int_field(raw, "title_id", required=etype in TITLE_REQUIRED_TYPES, minimum=0)
        timestamp_ms = _timestamp_ms(raw.get("timestamp"))
        position = _int_field(raw, "position", required=False, minimum=0)
        propensity = _float_field(raw, "propensity")
        if propensity is not None and not 0.0 < propensity <= 1.0:
            raise EventError(f"propensity: expected a probability in (0, 1], got {propensity}")
        value = _float_field(raw, "value")
        if etype in ("progress", "completion") and value is not None and not 0.0 <= value <= 1.0:
            raise EventError(f"value: a {etype} fraction must lie in [0, 1], got {value}")
        if etype == "thumb" and value not in (-1.0, 0.0, 1.0):
            raise EventError(f"value: a thumb must be +1, -1 or 0, got {raw.get('value')!r}")
        payload = _json_object_field(raw, "payload")
        if etype == "preference":
            _check_preference(payload)
        return cls(
            event_id=event_id,
            member_id=member_id,
            title_id=title_id,
            type=etype,
            timestamp_ms=timestamp_ms,
            country=_str_field(raw, "country"),
            device=_str_field(raw, "device"),
            row=_str_field(raw, "row"),
            position=position,
            artwork=_str_field(raw, "artwork"),
            propensity=propensity,
            value=value,
            experiments=_json_object_field(raw, "experiments"),
            payload=payload,
        )

    def to_row(self) -> dict[str, Any]:
        """A dict keyed like EVENT_SCHEMA (timestamp as epoch milliseconds)."""
        row = {name: getattr(self, name) for name in _EVENT_FIELDS if name != "timestamp"}
        row["timestamp"] = self.timestamp_ms
        return row


_EVENT_FIELDS = frozenset(EVENT_SCHEMA.names)


def _int_field(raw: dict, name: str, *, required: bool, minimum: int) -> int | None:
    value = raw.get(name)
    if value is None:
        if required:
            raise EventError(f"{name}: required")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise EventError(f"{name}: expected an integer, got {type(value).__name__}")
    if value < minimum or value >= 2**63:
        raise EventError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def _float_field(raw: dict, name: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise EventError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _str_field(raw: dict, name: str, max_len: int = 256) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise EventError(f"{name}: expected a string of at most {max_len} characters")
    return value


def _json_object_field(raw: dict, name: str) -> str | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise EventError(f"{name}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise EventError(f"{name}: expected a JSON object")
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _check_preference(payload: str | None) -> None:
    """A preference payload is exactly {"genres": [names]}, so readers of the log can rely on it."""
    if payload is None:
        raise EventError('payload.genres: required (a preference event carries {"genres": [...]})')
    body = json.loads(payload)
    extra = sorted(set(body) - {"genres"})
    if extra:
        raise EventError(f"payload: a preference event carries only genres, got {', '.join(extra)}")
    if "genres" not in body:
        raise EventError("payload.genres: required")
    genres = body["genres"]
    if not isinstance(genres, list):
        raise EventError(f"payload.genres: expected a list of genre names, got {type(genres).__name__}")
    if len(genres) > MAX_PREFERRED_GENRES:
        raise EventError(f"payload.genres: at most {MAX_PREFERRED_GENRES} genres, got {len(genres)}")
    for i, genre in enumerate(genres):
        if not isinstance(genre, str) or not genre.strip() or len(genre) > MAX_GENRE_NAME:
            raise EventError(
                f"payload.genres[{i}]: expected a non-empty string of at most {MAX_GENRE_NAME} "
                f"characters, got {genre!r}"
            )


# Timestamps between 1990-01-01 and 2100-01-01 are accepted (MovieLens starts in 1995); anything
# else is a unit mistake (seconds sent as milliseconds land in 1970).
_MIN_TS_MS = 631_152_000_000
_MAX_TS_MS = 4_102_444_800_000


def _timestamp_ms(value: Any) -> int:
    if value is None:
        raise EventError("timestamp: required")
    if isinstance(value, bool):
        raise EventError("timestamp: expected epoch milliseconds or an ISO-8601 string")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise EventError("timestamp: expected a finite number")
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise EventError(f"timestamp: not an ISO-8601 time: {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        ms = int(parsed.timestamp() * 1000)
    elif isinstance(value, datetime):
        stamp = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        ms = int(stamp.timestamp() * 1000)
    else:
        raise EventError("timestamp: expected epoch milliseconds or an ISO-8601 string")
    if not _MIN_TS_MS <= ms < _MAX_TS_MS:
        raise EventError(f"timestamp: {value!r} is outside 1990..2100 (epoch milliseconds?)")
    return ms


def events_to_table(events: list[Event], seqs: list[int] | None = None) -> pa.Table:
    """Columnar form of validated events; with `seqs`, in STORED_EVENT_SCHEMA."""
    columns: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}
    for event in events:
        for name in EVENT_SCHEMA.names:
            columns[name].append(event.timestamp_ms if name == "timestamp" else getattr(event, name))
    arrays = [pa.array(columns[f.name], type=f.type) for f in EVENT_SCHEMA]
    if seqs is None:
        return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
    if len(seqs) != len(events):
        raise ValueError(f"{len(seqs)} sequence numbers for {len(events)} events")
    arrays.append(pa.array(seqs, type=pa.int64()))
    return pa.Table.from_arrays(arrays, schema=STORED_EVENT_SCHEMA)
