"""The WAL segment format: CRC-checked Arrow record batches, one record per acknowledged batch.

A segment file is an 8-byte magic, then the Arrow schema (``<u32 length, u32 crc32>`` + IPC
bytes), then one record per batch: ``<u32 length, u32 crc32, i64 first_seq, u32 count>`` followed
by the batch as an Arrow IPC record-batch message. Arrow makes both the write (one C-level
serialize) and the recovery (zero-copy reads of the file bytes) cheap, and the in-memory tail of
the log is already columnar for reads. The CRC covers ``first_seq``, ``count`` and the payload, so
a torn write at the tail (a crash mid-append) is detected and truncated on the next open; it was
never acknowledged. A bad record anywhere else means acknowledged data is damaged: reading raises
LogCorruption rather than silently dropping it.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pyarrow as pa

from marquee.dataset import DatasetError, conform_events
from marquee.durable import fsync_path
from marquee.schema import STORED_EVENT_SCHEMA
from state.eventlog.errors import LogCorruption
from state.eventlog.layout import temp_path

log = logging.getLogger(__name__)

MAGIC = b"MQWAL\x00\x01\x00"
FILE_HEADER = struct.Struct("<II")  # schema length, schema crc32
RECORD_HEADER = struct.Struct("<IIqI")  # payload length, crc32, first_seq, count
SEQ_COUNT = struct.Struct("<qI")  # the part of the record header the CRC covers


@dataclass
class WalSegment:
    """One WAL segment file and its events, held in memory until compacted."""

    segment_id: int
    path: Path
    batches: list[pa.RecordBatch] = field(default_factory=list)
    count: int = 0
    # each batch's first seq, kept beside the batches: a read finds its batch by bisection
    # instead of asking every batch of the WAL (thousands of small appends) for its first seq
    firsts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.firsts) != len(self.batches):
            self.firsts = [b["seq"][0].as_py() for b in self.batches]

    def add(self, batch: pa.RecordBatch, first_seq: int) -> None:
        self.batches.append(batch)
        self.firsts.append(first_seq)
        self.count += batch.num_rows

    @property
    def first_seq(self) -> int:
        return self.firsts[0] if self.batches else -1

    @property
    def last_seq(self) -> int:
        return self.firsts[-1] + self.batches[-1].num_rows - 1 if self.batches else -1

    def event_ids(self) -> list[str]:
        return [i for b in self.batches for i in b.column("event_id").to_pylist()]


def create_segment_file(path: Path) -> Path:
    """Create a WAL segment with its header atomically (temp + rename), so a segment file on disk
    always has a whole header."""
    tmp = temp_path(path)
    schema_bytes = STORED_EVENT_SCHEMA.serialize().to_pybytes()
    with open(tmp, "wb") as f:
        f.write(MAGIC + FILE_HEADER.pack(len(schema_bytes), zlib.crc32(schema_bytes)) + schema_bytes)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def append_record(fd: int, batch: pa.RecordBatch, first_seq: int, *, fsync: bool) -> None:
    """Append `batch` (seqs first_seq, +1, ...) as one record; durable on return when `fsync`.
    On any failure the partial record is cut off: nothing of it was acknowledged, and the next
    append (or the next open) must not find it as a torn tail in the middle of the file."""
    payload = batch.serialize()
    crc = zlib.crc32(payload, zlib.crc32(SEQ_COUNT.pack(first_seq, batch.num_rows)))
    header = RECORD_HEADER.pack(payload.size, crc, first_seq, batch.num_rows)
    size_before = os.fstat(fd).st_size
    try:
        _write_all(fd, [header, payload])
        if fsync:
            os.fdatasync(fd)
    except BaseException:
        try:
            os.ftruncate(fd, size_before)
        except OSError:
            pass
        raise


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


class SegmentRead(NamedTuple):
    batches: list[pa.RecordBatch]  # in STORED_EVENT_SCHEMA, whatever schema the file was written in
    valid_bytes: int  # length of the valid prefix (shorter than the file: a torn tail)
    current_format: bool  # written in today's STORED_EVENT_SCHEMA; if not, append no more to it


def read_segment(path: Path, expected_first_seq: int, *, is_last: bool) -> SegmentRead:
    """Read and verify a WAL segment. Returns its batches and the byte length of its valid prefix.

    A torn or corrupt record at the tail of the LAST segment is a crash mid-append (never
    acknowledged): reading stops there and the caller truncates. Anywhere else it is damage to
    acknowledged data and raises LogCorruption. A segment written before a column was added to
    the schema reads with nulls in it (its header holds the schema it was written in)."""
    data = path.read_bytes()
    buffer = pa.py_buffer(data)
    head = len(MAGIC) + FILE_HEADER.size
    if len(data) < head or data[: len(MAGIC)] != MAGIC:
        raise LogCorruption(f"{path}: not a Marquee WAL segment (bad magic or short header)")
    schema_len, schema_crc = FILE_HEADER.unpack_from(data, len(MAGIC))
    schema_bytes = data[head : head + schema_len]
    if len(schema_bytes) != schema_len or zlib.crc32(schema_bytes) != schema_crc:
        raise LogCorruption(f"{path}: WAL schema header is damaged")
    schema = pa.ipc.read_schema(pa.py_buffer(schema_bytes))
    offset = head + schema_len
    batches: list[pa.RecordBatch] = []
    next_seq = expected_first_seq
    current = schema == STORED_EVENT_SCHEMA

    def bad(reason: str) -> SegmentRead:
        if is_last:
            log.warning("%s: dropping %d byte(s) of torn tail at offset %d (%s)", path, len(data) - offset, offset, reason)
            return SegmentRead(batches, offset, current)
        raise LogCorruption(f"{path}: {reason} at offset {offset} in a sealed segment")

    while offset < len(data):
        if len(data) - offset < RECORD_HEADER.size:
            return bad("partial record header")
        length, crc, first_seq, count = RECORD_HEADER.unpack_from(data, offset)
        start = offset + RECORD_HEADER.size
        if start + length > len(data):
            return bad("partial record payload")
        crc_actual = zlib.crc32(data[start : start + length], zlib.crc32(SEQ_COUNT.pack(first_seq, count)))
        if crc_actual != crc:
            return bad("checksum mismatch")
        if first_seq != next_seq:
            raise LogCorruption(f"{path}: record at offset {offset} starts at seq {first_seq}, expected {next_seq}")
        batch = pa.ipc.read_record_batch(buffer.slice(start, length), schema)
        if batch.num_rows != count:
            raise LogCorruption(f"{path}: record at offset {offset} holds {batch.num_rows} rows, header says {count}")
        if not current:
            batch = _in_current_schema(batch, path, offset)
        batches.append(batch)
        next_seq += count
        offset = start + length
    return SegmentRead(batches, offset, current)


def _in_current_schema(batch: pa.RecordBatch, path: Path, offset: int) -> pa.RecordBatch:
    """A batch of an older schema by column name, with nulls in the columns added since."""
    try:
        table = conform_events(pa.Table.from_batches([batch]))
    except DatasetError as exc:
        raise LogCorruption(f"{path}: record at offset {offset} does not fit the event schema: {exc}") from None
    return pa.RecordBatch.from_arrays([column.combine_chunks() for column in table.columns], schema=STORED_EVENT_SCHEMA)


def truncate(path: Path, length: int) -> None:
    """Cut a segment back to its valid prefix (a torn tail), durably."""
    with open(path, "r+b") as f:
        f.truncate(length)
        f.flush()
        os.fsync(f.fileno())
