"""Event rows as what member state applies: which types change state, timestamps as epoch
milliseconds, and the few payload fields it reads (episode, preferred genres), parsed only on the
rows that can hold them."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from state.member_state.errors import MemberStateError

PLAYBACK_TYPES = ("play", "progress", "completion")
STATE_TYPES = (*PLAYBACK_TYPES, "thumb", "my_list_add", "my_list_remove")
TITLELESS_STATE_TYPES = ("preference",)  # change state without naming a title
REQUIRED_COLUMNS = ("member_id", "title_id", "type", "timestamp", "value", "payload", "seq")


def with_ms_timestamps(events: pa.Table) -> pa.Table:
    """The timestamp column as plain int64 epoch milliseconds (any timestamp unit, or int64 ms)."""
    timestamp = events.column("timestamp")
    if pa.types.is_timestamp(timestamp.type):
        timestamp = pc.cast(timestamp, pa.timestamp("ms", tz=timestamp.type.tz), safe=False)  # us/ns -> ms
    timestamp = timestamp.cast(pa.int64())
    if timestamp.null_count:
        raise MemberStateError(f"events.timestamp: {timestamp.null_count} null value(s)")
    return events.set_column(events.schema.get_field_index("timestamp"), "timestamp", timestamp)


def sorted_columns(events: pa.Table) -> dict[str, list]:
    """Sort by member then time (then seq) in Arrow and hand back plain Python columns
    (timestamps already int64 ms, see with_ms_timestamps)."""
    events = events.sort_by([("member_id", "ascending"), ("timestamp", "ascending"), ("seq", "ascending")])
    value = events.column("value").cast(pa.float64())
    value = pc.if_else(pc.is_nan(value), pa.scalar(None, pa.float64()), value)
    return {
        "member_id": events.column("member_id").cast(pa.int64()).to_pylist(),
        "title_id": events.column("title_id").cast(pa.int64()).to_pylist(),
        "type": events.column("type").to_pylist(),
        "timestamp": events.column("timestamp").to_pylist(),
        "seq": events.column("seq").cast(pa.int64()).to_pylist(),
        "value": value.to_pylist(),
        "episode": _episodes(events),
        "genres": _preferred_genres(events),
    }


def _episodes(events: pa.Table) -> list[int | None]:
    """payload {"episode": n} per row (None when absent); JSON is parsed only where it can match."""
    payload = events.column("payload")
    episodes: list[int | None] = [None] * events.num_rows
    candidates = pc.and_kleene(
        pc.is_in(events.column("type"), pa.array(PLAYBACK_TYPES)),
        pc.match_substring(payload, '"episode"'),
    )
    indices = pc.indices_nonzero(pc.fill_null(candidates, False)).to_pylist()
    if not indices:
        return episodes
    for i, text in zip(indices, payload.take(indices).to_pylist()):
        try:
            episode = json.loads(text).get("episode")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(episode, int) and not isinstance(episode, bool) and episode >= 1:
            episodes[i] = episode
    return episodes


def _preferred_genres(events: pa.Table) -> list[tuple[str, ...] | None]:
    """payload {"genres": [...]} of each preference row, de-duplicated in order (None elsewhere
    and for payloads that are not that shape: bulk-loaded events never went through Event.parse)."""
    genres: list[tuple[str, ...] | None] = [None] * events.num_rows
    is_preference = pc.fill_null(pc.equal(events.column("type"), "preference"), False)
    indices = pc.indices_nonzero(is_preference).to_pylist()
    if not indices:
        return genres
    for i, text in zip(indices, events.column("payload").take(indices).to_pylist()):
        try:
            names = json.loads(text).get("genres") if text is not None else None
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(names, list) and all(isinstance(name, str) and name.strip() for name in names):
            genres[i] = tuple(dict.fromkeys(names))
    return genres

