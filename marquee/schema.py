"""Arrow schemas and validated records shared by every layer.

One definition of an event, a title, a member and an artwork variant, so the world generator, the
MovieLens importer, the event log, the feature jobs and the HTTP API cannot drift apart. What a
valid event is lives in one table of rules (EVENT_FIELD_RULES and the typed rules after it): the
pydantic event models and the column-wise check of bulk imports are both built from it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field,
                      PlainValidator, TypeAdapter, ValidationError, WithJsonSchema, create_model)
from pydantic_core import PydanticCustomError

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
# What a valid event is: the rules, written once. The pydantic event models (JSON batches of the
# HTTP API, its OpenAPI schema, `Event.parse` of the event log) and `validate_event_table` (Arrow
# batches of bulk imports, checked a column at a time) are both derived from these tables.
# ---------------------------------------------------------------------------------------------

# Timestamps between 1990-01-01 and 2100-01-01 are accepted (MovieLens starts in 1995); anything
# else is a unit mistake (seconds sent as milliseconds land in 1970).
# Member and title ids: 0..2**53-1, the integers a JSON number holds exactly in every client (a
# JavaScript client, or a fuzzer computing in doubles, rounds larger ones)
MAX_ID = 2**53 - 1
MIN_TIMESTAMP_MS = 631_152_000_000
MAX_TIMESTAMP_MS = 4_102_444_800_000  # exclusive


class EventError(ValueError):
    """A single event is malformed; the message names the field and what was expected."""


@dataclass(frozen=True)
class FieldRule:
    """What one event field may hold; `reason` is the message a violation gets."""

    kind: str  # "text" | "integer" | "number" | "timestamp" | "object" | "type" | "list"
    expect: str = ""  # "<field>: expected <expect>, got <value>"
    required: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    max_length: int | None = None
    nonblank: bool = False
    choices: tuple[float, ...] = ()
    message: str = ""  # replaces "expected <expect>" (the type-specific rules)
    noun: str = "items"  # a list's items, in "at most N <noun>"
    description: str = ""

    def reason(self, value: Any) -> str:
        return f"{self.message or 'expected ' + self.expect}, got {value!r}"


def _text(max_length: int = 256, description: str = "", **kw: Any) -> FieldRule:
    return FieldRule("text", f"a string of at most {max_length} characters", max_length=max_length,
                     description=description, **kw)


EVENT_FIELD_RULES: dict[str, FieldRule] = {
    "event_id": FieldRule("text", "a non-empty string of at most 128 characters", required=True, max_length=128,
                          nonblank=True, description="unique per event: a resent batch is deduplicated by it"),
    "member_id": FieldRule("integer", f"an integer >= 0 and <= {MAX_ID}", required=True, ge=0, le=MAX_ID),
    "title_id": FieldRule("integer", f"an integer >= 0 and <= {MAX_ID}", ge=0, le=MAX_ID,
                          description="the title; required except for search and preference events"),
    "type": FieldRule("type", "one of " + ", ".join(EVENT_TYPES), required=True),
    "timestamp": FieldRule("timestamp", "epoch milliseconds or an ISO-8601 time in 1990..2100", required=True,
                           ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS,
                           description="epoch milliseconds, or an ISO-8601 time (UTC when it has no offset)"),
    "country": _text(description="ISO country code of the session"),
    "device": _text(description="one of " + ", ".join(DEVICES) + " for traffic of the gateway"),
    "row": _text(description="row id the title was shown in"),
    "position": FieldRule("integer", "an integer in 0..2147483647", ge=0, lt=2**31,
                          description="position in the row, from 0"),
    "artwork": _text(description="artwork id shown (impressions)"),
    "propensity": FieldRule("number", "a finite number in (0, 1]", gt=0.0, le=1.0,
                            description="probability the shown artwork had of being chosen"),
    "value": FieldRule("number", "a finite number",
                       description="progress/completion: fraction watched in [0, 1]; thumb: +1, -1 or 0"),
    "experiments": FieldRule("object", "a JSON object", description="{experiment: variant}"),
    "payload": FieldRule("object", "a JSON object", description="type-specific extras"),
}
if tuple(EVENT_FIELD_RULES) != tuple(EVENT_SCHEMA.names):  # one list of fields, in one order
    raise AssertionError("EVENT_FIELD_RULES and EVENT_SCHEMA name different fields")

# Rules that depend on the event's type.
TITLE_REQUIRED_TYPES = frozenset(EVENT_TYPES) - {"search", "preference"}
VALUE_RULES: dict[str, FieldRule] = {
    "progress": FieldRule("number", ge=0.0, le=1.0, message="a progress fraction must lie in [0, 1]",
                          description="fraction watched so far"),
    "completion": FieldRule("number", ge=0.0, le=1.0, message="a completion fraction must lie in [0, 1]",
                            description="1.0, or the fraction watched of the finished episode"),
    "thumb": FieldRule("number", required=True, choices=(-1.0, 0.0, 1.0), message="a thumb must be +1, -1 or 0",
                       description="+1 up, -1 down, 0 cleared"),
}
# A preference event replaces the member's preferred genres (an empty list clears them): its
# payload is exactly {"genres": [names]}, so readers of the log can rely on it.
MAX_PREFERRED_GENRES = 20
MAX_GENRE_NAME = 64
PREFERENCE_PAYLOAD_RULE = FieldRule("object", 'a JSON object {"genres": [...]}', required=True,
                                    message="", description='{"genres": [names]}: replaces the preferred genres')
PREFERENCE_GENRES_RULE = FieldRule("list", "a list of genre names", required=True,
                                   max_length=MAX_PREFERRED_GENRES, noun="genres")
GENRE_NAME_RULE = FieldRule("text", f"a non-empty string of at most {MAX_GENRE_NAME} characters", required=True,
                            max_length=MAX_GENRE_NAME, nonblank=True)


_REQUIRED_TITLE_RULE = replace(EVENT_FIELD_RULES["title_id"], required=True, description="the title")


def rule_for(event_type: str | None, path: str) -> FieldRule | None:
    """The rule behind a field path of an event ("value", "payload.genres[]")."""
    if path == "value" and event_type in VALUE_RULES:
        return VALUE_RULES[event_type]
    if path == "title_id" and event_type in TITLE_REQUIRED_TYPES:
        return _REQUIRED_TITLE_RULE
    if event_type == "preference" and path.startswith("payload"):
        return {"payload": PREFERENCE_PAYLOAD_RULE, "payload.genres": PREFERENCE_GENRES_RULE,
                "payload.genres[]": GENRE_NAME_RULE}.get(path)
    return EVENT_FIELD_RULES.get(path)


# -- (a) the pydantic models, from the rules ---------------------------------------------------

_OWN_MESSAGE = "event_field"  # a custom error whose message is already the reason


def _timestamp_ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, datetime)):
        raise PydanticCustomError(_OWN_MESSAGE, "expected epoch milliseconds or an ISO-8601 string")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise PydanticCustomError(_OWN_MESSAGE, "expected whole epoch milliseconds, got {value}",
                                      {"value": value})
        ms = int(value)
    elif isinstance(value, int):
        ms = value
    else:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise PydanticCustomError(_OWN_MESSAGE, "not an ISO-8601 time: {value!r}",
                                          {"value!r": repr(value)}) from None
        stamp = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        ms = int(stamp.timestamp() * 1000)
    if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        raise PydanticCustomError(_OWN_MESSAGE, "{value} is outside 1990..2100 (epoch milliseconds?)",
                                  {"value": repr(value) if not isinstance(value, datetime) else value.isoformat()})
    return ms


def _json_object_text(value: Any) -> Any:
    """JSON text of an object (the form the log stores) is read as that object."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise PydanticCustomError(_OWN_MESSAGE, "not valid JSON ({msg})", {"msg": exc.msg}) from None
    return value


_TIMESTAMP_JSON_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": MIN_TIMESTAMP_MS, "exclusiveMaximum": MAX_TIMESTAMP_MS},
        # RFC 3339 in 1991..2098 (days 01..28 of every month, so each string it allows is a real
        # time inside the accepted range whatever its offset); the log accepts any ISO-8601 time
        # in 1990..2100, which JSON Schema cannot say in a form a client or a fuzzer can use
        {"type": "string", "pattern": r"^(199[1-9]|20[0-8]\d|209[0-8])-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
                                      r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-](0\d|1[0-3]):[0-5]\d)$"},
    ],
}


def _whole_number(value: Any) -> Any:
    """JSON has one number type: 35.0 is the integer 35 (as JSON Schema's "integer" says); 35.5
    and "35" stay what they are, and are refused by the strict integer check after this."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_int(**limits: Any) -> Any:
    """An integer as JSON means it: whole numbers only, never a string or a boolean. (The limits
    sit on the int itself, before the validator wraps it, so the JSON schema shows them.)"""
    return Annotated[int, Field(strict=True, **limits), BeforeValidator(_whole_number)]


def _annotation(rule: FieldRule) -> Any:
    limits = {key: getattr(rule, key) for key in ("ge", "gt", "le", "lt") if getattr(rule, key) is not None}
    if rule.kind == "text":
        return Annotated[str, Field(strict=True, min_length=1 if rule.nonblank else None,
                                    max_length=rule.max_length, pattern=r"\S" if rule.nonblank else None)]
    if rule.kind == "integer":
        return json_int(**limits)
    if rule.kind == "number":
        number = Annotated[float, Field(strict=True, allow_inf_nan=False, **limits)]
        if not rule.choices:
            return number
        choices = rule.choices

        def one_of(value: float) -> float:
            if value not in choices:
                raise ValueError("not one of the choices")
            return value
        return Annotated[number, AfterValidator(one_of),
                         WithJsonSchema({"type": "number", "enum": [int(c) for c in choices]})]
    if rule.kind == "timestamp":
        return Annotated[int, PlainValidator(_timestamp_ms), WithJsonSchema(_TIMESTAMP_JSON_SCHEMA)]
    if rule.kind == "object":
        return Annotated[dict[str, Any], BeforeValidator(_json_object_text)]
    raise ValueError(f"no annotation for a rule of kind {rule.kind!r}")


def _field(annotation: Any, rule: FieldRule) -> tuple[Any, Any]:
    extra = {"description": rule.description} if rule.description else {}
    if rule.required:
        return annotation, Field(..., **extra)
    return annotation | None, Field(None, **extra)


class PreferencePayload(BaseModel):
    """The payload of a preference event."""

    model_config = ConfigDict(extra="forbid")

    genres: Annotated[list[_annotation(GENRE_NAME_RULE)], Field(max_length=MAX_PREFERRED_GENRES)] = Field(
        ..., description="the member's preferred genres; an empty list clears them")


def _event_model(event_type: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, rule in EVENT_FIELD_RULES.items():
        if name == "type":
            fields[name] = (Literal[event_type], Field(...))
            continue
        rule = rule_for(event_type, name) or rule
        if rule is PREFERENCE_PAYLOAD_RULE:
            annotation = Annotated[PreferencePayload, BeforeValidator(_json_object_text)]
        else:
            annotation = _annotation(rule)
        fields[name] = _field(annotation, rule)
    title = "".join(part.title() for part in event_type.split("_")) + "Event"
    return create_model(title, __config__=ConfigDict(extra="forbid", title=title),
                        __doc__=f"A {event_type.replace('_', ' ')} event.", **fields)


EVENT_MODELS: dict[str, type[BaseModel]] = {t: _event_model(t) for t in EVENT_TYPES}
# One event of any type, told apart by `type` (a discriminated union: OpenAPI's oneOf + discriminator)
EventIn = Annotated[Union[tuple(EVENT_MODELS.values())], Discriminator("type")]  # type: ignore[valid-type]
_EVENT_ADAPTER: TypeAdapter = TypeAdapter(EventIn)


def event_problems(errors: list[dict], raw: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(field, reason) per problem of one event from pydantic's errors, worded by the rules;
    `prefix` is where the event sits ("events[3]")."""
    event_type = raw.get("type") if isinstance(raw, dict) else None
    out: list[tuple[str, str]] = []
    unknown: dict[str, list[str]] = {}
    for error in errors:
        loc = [part for part in error["loc"] if part not in EVENT_MODELS]  # the union's tag is no field
        path = field_path(loc)
        kind = error["type"]
        where = f"{prefix}.{path}" if prefix and path else (prefix or path)
        if kind == "extra_forbidden":
            parent = field_path(loc[:-1])
            unknown.setdefault(parent, []).append(str(loc[-1]))
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            where = f"{prefix}.type" if prefix else "type"
            given = raw.get("type") if isinstance(raw, dict) else None
            out.append((where, "required" if given is None else EVENT_FIELD_RULES["type"].reason(given)))
            continue
        if kind in ("model_attributes_type", "dict_type", "model_type") and not path:
            out.append((prefix or "event", f"must be an object, got {type(error['input']).__name__}"))
            continue
        rule = rule_for(event_type, re.sub(r"\[\d+\]", "[]", path))
        if kind == "missing" or (error.get("input") is None and rule is not None and rule.required):
            reason = "required"
        elif kind == _OWN_MESSAGE:
            reason = error["msg"]
        elif kind == "too_long" and rule is not None and rule.kind == "list":
            reason = f"at most {error['ctx']['max_length']} {rule.noun}, got {error['ctx']['actual_length']}"
        elif rule is not None:
            reason = rule.reason(error.get("input"))
        else:
            reason = error["msg"]
        out.append((where, reason))
    for parent, names in unknown.items():
        where = ".".join(p for p in (prefix, parent) if p)
        if parent == "payload" and event_type == "preference":
            out.insert(0, (where, f"a preference event carries only genres, got {', '.join(sorted(names))}"))
        else:
            out.insert(0, (where, f"unknown field(s): {', '.join(sorted(names))}"))
    return out


def field_path(loc: Any) -> str:
    """("payload", "genres", 1) -> "payload.genres[1]"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem_text(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{where}: {reason}" if where else reason for where, reason in problems)


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
        """Validate one event (a dict as JSON decodes it) by the event models; EventError names
        every bad field."""
        if not isinstance(raw, dict):
            raise EventError(f"event must be an object, got {type(raw).__name__}")
        try:
            model = _EVENT_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            raise EventError(_problem_text(event_problems(exc.errors(), raw))) from None
        return cls.from_model(model)

    @classmethod
    def from_model(cls, model: BaseModel) -> "Event":
        """The record of an event the models validated (e.g. one of an HTTP batch)."""
        f = model.__dict__
        payload, experiments = f["payload"], f["experiments"]
        if payload is not None:
            payload = _canonical_json(payload.model_dump() if isinstance(payload, BaseModel) else payload)
        if experiments is not None:
            experiments = _canonical_json(experiments)
        return cls(f["event_id"], f["member_id"], f["title_id"], f["type"], f["timestamp"], f["country"],
                   f["device"], f["row"], f["position"], f["artwork"], f["propensity"], f["value"],
                   experiments, payload)

    def to_row(self) -> dict[str, Any]:
        """A dict keyed like EVENT_SCHEMA (timestamp as epoch milliseconds)."""
        row = {name: getattr(self, name) for name in _EVENT_FIELDS if name != "timestamp"}
        row["timestamp"] = self.timestamp_ms
        return row


_EVENT_FIELDS = frozenset(EVENT_SCHEMA.names)


def _canonical_json(value: dict) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- (b) the column-wise check of Arrow tables, from the same rules -----------------------------


@dataclass
class TableCheck:
    """The rows of a table that follow the event rules, and why each other row does not."""

    valid: pa.Table
    rejected: list[tuple[int, str | None, str]]  # (row index in the input, event_id, reason)


def validate_event_table(table: pa.Table) -> TableCheck:
    """Bulk imports (a world's or MovieLens' million events): the rules of `Event.parse`, applied a
    column at a time to a table already in EVENT_SCHEMA's types. Bad rows are left out and named."""
    n = table.num_rows
    types = table.column("type")
    problems: list[tuple[np.ndarray, str, FieldRule]] = []
    for name, rule in EVENT_FIELD_RULES.items():
        if name == "value" or (name == "payload"):
            continue  # typed rules below
        problems.append((_violations(table.column(name), rule), name, rule))
    needs_title = _mask(pc.is_in(types, value_set=pa.array(sorted(TITLE_REQUIRED_TYPES))))
    problems.append((needs_title & _mask(pc.is_null(table.column("title_id"))), "title_id", _REQUIRED_TITLE_RULE))
    typed = {t: _mask(pc.equal(types, t)) for t in [*VALUE_RULES, "preference"]}
    untyped_value = ~np.logical_or.reduce([typed[t] for t in VALUE_RULES])
    problems.append((untyped_value & _violations(table.column("value"), EVENT_FIELD_RULES["value"]),
                     "value", EVENT_FIELD_RULES["value"]))
    for event_type, rule in VALUE_RULES.items():
        problems.append((typed[event_type] & _violations(table.column("value"), rule), "value", rule))
    payload = table.column("payload")
    problems.append((~typed["preference"] & _violations(payload, EVENT_FIELD_RULES["payload"]), "payload",
                     EVENT_FIELD_RULES["payload"]))
    preference_reasons = _preference_payload_reasons(payload, typed["preference"])

    bad = np.zeros(n, dtype=bool)
    for mask, _, _ in problems:
        bad |= mask
    bad[list(preference_reasons)] = True
    if not bad.any():
        return TableCheck(table, [])
    reasons: dict[int, list[str]] = {}
    for mask, name, rule in problems:
        rows = np.flatnonzero(mask)
        if rows.size:
            values = table.column(name).take(pa.array(rows)).to_pylist()
            for row, value in zip(rows.tolist(), values):
                reasons.setdefault(row, []).append(f"{name}: " + ("required" if value is None else rule.reason(value)))
    for row, text in preference_reasons.items():
        reasons.setdefault(row, []).append(text)
    bad_rows = sorted(reasons)
    ids = table.column("event_id").take(pa.array(bad_rows)).to_pylist()
    rejected = [(row, event_id, "; ".join(reasons[row])) for row, event_id in zip(bad_rows, ids)]
    return TableCheck(table.filter(pa.array(~bad)), rejected)


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _violations(column: pa.ChunkedArray, rule: FieldRule) -> np.ndarray:
    """Rows of `column` that break `rule` (a null only when the rule requires a value)."""
    present = column
    if rule.kind == "timestamp":
        present = pc.cast(column, pa.int64())
    bad = _mask(pc.is_null(present)) if rule.required else np.zeros(len(column), dtype=bool)
    if rule.kind in ("integer", "number", "timestamp"):
        if rule.kind == "number":
            bad |= ~_mask(pc.is_finite(present)) & ~_mask(pc.is_null(present))
        for key, op in (("ge", pc.less), ("gt", pc.less_equal), ("le", pc.greater), ("lt", pc.greater_equal)):
            bound = getattr(rule, key)
            if bound is None:
                continue
            try:
                limit = pa.scalar(bound, present.type)
            except (pa.ArrowInvalid, OverflowError):  # the column's type cannot hold a value past it
                continue
            bad |= _mask(op(present, limit))
        if rule.choices:
            bad |= ~_mask(pc.is_in(present, value_set=pa.array(rule.choices, present.type))) & \
                ~_mask(pc.is_null(present))
    elif rule.kind == "text":
        if rule.max_length is not None:
            bad |= _mask(pc.greater(pc.utf8_length(present), rule.max_length))
        if rule.nonblank:
            bad |= ~_mask(pc.match_substring_regex(present, r"\S")) & ~_mask(pc.is_null(present))
    elif rule.kind == "type":
        bad |= ~_mask(pc.is_in(present, value_set=pa.array(EVENT_TYPES)))
    elif rule.kind == "object":  # JSON text; repeated payloads are parsed once
        texts = pc.unique(present.drop_null() if hasattr(present, "drop_null") else present).to_pylist()
        wrong = [t for t in texts if t is not None and not _is_json_object(t)]
        if wrong:
            bad |= _mask(pc.is_in(present, value_set=pa.array(wrong, pa.string())))
    return bad


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _preference_payload_reasons(payload: pa.ChunkedArray, rows: np.ndarray) -> dict[int, str]:
    """Row -> reason for preference events whose payload is not {"genres": [...]} (by the model)."""
    out: dict[int, str] = {}
    indices = np.flatnonzero(rows)
    if not indices.size:
        return out
    adapter = _PREFERENCE_ADAPTER
    for row, text in zip(indices.tolist(), payload.take(pa.array(indices)).to_pylist()):
        if text is None:
            out[row] = "payload: required"
            continue
        try:
            adapter.validate_python(_json_object_text(text))
        except PydanticCustomError as exc:
            out[row] = f"payload: {exc}"
        except ValidationError as exc:
            errors = [{**e, "loc": ("payload", *e["loc"])} for e in exc.errors()]
            out[row] = _problem_text(event_problems(errors, {"type": "preference"}))
    return out


_PREFERENCE_ADAPTER: TypeAdapter = TypeAdapter(PreferencePayload)


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
