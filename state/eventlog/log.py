"""EventLog: the durable, idempotent, append-only event log as a plain class (the Ray actor in
actors/events.py wraps it). It composes the WAL format (wal.py), compaction (compaction.py) and
the seen-id index (seen_ids.py) and owns the in-memory tail, the root lock and recovery."""

from __future__ import annotations

import bisect
import errno
import fcntl
import logging
import operator
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from marquee.dataset import conform_events
from marquee.durable import fsync_path
from marquee.schema import EVENT_SCHEMA, STORED_EVENT_SCHEMA, Event, EventError, validate_event_table
from state.eventlog.compaction import CompactedSegment, compact_segment, index_compacted, roll_forward
from state.eventlog.errors import LogCorruption, LogLocked
from state.eventlog.layout import LogLayout
from state.eventlog.seen_ids import SeenIds
from state.eventlog.wal import WalSegment, append_record, create_segment_file, read_segment, truncate

log = logging.getLogger(__name__)

# Event attribute per EVENT_SCHEMA column, fetched for a whole batch in one C call
# (10x faster than marquee.schema.events_to_table's per-field getattr loop).
_EVENT_ATTRS = operator.attrgetter(*("timestamp_ms" if n == "timestamp" else n for n in EVENT_SCHEMA.names))


@dataclass
class Rejection:
    """One malformed event: its position in the batch, its id if it had one, and why."""

    index: int
    event_id: str | None
    reason: str


@dataclass
class AppendResult:
    """Outcome of one append. ``last_seq`` is the log's last sequence number after the append."""

    accepted: int
    duplicates: int
    rejected: list[Rejection] = field(default_factory=list)
    last_seq: int = -1


def _events_to_batch(events: list[Event], first_seq: int) -> pa.RecordBatch:
    """Validated events as one STORED_EVENT_SCHEMA record batch with seqs first_seq, +1, ..."""
    columns = zip(*map(_EVENT_ATTRS, events))
    arrays = [pa.array(column, type=f.type) for column, f in zip(columns, EVENT_SCHEMA)]
    arrays.append(pa.array(np.arange(first_seq, first_seq + len(events), dtype=np.int64)))
    return pa.RecordBatch.from_arrays(arrays, schema=STORED_EVENT_SCHEMA)


def _project(table: pa.Table, types: Sequence[str] | None, columns: Sequence[str] | None) -> pa.Table:
    """`table`'s rows of `types` (and its last row, whatever its type) with `columns` + seq, type."""
    if columns is not None:
        unknown = [c for c in columns if c not in STORED_EVENT_SCHEMA.names]
        if unknown:
            raise ValueError(f"columns: unknown column(s) {unknown}; the log has {STORED_EVENT_SCHEMA.names}")
        keep = [c for c in STORED_EVENT_SCHEMA.names if c in {*columns, "seq", "type"}]
        table = table.select(keep)
    if types is not None and table.num_rows:
        wanted = pc.is_in(table.column("type"), pa.array(list(types), pa.string()))
        last = np.zeros(table.num_rows, dtype=bool)
        last[-1] = True
        table = table.filter(pc.or_(pc.fill_null(wanted, False), pa.array(last)))
    return table


def _raw_event_id(raw: Any) -> str | None:
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return event_id if isinstance(event_id, str) else None


class EventLog:
    """Durable, idempotent, append-only event log. The contract:

    * an append is acknowledged only after its events are durable (write + fdatasync of the WAL);
    * idempotent by ``event_id``: replaying a batch (a producer retrying after a lost ack) changes
      nothing and counts the replays as ``duplicates``;
    * malformed events are rejected one by one with the reason from ``Event.parse``, while the
      good events of the same batch are kept;
    * every accepted event gets a dense sequence number (0, 1, 2, ...) and is never lost.

    Not thread-safe: one caller at a time (the actor runs its methods one by one). One EventLog per
    root at a time, enforced with an flock on root/LOCK (released by the OS when a process dies).
    """

    def __init__(
        self,
        root: Path | str,
        *,
        fsync: bool = True,
        segment_max_events: int = 200_000,
        auto_compact: bool = False,
        lock_timeout_s: float = 30.0,
    ) -> None:
        if segment_max_events < 1:
            raise ValueError(f"segment_max_events must be >= 1, got {segment_max_events}")
        self.root = Path(root)
        self.fsync = fsync
        self.segment_max_events = segment_max_events
        self.auto_compact = auto_compact
        # Test seam: called with a step name at each point of compaction; raising simulates a crash.
        self.compaction_hook: Callable[[str], None] | None = None
        self._layout = LogLayout(self.root)
        self._layout.make_dirs()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._acquire_lock(lock_timeout_s)
        self._counters = {"appends": 0, "accepted": 0, "duplicates": 0, "rejected": 0, "compacted": 0}
        self._recovery: dict[str, Any] = {}
        try:
            self._recover()
        except BaseException:
            self.close()
            raise

    # -- public API ----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest event; -1 when the log is empty."""
        return self._last_seq

    def append(self, events: list[dict]) -> AppendResult:
        """Validate, dedupe and durably append a batch; returns only after the WAL write is
        fsynced. Malformed events are rejected with a reason; the rest of the batch is kept."""
        if self._fd is None:
            raise RuntimeError("EventLog is closed")
        if not isinstance(events, (list, tuple)):
            raise TypeError(f"append expects a list of event objects, got {type(events).__name__}")
        rejected: list[Rejection] = []
        accepted: list[Event] = []
        batch_ids: set[str] = set()
        duplicates = 0
        seen = self._seen.in_wal
        parse = Event.parse
        for index, raw in enumerate(events):
            try:
                event = parse(raw)
            except EventError as exc:
                rejected.append(Rejection(index, _raw_event_id(raw), str(exc)))
                continue
            event_id = event.event_id
            if event_id in batch_ids or event_id in seen:
                duplicates += 1
                continue
            batch_ids.add(event_id)
            accepted.append(event)
        if accepted and self._seen.has_compacted():
            known = self._seen.compacted_duplicates([e.event_id for e in accepted], self._compacted)
            if known:
                duplicates += len(known)
                accepted = [e for e in accepted if e.event_id not in known]
        if accepted:
            self._write_batch(_events_to_batch(accepted, self._last_seq + 1))
            seen.update(batch_ids if len(batch_ids) == len(accepted) else (e.event_id for e in accepted))
        self._counters["appends"] += 1
        self._counters["accepted"] += len(accepted)
        self._counters["duplicates"] += duplicates
        self._counters["rejected"] += len(rejected)
        result = AppendResult(len(accepted), duplicates, rejected, self._last_seq)
        if self._active.count >= self.segment_max_events:
            self._seal_active()
            if self.auto_compact:
                try:
                    self.compact()
                except Exception:  # the batch is durable and acknowledged; compaction retries later
                    log.exception("%s: compaction failed; sealed segments stay in the WAL", self.root)
        return result

    def import_table(self, events: pa.Table, *, batch_rows: int = 100_000) -> AppendResult:
        """Bulk-load history already in the event schema (a world's or MovieLens' events) through
        the same durable, idempotent path as `append`, without building a dict per event. Rows go
        in timestamp order and get fresh seqs; ids already in the log count as duplicates, so
        importing the same history twice changes nothing."""
        if self._fd is None:
            raise RuntimeError("EventLog is closed")
        table = conform_events(events, EVENT_SCHEMA)  # history written before request_id: nulls there
        checked = validate_event_table(table)  # the rules of `append`, a column at a time
        rejected = [Rejection(i, event_id, reason) for i, event_id, reason in checked.rejected]
        table = checked.valid.sort_by([("timestamp", "ascending")])
        ids = table.column("event_id").to_pylist()
        keep = np.zeros(len(ids), dtype=bool)
        seen, fresh = self._seen.in_wal, set()
        for i, event_id in enumerate(ids):
            if event_id not in seen and event_id not in fresh:
                fresh.add(event_id)
                keep[i] = True
        if fresh and self._seen.has_compacted():
            known = self._seen.compacted_duplicates(list(fresh), self._compacted)
            if known:
                keep &= ~np.fromiter((event_id in known for event_id in ids), dtype=bool, count=len(ids))
        table = table.filter(pa.array(keep))
        for start in range(0, table.num_rows, batch_rows):
            chunk = table.slice(start, batch_rows).combine_chunks()
            first = self._last_seq + 1
            seqs = pa.array(np.arange(first, first + chunk.num_rows, dtype=np.int64))
            columns = chunk.to_batches()[0].columns
            batch = pa.RecordBatch.from_arrays([*columns, seqs], schema=STORED_EVENT_SCHEMA)
            self._write_batch(batch)
            seen.update(chunk.column("event_id").to_pylist())
            if self._active.count >= self.segment_max_events:
                self._seal_active()
                if self.auto_compact:
                    self.compact()
        accepted = table.num_rows
        self._counters["accepted"] += accepted
        self._counters["duplicates"] += len(ids) - accepted
        self._counters["rejected"] += len(rejected)
        return AppendResult(accepted, len(ids) - accepted, rejected, self._last_seq)

    def read(self, since_seq: int = -1, limit: int = 50_000, *, types: Sequence[str] | None = None,
             columns: Sequence[str] | None = None) -> pa.Table:
        """STORED_EVENT_SCHEMA rows with seq > since_seq, ascending by seq, at most `limit` rows,
        from compacted Parquet and the WAL alike.

        A follower that needs only some event types (`types`) or columns (`columns`; `seq` and
        `type` always come) says so, and the rest never leaves the log: member state skips the
        server's decision records, which are most of the log's bytes. `limit` bounds the rows
        read, not the rows returned; the last row read is always returned (whatever its type),
        so a follower's seq advances past a stretch it filtered out entirely."""
        table = self._read_range(since_seq, limit)
        if types is None and columns is None:
            return table
        return _project(table, types, columns)

    def _read_range(self, since_seq: int, limit: int) -> pa.Table:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if since_seq >= self._last_seq:
            return STORED_EVENT_SCHEMA.empty_table()
        pieces: list[pa.Table] = []
        wanted = limit
        start = bisect.bisect_right([s.last_seq for s in self._compacted], since_seq)
        for segment in self._compacted[start:]:
            table = segment.read()
            if since_seq >= segment.first_seq:
                table = table.slice(since_seq - segment.first_seq + 1)
            pieces.append(table.slice(0, wanted))
            wanted -= pieces[-1].num_rows
            if wanted <= 0:
                return pa.concat_tables(pieces)
        chosen: list[pa.RecordBatch] = []
        segments = [s for s in self._wal_segments if s.batches and s.last_seq > since_seq]
        for segment in segments:
            # the first batch holding seq since_seq + 1 (or the segment's first, if it starts later)
            i = max(bisect.bisect_right(segment.firsts, since_seq + 1) - 1, 0)
            for first, batch in zip(segment.firsts[i:], segment.batches[i:]):
                if since_seq >= first:
                    batch = batch.slice(since_seq - first + 1)
                chosen.append(batch.slice(0, wanted))
                wanted -= chosen[-1].num_rows
                if wanted <= 0:
                    break
            if wanted <= 0:
                break
        if chosen:
            pieces.append(pa.Table.from_batches(chosen, schema=STORED_EVENT_SCHEMA))
        return pa.concat_tables(pieces) if pieces else STORED_EVENT_SCHEMA.empty_table()

    def compact(self, *, include_active: bool = False) -> int:
        """Roll sealed WAL segments into day-partitioned Parquet; returns the events compacted.
        With include_active, the active segment is sealed first so everything ends up in Parquet."""
        if self._fd is None:
            raise RuntimeError("EventLog is closed")
        if include_active and self._active.count:
            self._seal_active()
        total = 0
        for segment in list(self._wal_segments[:-1]):  # every segment but the active one is sealed
            if segment.count:
                total += self._compact_segment(segment)
            else:
                self._drop_empty_segment(segment)
        self._counters["compacted"] += total
        return total

    def stats(self) -> dict:
        """Counts for dashboards and benchmarks (sizes, tiers, counters since open, recovery)."""
        wal_events = sum(s.count for s in self._wal_segments)
        compacted_events = sum(s.count for s in self._compacted)
        return {
            "root": str(self.root),
            "last_seq": self._last_seq,
            "events": self._last_seq + 1,
            "wal_segments": len(self._wal_segments),
            "wal_events": wal_events,
            "active_segment": self._active.segment_id,
            "active_segment_events": self._active.count,
            "compacted_segments": len(self._compacted),
            "compacted_events": compacted_events,
            "seen_ids_exact": len(self._seen.in_wal),
            "seen_ids_hashed": self._seen.hashed_count,
            "fsync": self.fsync,
            "segment_max_events": self.segment_max_events,
            "since_open": dict(self._counters),
            "recovery": dict(self._recovery),
        }

    def close(self) -> None:
        """Release the file handles and the root lock (no other cleanup: safe after a crash)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- appending -----------------------------------------------------------------------------

    @property
    def _active(self) -> WalSegment:
        return self._wal_segments[-1]

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        first_seq = self._last_seq + 1
        append_record(self._fd, batch, first_seq, fsync=self.fsync)
        self._active.add(batch, first_seq)
        self._last_seq = first_seq + batch.num_rows - 1

    def _open_segment(self, segment_id: int) -> WalSegment:
        return WalSegment(segment_id, create_segment_file(self._layout.wal_path(segment_id)))

    def _seal_active(self) -> None:
        """Stop appending to the active segment and start a new one (the sealed one may be compacted)."""
        segment = self._open_segment(self._active.segment_id + 1)
        fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._wal_segments.append(segment)

    # -- compaction ----------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self.compaction_hook is not None:
            self.compaction_hook(name)

    def _compact_segment(self, segment: WalSegment) -> int:
        """Compact on disk, then in memory: the segment moves from the exact id tier to the hashed
        one and from the WAL list to the compacted list."""
        compacted = compact_segment(self._layout, segment, self._step)
        self._seen.move_to_hashed(segment.event_ids())
        self._compacted.append(compacted)
        self._wal_segments.remove(segment)
        return segment.count

    def _drop_empty_segment(self, segment: WalSegment) -> None:
        segment.path.unlink()
        fsync_path(self._layout.wal_dir)
        self._wal_segments.remove(segment)

    # -- locking and recovery ------------------------------------------------------------------

    def _acquire_lock(self, timeout_s: float) -> None:
        """flock root/LOCK. A restarted actor may briefly race its dying predecessor: wait."""
        lock = self._layout.lock
        self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(self._lock_fd, 0)
                os.write(self._lock_fd, f"{os.getpid()}\n".encode())
                return
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() >= deadline:
                    os.close(self._lock_fd)
                    self._lock_fd = None
                    raise LogLocked(f"{self.root}: another EventLog holds {lock}") from None
                time.sleep(0.05)

    def _recover(self) -> None:
        """Rebuild state from disk: finish committed compactions, drop uncommitted temp files,
        index Parquet, replay WAL segments (truncating a torn tail), check seqs are dense."""
        started = time.perf_counter()
        layout = self._layout
        rolled_forward = roll_forward(layout)
        stray = layout.stray_temp_files()
        for p in stray:
            p.unlink()
        indexed = index_compacted(layout)
        self._compacted: list[CompactedSegment] = [segment for segment, _ in indexed]
        self._seen = SeenIds()
        self._seen.rebuild_hashed(ids for _, ids in indexed)
        compacted_ids = {s.segment_id for s in self._compacted}

        self._wal_segments: list[WalSegment] = []
        next_seq = self._compacted[-1].last_seq + 1 if self._compacted else 0
        torn_bytes = 0
        paths = layout.wal_paths()
        last_current = True  # the newest segment is in today's schema (else: appends go to a new one)
        for n, path in enumerate(paths):
            segment_id = int(path.stem)
            if segment_id in compacted_ids:
                self._drop_redundant_wal(path, segment_id)
                continue
            batches, valid, last_current = read_segment(path, next_seq, is_last=n == len(paths) - 1)
            size = path.stat().st_size
            if valid < size:
                torn_bytes += size - valid
                truncate(path, valid)
            segment = WalSegment(segment_id, path, batches, sum(b.num_rows for b in batches))
            if segment.count and self._compacted and segment_id < self._compacted[-1].segment_id:
                raise LogCorruption(f"{path}: WAL segment older than compacted segment {self._compacted[-1].segment_id}")
            self._wal_segments.append(segment)
            for b in batches:
                self._seen.in_wal.update(b.column("event_id").to_pylist())
            next_seq += segment.count
        last_known = max([s.segment_id for s in self._compacted] + [s.segment_id for s in self._wal_segments] + [-1])
        if not self._wal_segments or self._wal_segments[-1].segment_id < last_known or not last_current:
            self._wal_segments.append(self._open_segment(last_known + 1))
        self._last_seq = next_seq - 1
        self._fd = os.open(self._active.path, os.O_WRONLY | os.O_APPEND)
        if self.auto_compact and len(self._wal_segments) > 1:
            self.compact()
        self._recovery = {
            "seconds": round(time.perf_counter() - started, 4),
            "compactions_rolled_forward": rolled_forward,
            "stray_temp_files_removed": len(stray),
            "torn_tail_bytes_truncated": torn_bytes,
            "wal_events_replayed": sum(s.count for s in self._wal_segments),
        }

    def _drop_redundant_wal(self, path: Path, segment_id: int) -> None:
        """A WAL segment whose Parquet already exists (commit record lost by hand?) is not
        replayed twice; it is deleted only when the Parquet holds exactly as many events."""
        parquet = next(s for s in self._compacted if s.segment_id == segment_id)
        batches = read_segment(path, parquet.first_seq, is_last=False).batches
        if sum(b.num_rows for b in batches) != parquet.count:
            raise LogCorruption(f"{path}: WAL segment and its compacted Parquet disagree on the event count")
        path.unlink()
        fsync_path(self._layout.wal_dir)
