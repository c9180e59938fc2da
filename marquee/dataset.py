"""Read and write a dataset directory: the one layout the world generator and the MovieLens
importer both produce, and everything downstream (feature jobs, training, serving) reads.

    DIR/titles.parquet  DIR/artwork.parquet  DIR/members.parquet  DIR/manifest.json
    DIR/events/day=YYYY-MM-DD/part-0.parquet   (STORED_EVENT_SCHEMA, hive-partitioned by UTC day)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from marquee.schema import (
    ADDED_EVENT_COLUMNS,
    ARTWORK_SCHEMA,
    DATASET_FILES,
    EVENTS_DIR,
    MEMBER_SCHEMA,
    STORED_EVENT_SCHEMA,
    TITLE_SCHEMA,
)


class DatasetError(ValueError):
    """A dataset directory is missing files or holds tables of the wrong shape."""


@dataclass
class Dataset:
    """The tables of one dataset directory, loaded (events stay on disk; see `events_dataset`)."""

    root: Path
    titles: pa.Table
    artwork: pa.Table
    members: pa.Table
    manifest: dict[str, Any]

    def events_dataset(self) -> ds.Dataset:
        return events_dataset(self.root / EVENTS_DIR)

    def events(self, columns: list[str] | None = None) -> pa.Table:
        return self.events_dataset().to_table(columns=columns)


def conform(table: pa.Table, schema: pa.Schema, what: str, absent_as_null: Iterable[str] = ()) -> pa.Table:
    """Reorder and cast `table` to `schema`, naming the first column that does not fit. Columns
    named in `absent_as_null` may be missing: they are read as nulls."""
    optional = set(absent_as_null)
    missing = [name for name in schema.names if name not in table.column_names and name not in optional]
    if missing:
        raise DatasetError(f"{what}: missing column(s) {', '.join(missing)}")
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        column = table.column(f.name)
        try:
            column = column.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DatasetError(f"{what}.{f.name}: cannot be read as {f.type}: {exc}") from None
        if not f.nullable and column.null_count:
            raise DatasetError(f"{what}.{f.name}: {column.null_count} null value(s) in a required column")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def conform_events(table: pa.Table, schema: pa.Schema = STORED_EVENT_SCHEMA, what: str = "events") -> pa.Table:
    """`conform` for event rows (STORED_EVENT_SCHEMA, EVENT_SCHEMA or a selection of their columns):
    rows written before a column was added (ADDED_EVENT_COLUMNS) read with nulls there."""
    return conform(table, schema, what, absent_as_null=ADDED_EVENT_COLUMNS)


def day_column(timestamps: pa.ChunkedArray | pa.Array) -> pa.Array:
    """UTC calendar day of each timestamp, as 'YYYY-MM-DD' strings (the partition key)."""
    return pc.strftime(timestamps, format="%Y-%m-%d")


def write_events(events: pa.Table, events_dir: Path, *, basename: str = "part-{i}.parquet") -> int:
    """Write STORED_EVENT_SCHEMA rows partitioned by UTC day; returns the number of rows."""
    events = conform_events(events)
    events = events.sort_by([("timestamp", "ascending"), ("seq", "ascending")])
    with_day = events.append_column("day", day_column(events.column("timestamp")))
    ds.write_dataset(
        with_day,
        events_dir,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("day", pa.string())]), flavor="hive"),
        basename_template=basename,
        existing_data_behavior="overwrite_or_ignore",
        max_rows_per_group=1 << 20,
    )
    return events.num_rows


def events_dataset(events_dir: Path | str) -> ds.Dataset:
    """The day-partitioned event Parquet under `events_dir` as a pyarrow dataset. Files written
    before a column was added (ADDED_EVENT_COLUMNS) read with nulls there (the explicit schema)."""
    events_dir = Path(events_dir)
    if not events_dir.is_dir():
        raise DatasetError(f"no events directory at {events_dir}")
    return ds.dataset(
        events_dir,
        format="parquet",
        schema=STORED_EVENT_SCHEMA.append(pa.field("day", pa.string())),
        partitioning="hive",
    )


def write_dataset(
    out: Path | str,
    *,
    titles: pa.Table,
    artwork: pa.Table,
    members: pa.Table,
    events: pa.Table | Iterable[pa.Table],
    manifest: dict[str, Any],
) -> Path:
    """Write a complete dataset directory atomically: built in a sibling temp dir, then renamed,
    so a reader never sees half a dataset. `events` may be one table or an iterable of chunks."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pq.write_table(conform(titles, TITLE_SCHEMA, "titles"), tmp / "titles.parquet")
        pq.write_table(conform(artwork, ARTWORK_SCHEMA, "artwork"), tmp / "artwork.parquet")
        pq.write_table(conform(members, MEMBER_SCHEMA, "members"), tmp / "members.parquet")
        chunks = [events] if isinstance(events, pa.Table) else events
        total = 0
        for i, chunk in enumerate(chunks):
            total += write_events(chunk, tmp / EVENTS_DIR, basename=f"part-{i}-{{i}}.parquet")
        (tmp / EVENTS_DIR).mkdir(exist_ok=True)
        manifest = {**manifest, "events": total}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_dataset(root: Path | str) -> Dataset:
    """Load a dataset directory, naming exactly what is missing when it is not one."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory (expected a Marquee dataset: {', '.join(DATASET_FILES)}, {EVENTS_DIR}/)")
    missing = [name for name in (*DATASET_FILES, EVENTS_DIR) if not (root / name).exists()]
    if missing:
        raise DatasetError(f"{root}: not a Marquee dataset; missing {', '.join(missing)}")
    return Dataset(
        root=root,
        titles=conform(pq.read_table(root / "titles.parquet"), TITLE_SCHEMA, "titles"),
        artwork=conform(pq.read_table(root / "artwork.parquet"), ARTWORK_SCHEMA, "artwork"),
        members=conform(pq.read_table(root / "members.parquet"), MEMBER_SCHEMA, "members"),
        manifest=json.loads((root / "manifest.json").read_text()),
    )
