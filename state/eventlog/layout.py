"""Every file of an event log, named in one place. ``root`` is the log's own directory (e.g.
``Paths().event_log``)::

    root/LOCK                                   flock: one writer per root
    root/wal/000000000007.wal                   write-ahead log segments (the newest is active)
    root/events/day=YYYY-MM-DD/wal-000000000003.parquet
                                                compacted segments, STORED_EVENT_SCHEMA, the same
                                                hive layout as every dataset (events_dataset reads it)
    root/compaction/000000000003.json           commit record of an in-flight compaction

Temp files start with '.' (pyarrow and Ray Data skip such names) and end in '.tmp'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WAL_DIR = "wal"
EVENTS_DIR = "events"
COMPACTION_DIR = "compaction"
LOCK_FILE = "LOCK"


def segment_name(segment_id: int) -> str:
    return f"{segment_id:012d}"


def temp_path(path: Path) -> Path:
    """The hidden temp name a file is written under before it is renamed to `path`."""
    return path.with_name(f".{path.name}.tmp")


@dataclass(frozen=True)
class LogLayout:
    root: Path

    @property
    def wal_dir(self) -> Path:
        return self.root / WAL_DIR

    @property
    def events_dir(self) -> Path:
        return self.root / EVENTS_DIR

    @property
    def compaction_dir(self) -> Path:
        return self.root / COMPACTION_DIR

    @property
    def lock(self) -> Path:
        return self.root / LOCK_FILE

    def make_dirs(self) -> None:
        for d in (self.root, self.wal_dir, self.events_dir, self.compaction_dir):
            d.mkdir(parents=True, exist_ok=True)

    def wal_path(self, segment_id: int) -> Path:
        return self.wal_dir / f"{segment_name(segment_id)}.wal"

    def wal_paths(self) -> list[Path]:
        """WAL segment files, oldest first."""
        return sorted(self.wal_dir.glob("*.wal"))

    def day_dir(self, day: str) -> Path:
        return self.events_dir / f"day={day}"

    def parquet_path(self, day: str, segment_id: int) -> Path:
        return self.day_dir(day) / f"wal-{segment_name(segment_id)}.parquet"

    def parquet_paths(self) -> dict[int, list[Path]]:
        """Compacted Parquet files by the WAL segment they came from."""
        by_segment: dict[int, list[Path]] = {}
        for path in self.events_dir.glob("day=*/wal-*.parquet"):
            by_segment.setdefault(int(path.stem.removeprefix("wal-")), []).append(path)
        return by_segment

    def commit_path(self, segment_id: int) -> Path:
        return self.compaction_dir / f"{segment_name(segment_id)}.json"

    def commit_paths(self) -> list[Path]:
        return sorted(self.compaction_dir.glob("*.json"))

    def stray_temp_files(self) -> list[Path]:
        """Temp files a crash left behind (only meaningful once commit records are rolled forward)."""
        stray = list(self.events_dir.glob("day=*/.wal-*.tmp")) + list(self.wal_dir.glob(".*.tmp"))
        return stray + list(self.compaction_dir.glob(".*.tmp"))
