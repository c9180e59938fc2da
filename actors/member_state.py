"""Member state: what the homepage needs instantly about a member, kept current from the event log.

Continue watching, my list, thumbs, recently watched and onboarding preferences are derived from
events. Each piece is a last-writer-wins register stamped with (timestamp, seq), so applying a batch
twice, or receiving events out of timestamp order, converges to the same state. `apply` is
idempotent by `seq`: the state remembers the highest sequence number it has applied and skips
anything at or below it.

The state depends only on the event log's reader contract, `read(since_seq, limit) -> pa.Table`
(rows with seq > since_seq, ascending), never on the log's internals.

Layers:
- `MemberState`: plain, single-threaded, no Ray (unit-testable).
- `MemberStateService`: MemberState + a polling thread + periodic atomic snapshots (still no Ray).
- `MemberStateActor`: the service as a Ray actor (created lazily so importing this module never
  imports Ray); `start_member_state(...)` starts the named, restartable actor.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from actors.named import lazy_remote
from marquee.durable import write_atomic

log = logging.getLogger(__name__)

ACTOR_NAME = "marquee-member-state"
NAMESPACE = "marquee"
SNAPSHOT_FILE = "member_state.parquet"
SNAPSHOT_FORMAT = "2"  # "1" (no first-event time, played counter, preferences) still loads

PLAYBACK_TYPES = ("play", "progress", "completion")
STATE_TYPES = (*PLAYBACK_TYPES, "thumb", "my_list_add", "my_list_remove")
TITLELESS_STATE_TYPES = ("preference",)  # change state without naming a title
COMPLETE_AT = 0.95  # progress at or above this counts as finished (credits are rarely watched)
REQUIRED_COLUMNS = ("member_id", "title_id", "type", "timestamp", "value", "payload", "seq")


class MemberStateError(ValueError):
    """Input the member state cannot use (wrong columns, a bad snapshot, a broken source)."""


class EventSource(Protocol):
    """The event log's reader contract; the only thing member state relies on."""

    def read(self, since_seq: int, limit: int) -> pa.Table: ...


# ---------------------------------------------------------------------------------------------
# What callers see
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContinueWatching:
    """One row of the continue-watching list: a movie, or a series at the episode to resume."""

    title_id: int
    progress: float
    updated_ms: int
    series_id: int | None
    episode: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemberSnapshot:
    """Everything the homepage needs about one member, already ordered most recent first.

    `titles_played` (distinct titles ever played) is exact until the member has played more than
    2 x recent_limit titles; after that a title played again after being trimmed out of the
    recent window counts again, so it is an upper bound (good enough to tell cold from warm)."""

    member_id: int
    continue_watching: list[ContinueWatching]
    my_list: list[int]
    thumbs: dict[int, int]
    recently_watched: list[int]
    known: bool  # False: no event for this member has been applied yet
    recent_ms: list[int] = field(default_factory=list)  # when each recently_watched title was last played
    first_event_ms: int | None = None  # earliest event of any type (None: unknown member)
    titles_played: int = 0
    preferred_genres: list[str] = field(default_factory=list)  # newest preference event wins

    @classmethod
    def empty(cls, member_id: int) -> "MemberSnapshot":
        return cls(member_id, [], [], {}, [], known=False)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Internal registers
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Watch:
    """Latest playback state of a movie or of a whole series (one entry per series)."""

    title_id: int
    series_id: int | None
    episode: int | None
    progress: float
    ts: int
    seq: int
    done: bool  # finished: kept (as a tombstone) so a late, older event cannot resurrect it

    @property
    def key(self) -> tuple[str, int]:
        return _watch_key(self.title_id, self.series_id)


def _watch_key(title_id: int, series_id: int | None) -> tuple[str, int]:
    return ("s", series_id) if series_id is not None else ("t", title_id)


@dataclass(slots=True)
class _Member:
    watch: dict[tuple[str, int], _Watch] = field(default_factory=dict)
    thumbs: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # title -> (ts, seq, -1/0/+1)
    my_list: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # title -> (ts, seq, in list)
    recent: dict[int, tuple[int, int]] = field(default_factory=dict)  # title -> (ts, seq) of last play
    first_ms: int | None = None  # earliest event timestamp of any type
    played: int = 0  # titles that entered `recent` (distinct while nothing was trimmed)
    preference: tuple[int, int, tuple[str, ...]] | None = None  # (ts, seq, genres)


@dataclass(frozen=True, slots=True)
class _TitleInfo:
    series_id: int | None
    episodes: int | None


# ---------------------------------------------------------------------------------------------
# The plain state
# ---------------------------------------------------------------------------------------------


class MemberState:
    """Continue watching, my list, thumbs, recently watched and preferences for every member.

    `titles` (TITLE_SCHEMA or any table with title_id, series_id, episodes) lets seasons of a show
    share one continue-watching entry and tells when an episode was the season's last.
    """

    def __init__(self, *, recent_limit: int = 50, titles: pa.Table | None = None):
        if not isinstance(recent_limit, int) or recent_limit < 1:
            raise MemberStateError(f"recent_limit: expected a positive integer, got {recent_limit!r}")
        self.recent_limit = recent_limit
        self._titles = _title_info(titles) if titles is not None else {}
        self._members: dict[int, _Member] = {}
        self._applied_seq = -1

    # -- reading --------------------------------------------------------------------------------

    @property
    def applied_seq(self) -> int:
        """Highest `seq` applied so far (-1 before any event)."""
        return self._applied_seq

    @property
    def member_count(self) -> int:
        return len(self._members)

    def get(self, member_id: int) -> MemberSnapshot:
        """The member's state; an unknown member gets an empty snapshot with known=False."""
        member = self._members.get(member_id)
        if member is None:
            return MemberSnapshot.empty(member_id)
        watching = sorted(
            (w for w in member.watch.values() if not w.done), key=lambda w: (w.ts, w.seq), reverse=True
        )
        listed = sorted(
            ((ts, seq, title) for title, (ts, seq, inside) in member.my_list.items() if inside), reverse=True
        )
        recent = sorted(((ts, seq, title) for title, (ts, seq) in member.recent.items()), reverse=True)
        recent = recent[: self.recent_limit]
        return MemberSnapshot(
            member_id=member_id,
            continue_watching=[
                ContinueWatching(w.title_id, w.progress, w.ts, w.series_id, w.episode) for w in watching
            ],
            my_list=[title for _, _, title in listed],
            thumbs={title: v for title, (_, _, v) in sorted(member.thumbs.items()) if v != 0},
            recently_watched=[title for _, _, title in recent],
            known=True,
            recent_ms=[ts for ts, _, _ in recent],
            first_event_ms=member.first_ms,
            titles_played=member.played,
            preferred_genres=list(member.preference[2]) if member.preference else [],
        )

    def get_many(self, member_ids: list[int]) -> list[MemberSnapshot]:
        return [self.get(member_id) for member_id in member_ids]

    # -- writing --------------------------------------------------------------------------------

    def apply(self, events: pa.Table) -> int:
        """Apply event rows (STORED_EVENT_SCHEMA or any table with REQUIRED_COLUMNS).

        Rows with seq <= applied_seq are skipped, so re-applying is harmless. Returns the number
        of new rows consumed (every type counts; impressions and searches only mark the member
        known and may move its first-event time). Within the batch rows are applied per member in
        (timestamp, seq) order.
        """
        missing = [name for name in REQUIRED_COLUMNS if name not in events.column_names]
        if missing:
            raise MemberStateError(f"events: missing column(s) {', '.join(missing)}")
        if events.num_rows == 0:
            return 0
        seq = events.column("seq").cast(pa.int64())
        if seq.null_count:
            raise MemberStateError(f"events.seq: {seq.null_count} null value(s); every row needs a seq")
        events = events.select(list(REQUIRED_COLUMNS)).filter(pc.greater(seq, self._applied_seq))
        if events.num_rows == 0:
            return 0
        members = events.column("member_id")
        if members.null_count:
            raise MemberStateError(f"events.member_id: {members.null_count} null value(s)")
        events = _with_ms_timestamps(events)
        self._note_first_events(events)

        types = events.column("type")
        relevant = events.filter(
            pc.or_kleene(
                pc.and_kleene(pc.is_in(types, pa.array(STATE_TYPES)), pc.is_valid(events.column("title_id"))),
                pc.is_in(types, pa.array(TITLELESS_STATE_TYPES)),
            )
        )
        if relevant.num_rows:
            self._apply_sorted(_sorted_columns(relevant))
        self._applied_seq = max(self._applied_seq, pc.max(events.column("seq")).as_py())
        return events.num_rows

    def _note_first_events(self, events: pa.Table) -> None:
        """Create unseen members and keep each member's earliest event time (any type, any order)."""
        earliest = (
            pa.table({"member_id": events.column("member_id").cast(pa.int64()), "ts": events.column("timestamp")})
            .group_by("member_id")
            .aggregate([("ts", "min")])
        )
        for member_id, ts in zip(earliest.column("member_id").to_pylist(), earliest.column("ts_min").to_pylist()):
            member = self._members.get(member_id)
            if member is None:
                member = self._members[member_id] = _Member()
            if member.first_ms is None or ts < member.first_ms:
                member.first_ms = ts

    def _apply_sorted(self, cols: dict[str, list]) -> None:
        touched: set[int] = set()
        current_id, member = None, None
        playback = set(PLAYBACK_TYPES)
        for member_id, title, etype, ts, seq, value, episode, genres in zip(
            cols["member_id"], cols["title_id"], cols["type"], cols["timestamp"],
            cols["seq"], cols["value"], cols["episode"], cols["genres"],
        ):
            if member_id != current_id:
                current_id, member = member_id, self._members[member_id]
            if etype in playback:
                self._apply_playback(member, etype, title, ts, seq, value, episode)
                old = member.recent.get(title)
                if old is None:
                    member.played += 1
                if old is None or (ts, seq) > old:
                    member.recent[title] = (ts, seq)
                    touched.add(member_id)
            elif etype == "preference":
                if genres is None:
                    continue  # malformed payload (bulk-loaded, never validated): nothing to learn
                if member.preference is None or (ts, seq) > member.preference[:2]:
                    member.preference = (ts, seq, genres)
            elif etype == "thumb":
                if value is None:
                    continue
                old = member.thumbs.get(title)
                if old is None or (ts, seq) > old[:2]:
                    member.thumbs[title] = (ts, seq, (value > 0) - (value < 0))
            else:  # my_list_add / my_list_remove
                old = member.my_list.get(title)
                if old is None or (ts, seq) > old[:2]:
                    member.my_list[title] = (ts, seq, etype == "my_list_add")
        for member_id in touched:
            self._trim_recent(self._members[member_id])

    def _apply_playback(
        self, member: _Member, etype: str, title: int, ts: int, seq: int,
        value: float | None, episode: int | None,
    ) -> None:
        info = self._titles.get(title)
        series_id = info.series_id if info else None
        key = _watch_key(title, series_id)
        old = member.watch.get(key)
        if old is not None and (ts, seq) <= (old.ts, old.seq):
            return  # an older event than what we already know: latest timestamp wins
        resumable = old is not None and not old.done and old.title_id == title
        if episode is None and resumable:
            episode = old.episode  # a play without an episode resumes the episode in progress
        finished = etype == "completion" or (etype == "progress" and value is not None and value >= COMPLETE_AT)
        if finished:
            member.watch[key] = self._after_completion(title, series_id, episode, info, ts, seq)
            return
        if etype == "progress" and value is not None:
            progress = min(max(value, 0.0), 1.0)
        elif resumable and old.episode == episode:
            progress = old.progress  # play without a value keeps where the member was
        else:
            progress = 0.0
        member.watch[key] = _Watch(title, series_id, episode, progress, ts, seq, done=False)

    @staticmethod
    def _after_completion(
        title: int, series_id: int | None, episode: int | None, info: _TitleInfo | None, ts: int, seq: int
    ) -> _Watch:
        """A finished movie (or season finale) leaves continue watching; a finished episode
        stays there at the next episode. Without an episode count, the next episode is assumed."""
        last_episode = episode is None or (info is not None and info.episodes is not None and episode >= info.episodes)
        if last_episode:
            return _Watch(title, series_id, episode, 1.0, ts, seq, done=True)
        return _Watch(title, series_id, episode + 1, 0.0, ts, seq, done=False)

    def _trim_recent(self, member: _Member) -> None:
        """Keep memory bounded. Safe: a title outside the newest N can never re-enter them,
        because a title's stamp only grows and so does the N-th newest stamp. The played counter
        is not touched, which is why it may overcount a title played again after eviction."""
        if len(member.recent) > 2 * self.recent_limit:
            newest = sorted(member.recent.items(), key=lambda item: item[1], reverse=True)
            member.recent = dict(newest[: self.recent_limit])

    def catch_up(self, source: EventSource | Callable[[int, int], pa.Table], batch: int = 50_000) -> int:
        """Pull `source.read(applied_seq, batch)` (or `source(applied_seq, batch)`) until it returns
        no rows; returns the rows applied."""
        read = source if callable(source) and not hasattr(source, "read") else source.read
        total = 0
        while True:
            rows = read(self._applied_seq, batch)
            if rows.num_rows == 0:
                return total
            applied = self.apply(rows)
            if applied == 0:
                raise MemberStateError(
                    f"event source returned {rows.num_rows} row(s) none of which has seq > "
                    f"{self._applied_seq}; it breaks the read(since_seq, limit) contract"
                )
            total += applied

    # -- snapshots ------------------------------------------------------------------------------

    def to_table(self) -> pa.Table:
        """The whole state as one long table (one row per register), with applied_seq in metadata."""
        rows: dict[str, list] = {name: [] for name in _SNAPSHOT_SCHEMA.names}

        def add(member_id, kind, title=None, series=None, episode=None, value=None, done=None, ts=None,
                seq=None, genres=None, played=None):
            items = (member_id, kind, title, series, episode, value, done, ts, seq, genres, played)
            for name, item in zip(_SNAPSHOT_SCHEMA.names, items):
                rows[name].append(item)

        for member_id, member in self._members.items():
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
            "marquee.member_state.format": SNAPSHOT_FORMAT,
            "applied_seq": str(self._applied_seq),
            "recent_limit": str(self.recent_limit),
        }
        return pa.table(rows, schema=_SNAPSHOT_SCHEMA.with_metadata(metadata))

    @classmethod
    def from_table(cls, table: pa.Table, **kw) -> "MemberState":
        """Load a snapshot of the current format or of format "1" (written before first-event
        times, played counters and preferences existed: those load as unknown / counted from the
        recent rows / none)."""
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        version = meta.get("marquee.member_state.format")
        if version not in _SNAPSHOT_COLUMNS:
            raise MemberStateError(
                f"snapshot: format {version!r} is not one of {', '.join(map(repr, _SNAPSHOT_COLUMNS))} "
                "(not a member-state snapshot?)"
            )
        missing = [name for name in _SNAPSHOT_COLUMNS[version] if name not in table.column_names]
        if missing:
            raise MemberStateError(f"snapshot: missing column(s) {', '.join(missing)}")
        kw.setdefault("recent_limit", int(meta.get("recent_limit", 50)))
        state = cls(**kw)
        members = state._members
        none = [None] * table.num_rows
        cols = [
            table.column(name).to_pylist() if name in table.column_names else none
            for name in _SNAPSHOT_SCHEMA.names
        ]
        counted: set[int] = set()
        for member_id, kind, title, series, episode, value, done, ts, seq, genres, played in zip(*cols):
            member = members.get(member_id)
            if member is None:
                member = members[member_id] = _Member()
            if kind == "known":
                member.first_ms = ts
                if played is not None:
                    member.played = played
                    counted.add(member_id)
            elif kind == "preference":
                member.preference = (ts, seq, tuple(_snapshot_genres(genres)))
            elif kind == "watch":
                w = _Watch(title, series, episode, value, ts, seq, bool(done))
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
        state._applied_seq = int(meta["applied_seq"])
        return state

    def save(self, path: str | Path) -> None:
        """Write an atomic snapshot: a crash mid-save leaves the previous snapshot intact."""
        write_snapshot(self.to_table(), path)

    @classmethod
    def load(cls, path: str | Path, **kw) -> "MemberState":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no member-state snapshot at {path}")
        try:
            table = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise MemberStateError(f"snapshot {path}: unreadable ({exc})") from None
        return cls.from_table(table, **kw)


_SNAPSHOT_SCHEMA = pa.schema(
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
_SNAPSHOT_COLUMNS = {"1": _SNAPSHOT_SCHEMA.names[:9], SNAPSHOT_FORMAT: _SNAPSHOT_SCHEMA.names}


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


def _title_info(titles: pa.Table) -> dict[int, _TitleInfo]:
    missing = [name for name in ("title_id", "series_id", "episodes") if name not in titles.column_names]
    if missing:
        raise MemberStateError(f"titles: missing column(s) {', '.join(missing)}")
    return {
        title: _TitleInfo(series, episodes)
        for title, series, episodes in zip(
            titles.column("title_id").to_pylist(),
            titles.column("series_id").to_pylist(),
            titles.column("episodes").to_pylist(),
        )
        if title is not None
    }


def _with_ms_timestamps(events: pa.Table) -> pa.Table:
    """The timestamp column as plain int64 epoch milliseconds (any timestamp unit, or int64 ms)."""
    timestamp = events.column("timestamp")
    if pa.types.is_timestamp(timestamp.type):
        timestamp = pc.cast(timestamp, pa.timestamp("ms", tz=timestamp.type.tz), safe=False)  # us/ns -> ms
    timestamp = timestamp.cast(pa.int64())
    if timestamp.null_count:
        raise MemberStateError(f"events.timestamp: {timestamp.null_count} null value(s)")
    return events.set_column(events.schema.get_field_index("timestamp"), "timestamp", timestamp)


def _sorted_columns(events: pa.Table) -> dict[str, list]:
    """Sort by member then time (then seq) in Arrow and hand back plain Python columns
    (timestamps already int64 ms, see _with_ms_timestamps)."""
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


# ---------------------------------------------------------------------------------------------
# The service: state + polling + periodic snapshots (no Ray; the actor wraps it)
# ---------------------------------------------------------------------------------------------


def read_titles(path: str | Path) -> pa.Table:
    """titles.parquet, or a dataset directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "titles.parquet"
    if not path.is_file():
        raise MemberStateError(f"titles: no titles.parquet at {path}")
    return pq.read_table(path, columns=["title_id", "series_id", "episodes"])


class MemberStateService:
    """MemberState kept current: loads the latest snapshot, catches up from `source`, then a
    background thread polls every `poll_interval_s` and snapshots every `snapshot_every` applied
    events or `snapshot_interval_s` seconds (whichever first). Thread-safe."""

    def __init__(
        self,
        snapshot_dir: str | Path,
        source: EventSource | None = None,
        titles: pa.Table | None = None,
        *,
        poll_interval_s: float = 0.2,
        snapshot_every: int = 100_000,
        snapshot_interval_s: float = 30.0,
        batch: int = 50_000,
        recent_limit: int = 50,
        start_polling: bool = True,
    ):
        if poll_interval_s <= 0 or snapshot_every < 1 or snapshot_interval_s <= 0 or batch < 1:
            raise MemberStateError(
                "poll_interval_s, snapshot_interval_s must be > 0 and snapshot_every, batch >= 1; got "
                f"{poll_interval_s}, {snapshot_interval_s}, {snapshot_every}, {batch}"
            )
        self.snapshot_path = Path(snapshot_dir) / SNAPSHOT_FILE
        self._source = source
        self._poll_interval_s = poll_interval_s
        self._snapshot_every = snapshot_every
        self._snapshot_interval_s = snapshot_interval_s
        self._batch = batch
        self._lock = threading.Lock()  # guards the state
        self._pull_lock = threading.Lock()  # one puller at a time (poller or sync)
        self._snapshot_lock = threading.Lock()  # one writer at a time
        self._stop = threading.Event()
        self.last_error: str | None = None

        if self.snapshot_path.is_file():
            self._state = MemberState.load(self.snapshot_path, titles=titles, recent_limit=recent_limit)
            log.info("member state: loaded snapshot at seq %d", self._state.applied_seq)
        else:
            self._state = MemberState(titles=titles, recent_limit=recent_limit)
        self.loaded_seq = self._state.applied_seq
        self._snapshot_seq = self._state.applied_seq
        self._snapshot_time = time.monotonic()
        if source is not None:
            try:
                self.sync()
            except Exception as exc:  # keep serving what we have; the poller retries
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("member state: initial catch-up failed: %s", self.last_error)
        self._poller: threading.Thread | None = None
        if source is not None and start_polling:
            self._poller = threading.Thread(target=self._poll, name="member-state-poll", daemon=True)
            self._poller.start()

    def get(self, member_id: int) -> MemberSnapshot:
        with self._lock:
            return self._state.get(member_id)

    def get_many(self, member_ids: list[int]) -> list[MemberSnapshot]:
        with self._lock:
            return self._state.get_many(member_ids)

    def applied_seq(self) -> int:
        return self._state.applied_seq

    def apply(self, events: pa.Table) -> int:
        """Apply rows directly (tests, or a bootstrap from a Parquet event dataset)."""
        with self._lock:
            applied = self._state.apply(events)
        self._maybe_snapshot()
        return applied

    def sync(self) -> int:
        """Catch up with the source now; returns applied_seq."""
        if self._source is not None:
            with self._pull_lock:
                while True:
                    since = self._state.applied_seq
                    rows = self._source.read(since, self._batch)
                    if rows.num_rows == 0:
                        break
                    with self._lock:
                        applied = self._state.apply(rows)
                    if applied == 0:
                        raise MemberStateError(
                            f"event source returned {rows.num_rows} row(s) with seq <= {since}; "
                            "it breaks the read(since_seq, limit) contract"
                        )
            self._maybe_snapshot()
        return self._state.applied_seq

    def snapshot(self) -> int:
        """Write a snapshot now; returns the applied_seq it holds."""
        with self._snapshot_lock:
            with self._lock:
                table = self._state.to_table()
                seq = self._state.applied_seq
            write_snapshot(table, self.snapshot_path)
            self._snapshot_seq, self._snapshot_time = seq, time.monotonic()
        return seq

    def info(self) -> dict[str, Any]:
        return {
            "applied_seq": self._state.applied_seq,
            "loaded_seq": self.loaded_seq,
            "snapshot_seq": self._snapshot_seq,
            "members": self._state.member_count,
            "snapshot_path": str(self.snapshot_path),
            "last_error": self.last_error,
            "pid": os.getpid(),  # chaos tests tell a restarted process from the old one
        }

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _maybe_snapshot(self) -> None:
        behind = self._state.applied_seq - self._snapshot_seq
        if behind <= 0:
            return
        # seq counts rows in the log, so the seq distance is the number of events since the snapshot
        due = behind >= self._snapshot_every or time.monotonic() - self._snapshot_time >= self._snapshot_interval_s
        if due:
            self.snapshot()

    def _poll(self) -> None:
        delay = self._poll_interval_s
        while not self._stop.wait(delay):
            try:
                self.sync()
                self.last_error, delay = None, self._poll_interval_s
            except Exception as exc:  # the log may be restarting; back off, keep serving
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("member state: poll failed: %s", self.last_error)
                delay = min(delay * 2, 10.0)


# ---------------------------------------------------------------------------------------------
# Ray wrapper
# ---------------------------------------------------------------------------------------------


class RemoteLogSource:
    """Adapts an event-log actor handle (`handle.read.remote(since, limit)`) to `EventSource`."""

    def __init__(self, handle: Any, timeout_s: float = 60.0):
        self.handle = handle
        self.timeout_s = timeout_s

    def read(self, since_seq: int, limit: int) -> pa.Table:
        import ray

        return ray.get(self.handle.read.remote(since_seq, limit), timeout=self.timeout_s)


class _MemberStateActorImpl(MemberStateService):
    """The body of MemberStateActor: the service, reading from an event-log actor."""

    def __init__(
        self,
        snapshot_dir: str | Path,
        log_handle: Any = None,
        titles_path: str | Path | None = None,
        poll_interval_s: float = 0.2,
        snapshot_every: int = 100_000,
        snapshot_interval_s: float = 30.0,
        batch: int = 50_000,
        recent_limit: int = 50,
    ):
        super().__init__(
            snapshot_dir,
            RemoteLogSource(log_handle) if log_handle is not None else None,
            read_titles(titles_path) if titles_path is not None else None,
            poll_interval_s=poll_interval_s,
            snapshot_every=snapshot_every,
            snapshot_interval_s=snapshot_interval_s,
            batch=batch,
            recent_limit=recent_limit,
        )

    def ping(self) -> bool:
        return True


def _build_remote_class():
    import ray

    return ray.remote(_MemberStateActorImpl)


_remote_class = lazy_remote(_build_remote_class)


def __getattr__(name: str):
    """`MemberStateActor` is built on first use so importing this module never imports Ray."""
    if name == "MemberStateActor":
        return _remote_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def start_member_state(
    snapshot_dir: str | Path | None = None,
    log_handle: Any = None,
    titles_path: str | Path | None = None,
    *,
    poll_interval_s: float = 0.2,
    snapshot_every: int = 100_000,
    snapshot_interval_s: float = 30.0,
    name: str = ACTOR_NAME,
    namespace: str = NAMESPACE,
    num_cpus: float = 0.05,
    lifetime: str | None = None,
    recent_limit: int = 50,
) -> Any:
    """Start (or connect to, if it already runs) the named member-state actor. It restarts
    forever on failure and rebuilds itself from its snapshot plus the log."""
    if snapshot_dir is None:
        from marquee.home import Paths

        snapshot_dir = Paths().member_state
    actor_class = __getattr__("MemberStateActor")
    return actor_class.options(
        name=name,
        namespace=namespace,
        get_if_exists=True,
        lifetime=lifetime,
        max_restarts=-1,
        max_task_retries=3,
        num_cpus=num_cpus,
    ).remote(
        str(snapshot_dir),
        log_handle,
        str(titles_path) if titles_path is not None else None,
        poll_interval_s,
        snapshot_every,
        snapshot_interval_s,
        recent_limit=recent_limit,
    )
