"""The member-state snapshot format: one long Parquet table, one row per register, with the
applied seq in the schema metadata, written atomically (a crash mid-save leaves the previous
snapshot intact). Format "2" is current; format "1" (before first-event times, played counters
and preferences) still loads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from marquee.durable import write_atomic
from state.member_state.errors import MemberStateError
from state.member_state.registers import MemberRegisters, Watch

SNAPSHOT_FILE = "member_state.parquet"
SNAPSHOT_FORMAT = "2"
FORMAT_KEY = "marquee.member_state.format"
DEFAULT_RECENT_LIMIT = 50

SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("member_id", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # known | preference | watch | thumb | list | recent
        pa.field("title_id", pa.int64()),
        pa.field("series_id", pa.int64()),
        pa.field("episode", pa.int64()),
        pa.field("value", pa.float64()),  # progress, or thumb value
        pa.field("done", pa.bool_()),  # watch: finished; list: in the list
        pa.field("ts", pa.int64()),  # known: first event time
        pa.field("seq", pa.int64()),
        pa.field("genres", pa.string()),  # preference: JSON list of genre names (format 2)
        pa.field("titles_played", pa.int64()),  # known: the played counter (format 2)
    ]
)
SNAPSHOT_COLUMNS = {"1": SNAPSHOT_SCHEMA.names[:9], SNAPSHOT_FORMAT: SNAPSHOT_SCHEMA.names}


@dataclass
class SnapshotContents:
    """What a snapshot holds: every member's registers, the seq they include, the recent limit."""

    members: dict[int, MemberRegisters]
    applied_seq: int
    recent_limit: int


def to_table(members: dict[int, MemberRegisters], applied_seq: int, recent_limit: int) -> pa.Table:
    """The whole state as one long table (one row per register), with applied_seq in metadata."""
    rows: dict[str, list] = {name: [] for name in SNAPSHOT_SCHEMA.names}

    def add(member_id, kind, title=None, series=None, episode=None, value=None, done=None, ts=None,
            seq=None, genres=None, played=None):
        items = (member_id, kind, title, series, episode, value, done, ts, seq, genres, played)
        for name, item in zip(SNAPSHOT_SCHEMA.names, items):
            rows[name].append(item)

    for member_id, member in members.items():
        add(member_id, "known", ts=member.first_ms, played=member.played)
        if member.preference is not None:
            ts, seq, genres = member.preference
            add(member_id, "preference", ts=ts, seq=seq, genres=json.dumps(list(genres)))
        for w in member.watch.values():
            add(member_id, "watch", w.title_id, w.series_id, w.episode, w.progress, w.done, w.ts, w.seq)
        for title, (ts, seq, v) in member.thumbs.items():
            add(member_id, "thumb", title, value=float(v), ts=ts, seq=seq)
        for title, (ts, seq, inside) in member.my_list.items():
            add(member_id, "list", title, done=inside, ts=ts, seq=seq)
        for title, (ts, seq) in member.recent.items():
            add(member_id, "recent", title, ts=ts, seq=seq)
    metadata = {
        FORMAT_KEY: SNAPSHOT_FORMAT,
        "applied_seq": str(applied_seq),
        "recent_limit": str(recent_limit),
    }
    return pa.table(rows, schema=SNAPSHOT_SCHEMA.with_metadata(metadata))


def from_table(table: pa.Table) -> SnapshotContents:
    """Read a snapshot of the current format or of format "1" (whose missing fields load as
    unknown first-event time / played counted from the recent rows / no preference)."""
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    version = meta.get(FORMAT_KEY)
    if version not in SNAPSHOT_COLUMNS:
        raise MemberStateError(
            f"snapshot: format {version!r} is not one of {', '.join(map(repr, SNAPSHOT_COLUMNS))} "
            "(not a member-state snapshot?)"
        )
    missing = [name for name in SNAPSHOT_COLUMNS[version] if name not in table.column_names]
    if missing:
        raise MemberStateError(f"snapshot: missing column(s) {', '.join(missing)}")
    members: dict[int, MemberRegisters] = {}
    none = [None] * table.num_rows
    cols = [
        table.column(name).to_pylist() if name in table.column_names else none
        for name in SNAPSHOT_SCHEMA.names
    ]
    counted: set[int] = set()
    for member_id, kind, title, series, episode, value, done, ts, seq, genres, played in zip(*cols):
        member = members.get(member_id)
        if member is None:
            member = members[member_id] = MemberRegisters()
        if kind == "known":
            member.first_ms = ts
            if played is not None:
                member.played = played
                counted.add(member_id)
        elif kind == "preference":
            member.preference = (ts, seq, tuple(_snapshot_genres(genres)))
        elif kind == "watch":
            w = Watch(title, series, episode, value, ts, seq, bool(done))
            member.watch[w.key] = w
        elif kind == "thumb":
            member.thumbs[title] = (ts, seq, int(value))
        elif kind == "list":
            member.my_list[title] = (ts, seq, bool(done))
        elif kind == "recent":
            member.recent[title] = (ts, seq)
        else:
            raise MemberStateError(f"snapshot: unknown row kind {kind!r}")
    for member_id, member in members.items():
        if member_id not in counted:  # format "1": the best we know is what is still recent
            member.played = len(member.recent)
    recent_limit = int(meta.get("recent_limit", DEFAULT_RECENT_LIMIT))
    return SnapshotContents(members, int(meta["applied_seq"]), recent_limit)


def _snapshot_genres(text: str | None) -> list[str]:
    try:
        genres = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        genres = None
    if not isinstance(genres, list) or not all(isinstance(g, str) for g in genres):
        raise MemberStateError(f"snapshot: a preference row holds {text!r}, not a JSON list of genres")
    return genres


def write_snapshot(table: pa.Table, path: str | Path) -> None:
    """tmp file in the same directory + fsync + rename + fsync of the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: pq.write_table(table, fh))


def read_snapshot(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no member-state snapshot at {path}")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise MemberStateError(f"snapshot {path}: unreadable ({exc})") from None
