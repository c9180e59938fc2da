"""The durable, idempotent event log: the system's memory of record.

Every interaction (impression, play, progress, ...) is appended here. The contract:

* an append is acknowledged only after its events are durable (write + fdatasync of the WAL);
* idempotent by ``event_id``: replaying a batch (a producer retrying after a lost ack) changes
  nothing and counts the replays as ``duplicates``;
* malformed events are rejected one by one with the reason from ``Event.parse``, while the good
  events of the same batch are kept;
* every accepted event gets a dense sequence number (0, 1, 2, ...) and is never lost.

On disk (``root`` is the log's own directory, e.g. ``Paths().event_log``)::

    root/LOCK                                   flock: one writer per root
    root/wal/000000000007.wal                   write-ahead log segments (the newest is active)
    root/events/day=YYYY-MM-DD/wal-000000000003.parquet
                                                compacted segments, STORED_EVENT_SCHEMA, the same
                                                hive layout as every dataset (events_dataset reads it)
    root/compaction/000000000003.json           commit record of an in-flight compaction

WAL segment format: an 8-byte magic, then the Arrow schema (length + CRC32 + IPC bytes), then one
record per acknowledged batch: ``<u32 length, u32 crc32, i64 first_seq, u32 count>`` followed by
the batch as an Arrow IPC record-batch message. Arrow makes both the write (one C-level serialize)
and the recovery (zero-copy reads of the file bytes) cheap, and the in-memory tail of the log is
already columnar for ``read``. The CRC covers ``first_seq``, ``count`` and the payload, so a torn
write at the tail (a crash mid-append) is detected and truncated on the next open; it was never
acknowledged. A bad record anywhere else means acknowledged data is damaged: the log refuses to open
rather than silently dropping it.

Compaction rolls each sealed WAL segment into one Parquet file per UTC day. It is crash-safe by a
commit record: the Parquet files are written and fsynced under hidden temp names (pyarrow and Ray
Data skip names starting with '.'), then ``compaction/<segment>.json`` is written atomically, then the
temp files are renamed to final names, then the WAL segment is deleted, then the commit record.
On open, a commit record is rolled forward (renames finished, WAL deleted); temp files without a
commit record are deleted and their WAL segment is replayed. So a crash at any step neither loses
nor duplicates an event.

Seen event ids (for idempotency) live in two tiers, so ~2 M events cost tens of MB, not hundreds:
the ids of events still in the WAL are an exact ``set[str]`` (they are in memory anyway); the ids of
compacted events are a sorted ``numpy.int64`` array of their 64-bit hashes (8 bytes per event).
A hash hit is confirmed against the Parquet files before an event is called a duplicate, so a hash
collision can never drop a new event (it only costs one scan of the ``event_id`` column). The
hashes are Python's ``hash(str)`` (64-bit SipHash); they are rebuilt from disk on every open, so
their per-process salt does not matter.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import json
import logging
import operator
import os
import struct
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from marquee.dataset import conform, day_column, events_dataset
from actors.named import lazy_remote, start_bound_actor
from marquee.durable import fsync_path
from marquee.schema import EVENT_SCHEMA, STORED_EVENT_SCHEMA, Event, EventError

log = logging.getLogger(__name__)

WAL_DIR = "wal"
EVENTS_DIR = "events"
COMPACTION_DIR = "compaction"

_WAL_MAGIC = b"MQWAL\x00\x01\x00"
_FILE_HEADER = struct.Struct("<II")  # schema length, schema crc32
_RECORD_HEADER = struct.Struct("<IIqI")  # payload length, crc32, first_seq, count
_SEQ_COUNT = struct.Struct("<qI")  # the part of the record header the CRC covers

# Event attribute per EVENT_SCHEMA column, fetched for a whole batch in one C call
# (10x faster than marquee.schema.events_to_table's per-field getattr loop).
_EVENT_ATTRS = operator.attrgetter(*("timestamp_ms" if n == "timestamp" else n for n in EVENT_SCHEMA.names))


class LogCorruption(RuntimeError):
    """Acknowledged data on disk is damaged or inconsistent; the log refuses to open over it."""


class LogLocked(RuntimeError):
    """Another EventLog (process) holds this root; two writers would corrupt the log."""


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


# ---------------------------------------------------------------------------------------------
# Small filesystem helpers
# ---------------------------------------------------------------------------------------------


def _write_all(fd: int, buffers: list) -> None:
    """writev until every byte is written (a regular file may take fewer bytes per call)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _segment_name(segment_id: int) -> str:
    return f"{segment_id:012d}"


def _parquet_name(segment_id: int) -> str:
    return f"wal-{_segment_name(segment_id)}.parquet"


def _id_hashes(ids: Iterable[str], count: int) -> np.ndarray:
    return np.fromiter((hash(i) for i in ids), dtype=np.int64, count=count)


def _events_to_batch(events: list[Event], first_seq: int) -> pa.RecordBatch:
    """Validated events as one STORED_EVENT_SCHEMA record batch with seqs first_seq, +1, ..."""
    columns = zip(*map(_EVENT_ATTRS, events))
    arrays = [pa.array(column, type=f.type) for column, f in zip(columns, EVENT_SCHEMA)]
    arrays.append(pa.array(np.arange(first_seq, first_seq + len(events), dtype=np.int64)))
    return pa.RecordBatch.from_arrays(arrays, schema=STORED_EVENT_SCHEMA)


def _raw_event_id(raw: Any) -> str | None:
    event_id = raw.get("event_id") if isinstance(raw, dict) else None
    return event_id if isinstance(event_id, str) else None


# ---------------------------------------------------------------------------------------------
# WAL segments
# ---------------------------------------------------------------------------------------------


@dataclass
class _WalSegment:
    """One WAL segment file and its events, held in memory until compacted."""

    segment_id: int
    path: Path
    batches: list[pa.RecordBatch] = field(default_factory=list)
    count: int = 0

    @property
    def first_seq(self) -> int:
        return self.batches[0]["seq"][0].as_py() if self.batches else -1

    @property
    def last_seq(self) -> int:
        return self.batches[-1]["seq"][-1].as_py() if self.batches else -1

    def event_ids(self) -> list[str]:
        return [i for b in self.batches for i in b.column("event_id").to_pylist()]


def _create_segment_file(wal_dir: Path, segment_id: int) -> Path:
    """Create a WAL segment with its header atomically (temp + rename), so a segment file on disk
    always has a whole header."""
    path = wal_dir / f"{_segment_name(segment_id)}.wal"
    tmp = wal_dir / f".{path.name}.tmp"
    schema_bytes = STORED_EVENT_SCHEMA.serialize().to_pybytes()
    with open(tmp, "wb") as f:
        f.write(_WAL_MAGIC + _FILE_HEADER.pack(len(schema_bytes), zlib.crc32(schema_bytes)) + schema_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(wal_dir)
    return path


def _read_segment(path: Path, expected_first_seq: int, *, is_last: bool) -> tuple[list[pa.RecordBatch], int]:
    """Read and verify a WAL segment. Returns its batches and the byte length of its valid prefix.

    A torn or corrupt record at the tail of the LAST segment is a crash mid-append (never
    acknowledged): reading stops there and the caller truncates. Anywhere else it is damage to
    acknowledged data and raises LogCorruption."""
    data = path.read_bytes()
    buffer = pa.py_buffer(data)
    head = len(_WAL_MAGIC) + _FILE_HEADER.size
    if len(data) < head or data[: len(_WAL_MAGIC)] != _WAL_MAGIC:
        raise LogCorruption(f"{path}: not a Marquee WAL segment (bad magic or short header)")
    schema_len, schema_crc = _FILE_HEADER.unpack_from(data, len(_WAL_MAGIC))
    schema_bytes = data[head : head + schema_len]
    if len(schema_bytes) != schema_len or zlib.crc32(schema_bytes) != schema_crc:
        raise LogCorruption(f"{path}: WAL schema header is damaged")
    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    offset = head + schema_len
    batches: list[pa.RecordBatch] = []
    next_seq = expected_first_seq

    def bad(reason: str) -> tuple[list[pa.RecordBatch], int]:
        if is_last:
            log.warning("%s: dropping %d byte(s) of torn tail at offset %d (%s)", path, len(data) - offset, offset, reason)
            return batches, offset
        raise LogCorruption(f"{path}: {reason} at offset {offset} in a sealed segment")

    while offset < len(data):
        if len(data) - offset < _RECORD_HEADER.size:
            return bad("partial record header")
        length, crc, first_seq, count = _RECORD_HEADER.unpack_from(data, offset)
        start = offset + _RECORD_HEADER.size
        if start + length > len(data):
            return bad("partial record payload")
        crc_actual = zlib.crc32(data[start : start + length], zlib.crc32(_SEQ_COUNT.pack(first_seq, count)))
        if crc_actual != crc:
            return bad("checksum mismatch")
        if first_seq != next_seq:
            raise LogCorruption(f"{path}: record at offset {offset} starts at seq {first_seq}, expected {next_seq}")
        batch = pa.ipc.read_record_batch(buffer.slice(start, length), schema)
        if batch.num_rows != count:
            raise LogCorruption(f"{path}: record at offset {offset} holds {batch.num_rows} rows, header says {count}")
        if schema != STORED_EVENT_SCHEMA:
            batch = pa.RecordBatch.from_arrays(
                [batch.column(n).cast(f.type) for n, f in zip(STORED_EVENT_SCHEMA.names, STORED_EVENT_SCHEMA)],
                schema=STORED_EVENT_SCHEMA,
            )
        batches.append(batch)
        next_seq += count
        offset = start + length
    return batches, offset


# ---------------------------------------------------------------------------------------------
# Compacted segments
# ---------------------------------------------------------------------------------------------


@dataclass
class _CompactedSegment:
    """A WAL segment that now lives as Parquet files (one per UTC day) under root/events."""

    segment_id: int
    first_seq: int
    last_seq: int
    files: list[Path]

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1

    def read(self, columns: list[str] | None = None) -> pa.Table:
        tables = [pq.ParquetFile(p).read(columns=columns) for p in self.files]
        table = pa.concat_tables(tables) if tables else STORED_EVENT_SCHEMA.empty_table()
        return table.sort_by("seq") if columns is None or "seq" in columns else table


# ---------------------------------------------------------------------------------------------
# The log
# ---------------------------------------------------------------------------------------------


class EventLog:
    """Durable, idempotent, append-only event log (plain class; the Ray actor wraps it).

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
        self._wal_dir = self.root / WAL_DIR
        self._events_dir = self.root / EVENTS_DIR
        self._compaction_dir = self.root / COMPACTION_DIR
        for d in (self.root, self._wal_dir, self._events_dir, self._compaction_dir):
            d.mkdir(parents=True, exist_ok=True)
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
        seen = self._recent_ids
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
        if accepted and self._compacted_hashes.size:
            known = self._confirm_compacted_duplicates([e.event_id for e in accepted])
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
        table = conform(events.select(EVENT_SCHEMA.names), EVENT_SCHEMA, "events")
        table = table.sort_by([("timestamp", "ascending")])
        ids = table.column("event_id").to_pylist()
        keep = np.zeros(len(ids), dtype=bool)
        seen, fresh = self._recent_ids, set()
        for i, event_id in enumerate(ids):
            if event_id not in seen and event_id not in fresh:
                fresh.add(event_id)
                keep[i] = True
        if fresh and self._compacted_hashes.size:
            known = self._confirm_compacted_duplicates(list(fresh))
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
        return AppendResult(accepted, len(ids) - accepted, [], self._last_seq)

    def read(self, since_seq: int = -1, limit: int = 50_000) -> pa.Table:
        """STORED_EVENT_SCHEMA rows with seq > since_seq, ascending by seq, at most `limit` rows,
        from compacted Parquet and the WAL alike."""
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
        # WAL batches, in seq order; find the first batch holding seq since_seq + 1.
        batches = [b for s in self._wal_segments for b in s.batches]
        firsts = [b["seq"][0].as_py() for b in batches]
        i = max(bisect.bisect_right(firsts, since_seq + 1) - 1, 0)
        chosen: list[pa.RecordBatch] = []
        for batch in batches[i:]:
            first = firsts[i]
            i += 1
            if first + batch.num_rows - 1 <= since_seq:
                continue
            if since_seq >= first:
                batch = batch.slice(since_seq - first + 1)
            chosen.append(batch.slice(0, wanted))
            wanted -= chosen[-1].num_rows
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
            "seen_ids_exact": len(self._recent_ids),
            "seen_ids_hashed": int(self._compacted_hashes.size),
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
    def _active(self) -> _WalSegment:
        return self._wal_segments[-1]

    def _write_batch(self, batch: pa.RecordBatch) -> None:
        payload = batch.serialize()
        first_seq = self._last_seq + 1
        crc = zlib.crc32(payload, zlib.crc32(_SEQ_COUNT.pack(first_seq, batch.num_rows)))
        header = _RECORD_HEADER.pack(payload.size, crc, first_seq, batch.num_rows)
        size_before = os.fstat(self._fd).st_size
        try:
            _write_all(self._fd, [header, payload])
            if self.fsync:
                os.fdatasync(self._fd)
        except BaseException:
            # Nothing of this batch was acknowledged: cut the partial record so the next append
            # (or the next open) does not see it as a torn tail in the middle of the file.
            try:
                os.ftruncate(self._fd, size_before)
            except OSError:
                pass
            raise
        self._active.batches.append(batch)
        self._active.count += batch.num_rows
        self._last_seq = first_seq + batch.num_rows - 1

    def _open_segment(self, segment_id: int) -> _WalSegment:
        path = _create_segment_file(self._wal_dir, segment_id)
        return _WalSegment(segment_id, path)

    def _seal_active(self) -> None:
        """Stop appending to the active segment and start a new one (the sealed one may be compacted)."""
        segment = self._open_segment(self._active.segment_id + 1)
        fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        if self._fd is not None:
            os.close(self._fd)
        self._fd = fd
        self._wal_segments.append(segment)

    def _confirm_compacted_duplicates(self, event_ids: list[str]) -> set[str]:
        """Ids among `event_ids` that are already compacted. A 64-bit hash hit is only a candidate:
        it is confirmed against the Parquet event_id column, so a collision never drops an event."""
        hashes = _id_hashes(event_ids, len(event_ids))
        known = self._compacted_hashes
        idx = np.minimum(np.searchsorted(known, hashes), known.size - 1)
        hits = known[idx] == hashes
        if not hits.any():
            return set()
        candidates = pa.array([e for e, hit in zip(event_ids, hits) if hit], type=pa.string())
        confirmed: set[str] = set()
        for segment in reversed(self._compacted):  # replays are most likely of recent events
            ids = segment.read(columns=["event_id"]).column("event_id")
            confirmed.update(ids.filter(pc.is_in(ids, value_set=candidates)).to_pylist())
            if len(confirmed) == len(candidates):
                break
        return confirmed

    # -- compaction ----------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self.compaction_hook is not None:
            self.compaction_hook(name)

    def _compact_segment(self, segment: _WalSegment) -> int:
        """Crash-safe: temp Parquet (fsynced) -> commit record -> renames -> delete WAL -> delete
        commit record. Recovery rolls a committed compaction forward and discards an uncommitted one."""
        table = pa.Table.from_batches(segment.batches, schema=STORED_EVENT_SCHEMA)
        days = day_column(table.column("timestamp"))
        moves: list[tuple[Path, Path]] = []
        touched_dirs: set[Path] = set()
        for day in pc.unique(days).to_pylist():
            day_dir = self._events_dir / f"day={day}"
            day_dir.mkdir(exist_ok=True)
            final = day_dir / _parquet_name(segment.segment_id)
            tmp = day_dir / f".{final.name}.tmp"
            pq.write_table(table.filter(pc.equal(days, day)), tmp)
            fsync_path(tmp)
            moves.append((tmp, final))
            touched_dirs.add(day_dir)
            self._step("parquet_written")
        for d in touched_dirs:
            fsync_path(d)
        commit = self._compaction_dir / f"{_segment_name(segment.segment_id)}.json"
        record = {
            "segment": segment.segment_id,
            "first_seq": segment.first_seq,
            "last_seq": segment.last_seq,
            "events": segment.count,
            "files": [[str(t.relative_to(self.root)), str(f.relative_to(self.root))] for t, f in moves],
        }
        commit_tmp = commit.with_name(f".{commit.name}.tmp")
        with open(commit_tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(commit_tmp, commit)
        fsync_path(self._compaction_dir)
        self._step("committed")
        for tmp, final in moves:
            os.replace(tmp, final)
            self._step("renamed")
        for d in touched_dirs:
            fsync_path(d)
        # missing_ok: a compaction that failed (without the process dying) is simply redone.
        segment.path.unlink(missing_ok=True)
        fsync_path(self._wal_dir)
        self._step("wal_deleted")
        commit.unlink(missing_ok=True)
        fsync_path(self._compaction_dir)
        self._step("commit_deleted")
        # In memory: the segment moves from the exact tier to the hashed tier.
        ids = segment.event_ids()
        self._recent_ids.difference_update(ids)
        self._add_compacted_hashes(_id_hashes(ids, len(ids)))
        self._compacted.append(
            _CompactedSegment(segment.segment_id, segment.first_seq, segment.last_seq, [f for _, f in moves])
        )
        self._wal_segments.remove(segment)
        return segment.count

    def _drop_empty_segment(self, segment: _WalSegment) -> None:
        segment.path.unlink()
        fsync_path(self._wal_dir)
        self._wal_segments.remove(segment)

    def _add_compacted_hashes(self, hashes: np.ndarray) -> None:
        merged = np.concatenate([self._compacted_hashes, hashes])
        merged.sort(kind="stable")
        self._compacted_hashes = merged

    # -- locking and recovery ------------------------------------------------------------------

    def _acquire_lock(self, timeout_s: float) -> None:
        """flock root/LOCK. A restarted actor may briefly race its dying predecessor: wait."""
        self._lock_fd = os.open(self.root / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
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
                    raise LogLocked(f"{self.root}: another EventLog holds {self.root / 'LOCK'}") from None
                time.sleep(0.05)

    def _recover(self) -> None:
        """Rebuild state from disk: finish committed compactions, drop uncommitted temp files,
        index Parquet, replay WAL segments (truncating a torn tail), check seqs are dense."""
        started = time.perf_counter()
        rolled_forward = self._roll_forward_compactions()
        stray = [p for p in self._events_dir.glob("day=*/.wal-*.tmp")] + list(self._wal_dir.glob(".*.tmp"))
        stray += list(self._compaction_dir.glob(".*.tmp"))
        for p in stray:
            p.unlink()
        self._compacted = self._index_compacted()
        compacted_ids = {s.segment_id for s in self._compacted}

        self._recent_ids: set[str] = set()
        self._wal_segments: list[_WalSegment] = []
        next_seq = self._compacted[-1].last_seq + 1 if self._compacted else 0
        torn_bytes = 0
        paths = sorted(self._wal_dir.glob("*.wal"))
        for n, path in enumerate(paths):
            segment_id = int(path.stem)
            if segment_id in compacted_ids:
                self._drop_redundant_wal(path, segment_id)
                continue
            batches, valid = _read_segment(path, next_seq, is_last=n == len(paths) - 1)
            size = path.stat().st_size
            if valid < size:
                torn_bytes += size - valid
                with open(path, "r+b") as f:
                    f.truncate(valid)
                    f.flush()
                    os.fsync(f.fileno())
            segment = _WalSegment(segment_id, path, batches, sum(b.num_rows for b in batches))
            if segment.count and self._compacted and segment_id < self._compacted[-1].segment_id:
                raise LogCorruption(f"{path}: WAL segment older than compacted segment {self._compacted[-1].segment_id}")
            self._wal_segments.append(segment)
            for b in batches:
                self._recent_ids.update(b.column("event_id").to_pylist())
            next_seq += segment.count
        last_known = max([s.segment_id for s in self._compacted] + [s.segment_id for s in self._wal_segments] + [-1])
        if not self._wal_segments or self._wal_segments[-1].segment_id < last_known:
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

    def _roll_forward_compactions(self) -> int:
        """A commit record means its temp Parquet files are durable: finish the renames, then
        delete the WAL segment and the record (whatever step the crash interrupted)."""
        records = sorted(self._compaction_dir.glob("*.json"))
        for commit in records:
            record = json.loads(commit.read_text())
            dirs = set()
            for tmp_rel, final_rel in record["files"]:
                tmp, final = self.root / tmp_rel, self.root / final_rel
                if tmp.exists():
                    os.replace(tmp, final)
                elif not final.exists():
                    raise LogCorruption(f"{commit}: committed compaction file {final_rel} is missing")
                dirs.add(final.parent)
            for d in dirs:
                fsync_path(d)
            wal = self._wal_dir / f"{_segment_name(record['segment'])}.wal"
            if wal.exists():
                wal.unlink()
                fsync_path(self._wal_dir)
            commit.unlink()
            fsync_path(self._compaction_dir)
        return len(records)

    def _index_compacted(self) -> list[_CompactedSegment]:
        """Find compacted Parquet, read each segment's seqs and ids (to rebuild the hashed tier)."""
        by_segment: dict[int, list[Path]] = {}
        for path in self._events_dir.glob("day=*/wal-*.parquet"):
            by_segment.setdefault(int(path.stem.removeprefix("wal-")), []).append(path)
        segments: list[_CompactedSegment] = []
        hashes: list[np.ndarray] = []
        for segment_id in sorted(by_segment):
            files = sorted(by_segment[segment_id])
            segment = _CompactedSegment(segment_id, 0, -1, files)
            table = segment.read(columns=["event_id", "seq"])
            seqs = table.column("seq")
            lo, hi = pc.min(seqs).as_py(), pc.max(seqs).as_py()
            if table.num_rows == 0 or hi - lo + 1 != table.num_rows:
                raise LogCorruption(f"compacted segment {segment_id}: seqs {lo}..{hi} for {table.num_rows} rows")
            segment.first_seq, segment.last_seq = lo, hi
            expected = segments[-1].last_seq + 1 if segments else 0
            if lo != expected:
                raise LogCorruption(f"compacted segment {segment_id} starts at seq {lo}, expected {expected}")
            ids = table.column("event_id").to_pylist()
            hashes.append(_id_hashes(ids, len(ids)))
            segments.append(segment)
        self._compacted_hashes = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.int64)
        return segments

    def _drop_redundant_wal(self, path: Path, segment_id: int) -> None:
        """A WAL segment whose Parquet already exists (commit record lost by hand?) is not
        replayed twice; it is deleted only when the Parquet holds exactly as many events."""
        parquet = next(s for s in self._compacted if s.segment_id == segment_id)
        batches, _ = _read_segment(path, parquet.first_seq, is_last=False)
        if sum(b.num_rows for b in batches) != parquet.count:
            raise LogCorruption(f"{path}: WAL segment and its compacted Parquet disagree on the event count")
        path.unlink()
        fsync_path(self._wal_dir)


# ---------------------------------------------------------------------------------------------
# The Ray actor (thin wrapper) and its client helpers
# ---------------------------------------------------------------------------------------------


class _EventLogActorImpl:
    """What runs inside the actor: an EventLog rebuilt from disk on every (re)start."""

    def __init__(self, root: str, fsync: bool = True, segment_max_events: int = 200_000, auto_compact: bool = True):
        self._log = EventLog(root, fsync=fsync, segment_max_events=segment_max_events, auto_compact=auto_compact)

    def append(self, events: list[dict]) -> AppendResult:
        return self._log.append(events)

    def read(self, since_seq: int = -1, limit: int = 50_000) -> pa.Table:
        return self._log.read(since_seq, limit)

    def import_events_dir(self, events_dir: str) -> AppendResult:
        """Bulk-load a dataset's day-partitioned events (read here, next to the log's disk)."""
        return self._log.import_table(events_dataset(events_dir).to_table(columns=EVENT_SCHEMA.names))

    def last_seq(self) -> int:
        return self._log.last_seq

    def compact(self, include_active: bool = False) -> int:
        return self._log.compact(include_active=include_active)

    def stats(self) -> dict:
        return self._log.stats()

    def root(self) -> str:
        return str(self._log.root)

    def pid(self) -> int:
        """The worker process id, so chaos tests can SIGKILL it."""
        return os.getpid()


def _build_remote_class():
    import ray

    return ray.remote(_EventLogActorImpl)


_remote_class = lazy_remote(_build_remote_class)


def __getattr__(name: str):
    if name == "EventLogActor":
        return _remote_class()
    raise AttributeError(name)


def start_event_log(
    root: Path | str,
    *,
    name: str = "marquee-event-log",
    namespace: str = "marquee",
    fsync: bool = True,
    lifetime: str | None = None,
    segment_max_events: int = 200_000,
    auto_compact: bool = True,
    num_cpus: float = 0,
):
    """Get or create the named event-log actor. It restarts forever after a crash and rebuilds
    from disk; in-flight calls are retried by Ray (safe: appends are idempotent). `lifetime` is
    None (dies with the driver) or "detached". num_cpus=0 so it schedules on a busy machine."""
    return start_bound_actor(
        _remote_class(), root, fsync, segment_max_events, auto_compact,
        name=name, namespace=namespace, lifetime=lifetime, max_task_retries=-1, num_cpus=num_cpus)


def append_with_retry(
    handle,
    events: list[dict],
    *,
    attempts: int = 20,
    timeout_s: float | None = 60.0,
    backoff_s: float = 0.1,
    max_backoff_s: float = 2.0,
) -> AppendResult:
    """Append through the actor, retrying the SAME events when the actor dies or the call times
    out. Idempotency by event_id makes a retry of a batch that was in fact written harmless: it
    comes back as duplicates. Raises the last error after `attempts` tries."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        ref = None
        try:
            ref = handle.append.remote(events)
            return ray.get(ref, timeout=timeout_s)
        except (RayActorError, GetTimeoutError) as exc:
            if ref is not None and isinstance(exc, GetTimeoutError):
                try:
                    ray.cancel(ref)  # best effort; if it still runs, the retry is a duplicate
                except Exception:
                    pass
            if attempt == attempts:
                raise
            log.info("append attempt %d failed (%s); retrying", attempt, type(exc).__name__)
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
    raise AssertionError("unreachable")


def result_as_dict(result: AppendResult) -> dict:
    """JSON-ready form of an AppendResult (for the HTTP gateway)."""
    return asdict(result)
