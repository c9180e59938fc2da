"""MemberState: what the homepage needs instantly about a member, derived from events.

Continue watching, my list, thumbs, recently watched and onboarding preferences are each a
last-writer-wins register stamped with (timestamp, seq), so applying a batch twice, or receiving
events out of timestamp order, converges to the same state. `apply` is idempotent by `seq`: the
state remembers the highest sequence number it has applied and skips anything at or below it.

The state depends only on the event log's reader contract, `read(since_seq, limit) -> pa.Table`
(rows with seq > since_seq, ascending), never on the log's internals. Plain and single-threaded;
state/member_state/consumer.py keeps one current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from marquee.schema import SERVER_EVENT_TYPES
from state.member_state import snapshot
from state.member_state.decode import (
    PLAYBACK_TYPES,
    REQUIRED_COLUMNS,
    STATE_TYPES,
    TITLELESS_STATE_TYPES,
    sorted_columns,
    with_ms_timestamps,
)
from state.member_state.errors import MemberStateError
from state.member_state.registers import MemberRegisters, TitleInfo, Watch, title_info, watch_key
from state.member_state.views import ContinueWatching, MemberSnapshot

COMPLETE_AT = 0.95  # progress at or above this counts as finished (credits are rarely watched)


class EventSource(Protocol):
    """The event log's reader contract; the only thing member state relies on."""

    def read(self, since_seq: int, limit: int) -> pa.Table: ...


class MemberState:
    """Continue watching, my list, thumbs, recently watched and preferences for every member.

    `titles` (TITLE_SCHEMA or any table with title_id, series_id, episodes) lets seasons of a show
    share one continue-watching entry and tells when an episode was the season's last.
    """

    def __init__(self, *, recent_limit: int = 50, titles: pa.Table | None = None):
        if not isinstance(recent_limit, int) or recent_limit < 1:
            raise MemberStateError(f"recent_limit: expected a positive integer, got {recent_limit!r}")
        self.recent_limit = recent_limit
        self._titles = title_info(titles) if titles is not None else {}
        self._members: dict[int, MemberRegisters] = {}
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
        known and may move its first-event time; the server's own records, SERVER_EVENT_TYPES such
        as decisions, only advance applied_seq: a page served is nothing the member did). Within
        the batch rows are applied per member in (timestamp, seq) order.
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
        consumed, last_seq = events.num_rows, pc.max(events.column("seq")).as_py()
        events = events.filter(pc.invert(pc.fill_null(pc.is_in(events.column("type"),
                                                                pa.array(SERVER_EVENT_TYPES)), False)))
        if events.num_rows == 0:
            self._applied_seq = max(self._applied_seq, last_seq)
            return consumed
        members = events.column("member_id")
        if members.null_count:
            raise MemberStateError(f"events.member_id: {members.null_count} null value(s)")
        events = with_ms_timestamps(events)
        self._note_first_events(events)

        types = events.column("type")
        relevant = events.filter(
            pc.or_kleene(
                pc.and_kleene(pc.is_in(types, pa.array(STATE_TYPES)), pc.is_valid(events.column("title_id"))),
                pc.is_in(types, pa.array(TITLELESS_STATE_TYPES)),
            )
        )
        if relevant.num_rows:
            self._apply_sorted(sorted_columns(relevant))
        self._applied_seq = max(self._applied_seq, last_seq)
        return consumed

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
                member = self._members[member_id] = MemberRegisters()
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
        self, member: MemberRegisters, etype: str, title: int, ts: int, seq: int,
        value: float | None, episode: int | None,
    ) -> None:
        info = self._titles.get(title)
        series_id = info.series_id if info else None
        key = watch_key(title, series_id)
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
        member.watch[key] = Watch(title, series_id, episode, progress, ts, seq, done=False)

    @staticmethod
    def _after_completion(
        title: int, series_id: int | None, episode: int | None, info: TitleInfo | None, ts: int, seq: int
    ) -> Watch:
        """A finished movie (or season finale) leaves continue watching; a finished episode
        stays there at the next episode. Without an episode count, the next episode is assumed."""
        last_episode = episode is None or (info is not None and info.episodes is not None and episode >= info.episodes)
        if last_episode:
            return Watch(title, series_id, episode, 1.0, ts, seq, done=True)
        return Watch(title, series_id, episode + 1, 0.0, ts, seq, done=False)

    def _trim_recent(self, member: MemberRegisters) -> None:
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

    # -- snapshots (the format: state/member_state/snapshot.py) -----------------------------------

    def to_table(self) -> pa.Table:
        """The whole state as one long table (one row per register), with applied_seq in metadata."""
        return snapshot.to_table(self._members, self._applied_seq, self.recent_limit)

    @classmethod
    def from_table(cls, table: pa.Table, **kw) -> "MemberState":
        """Load a snapshot of the current format or of format "1"; `kw` are constructor
        arguments (recent_limit defaults to the snapshot's)."""
        contents = snapshot.from_table(table)
        kw.setdefault("recent_limit", contents.recent_limit)
        state = cls(**kw)
        state._members = contents.members
        state._applied_seq = contents.applied_seq
        return state

    def save(self, path: str | Path) -> None:
        """Write an atomic snapshot: a crash mid-save leaves the previous snapshot intact."""
        snapshot.write_snapshot(self.to_table(), path)

    @classmethod
    def load(cls, path: str | Path, **kw) -> "MemberState":
        return cls.from_table(snapshot.read_snapshot(path), **kw)
