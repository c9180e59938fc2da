"""Compaction: each sealed WAL segment becomes one Parquet file per UTC day under root/events.

Crash-safe by a commit record: the Parquet files are written and fsynced under hidden temp names,
then ``compaction/<segment>.json`` is written atomically, then the temp files are renamed to final
names, then the WAL segment is deleted, then the commit record. On open, a commit record is rolled
forward (renames finished, WAL deleted); temp files without a commit record are deleted and their
WAL segment is replayed. So a crash at any step neither loses nor duplicates an event.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from marquee.dataset import conform_events, day_column
from marquee.durable import fsync_path
from marquee.schema import STORED_EVENT_SCHEMA
from state.eventlog.errors import LogCorruption
from state.eventlog.layout import LogLayout, temp_path
from state.eventlog.wal import WalSegment


@dataclass
class CompactedSegment:
    """A WAL segment that now lives as Parquet files (one per UTC day) under root/events."""

    segment_id: int
    first_seq: int
    last_seq: int
    files: list[Path]

    @property
    def count(self) -> int:
        return self.last_seq - self.first_seq + 1

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """Its rows (in seq order when seq is read); a file compacted before a column was added
        to the schema reads with nulls there."""
        schema = STORED_EVENT_SCHEMA if columns is None else pa.schema([STORED_EVENT_SCHEMA.field(c) for c in columns])
        tables = []
        for path in self.files:
            parquet = pq.ParquetFile(path)
            present = [name for name in schema.names if name in parquet.schema_arrow.names]
            tables.append(conform_events(parquet.read(columns=present), schema, str(path)))
        table = pa.concat_tables(tables) if tables else schema.empty_table()
        return table.sort_by("seq") if "seq" in schema.names else table


def compact_segment(layout: LogLayout, segment: WalSegment, step: Callable[[str], None]) -> CompactedSegment:
    """Temp Parquet (fsynced) -> commit record -> renames -> delete WAL -> delete commit record.
    `step` is called with each step's name (a test seam: raising there simulates a crash)."""
    table = pa.Table.from_batches(segment.batches, schema=STORED_EVENT_SCHEMA)
    days = day_column(table.column("timestamp"))
    moves: list[tuple[Path, Path]] = []
    touched_dirs: set[Path] = set()
    for day in pc.unique(days).to_pylist():
        final = layout.parquet_path(day, segment.segment_id)
        final.parent.mkdir(exist_ok=True)
        tmp = temp_path(final)
        pq.write_table(table.filter(pc.equal(days, day)), tmp)
        fsync_path(tmp)
        moves.append((tmp, final))
        touched_dirs.add(final.parent)
        step("parquet_written")
    for d in touched_dirs:
        fsync_path(d)
    commit = layout.commit_path(segment.segment_id)
    record = {
        "segment": segment.segment_id,
        "first_seq": segment.first_seq,
        "last_seq": segment.last_seq,
        "events": segment.count,
        "files": [[str(t.relative_to(layout.root)), str(f.relative_to(layout.root))] for t, f in moves],
    }
    commit_tmp = temp_path(commit)
    with open(commit_tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(commit_tmp, commit)
    fsync_path(layout.compaction_dir)
    step("committed")
    for tmp, final in moves:
        os.replace(tmp, final)
        step("renamed")
    for d in touched_dirs:
        fsync_path(d)
    # missing_ok: a compaction that failed (without the process dying) is simply redone.
    segment.path.unlink(missing_ok=True)
    fsync_path(layout.wal_dir)
    step("wal_deleted")
    commit.unlink(missing_ok=True)
    fsync_path(layout.compaction_dir)
    step("commit_deleted")
    return CompactedSegment(segment.segment_id, segment.first_seq, segment.last_seq, [f for _, f in moves])


def roll_forward(layout: LogLayout) -> int:
    """A commit record means its temp Parquet files are durable: finish the renames, then delete
    the WAL segment and the record (whatever step the crash interrupted). Returns the records."""
    records = layout.commit_paths()
    for commit in records:
        record = json.loads(commit.read_text())
        dirs = set()
        for tmp_rel, final_rel in record["files"]:
            tmp, final = layout.root / tmp_rel, layout.root / final_rel
            if tmp.exists():
                os.replace(tmp, final)
            elif not final.exists():
                raise LogCorruption(f"{commit}: committed compaction file {final_rel} is missing")
            dirs.add(final.parent)
        for d in dirs:
            fsync_path(d)
        wal = layout.wal_path(record["segment"])
        if wal.exists():
            wal.unlink()
            fsync_path(layout.wal_dir)
        commit.unlink()
        fsync_path(layout.compaction_dir)
    return len(records)


def index_compacted(layout: LogLayout) -> list[tuple[CompactedSegment, list[str]]]:
    """Every compacted segment, oldest first, with its event ids (to rebuild the seen-id index);
    checks their seqs are dense from 0."""
    by_segment = layout.parquet_paths()
    indexed: list[tuple[CompactedSegment, list[str]]] = []
    for segment_id in sorted(by_segment):
        segment = CompactedSegment(segment_id, 0, -1, sorted(by_segment[segment_id]))
        table = segment.read(columns=["event_id", "seq"])
        seqs = table.column("seq")
        lo, hi = pc.min(seqs).as_py(), pc.max(seqs).as_py()
        if table.num_rows == 0 or hi - lo + 1 != table.num_rows:
            raise LogCorruption(f"compacted segment {segment_id}: seqs {lo}..{hi} for {table.num_rows} rows")
        segment.first_seq, segment.last_seq = lo, hi
        expected = indexed[-1][0].last_seq + 1 if indexed else 0
        if lo != expected:
            raise LogCorruption(f"compacted segment {segment_id} starts at seq {lo}, expected {expected}")
        indexed.append((segment, table.column("event_id").to_pylist()))
    return indexed
