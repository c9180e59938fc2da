"""The registers member state keeps per member, each last-writer-wins by (timestamp, seq), and
what it needs to know about titles (which series a season belongs to, how many episodes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from state.member_state.errors import MemberStateError


@dataclass(slots=True)
class Watch:
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
        return watch_key(self.title_id, self.series_id)


def watch_key(title_id: int, series_id: int | None) -> tuple[str, int]:
    return ("s", series_id) if series_id is not None else ("t", title_id)


@dataclass(slots=True)
class MemberRegisters:
    watch: dict[tuple[str, int], Watch] = field(default_factory=dict)
    thumbs: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # title -> (ts, seq, -1/0/+1)
    my_list: dict[int, tuple[int, int, bool]] = field(default_factory=dict)  # title -> (ts, seq, in list)
    recent: dict[int, tuple[int, int]] = field(default_factory=dict)  # title -> (ts, seq) of last play
    first_ms: int | None = None  # earliest event timestamp of any type
    played: int = 0  # titles that entered `recent` (distinct while nothing was trimmed)
    preference: tuple[int, int, tuple[str, ...]] | None = None  # (ts, seq, genres)


@dataclass(frozen=True, slots=True)
class TitleInfo:
    series_id: int | None
    episodes: int | None


def title_info(titles: pa.Table) -> dict[int, TitleInfo]:
    missing = [name for name in ("title_id", "series_id", "episodes") if name not in titles.column_names]
    if missing:
        raise MemberStateError(f"titles: missing column(s) {', '.join(missing)}")
    return {
        title: TitleInfo(series, episodes)
        for title, series, episodes in zip(
            titles.column("title_id").to_pylist(),
            titles.column("series_id").to_pylist(),
            titles.column("episodes").to_pylist(),
        )
        if title is not None
    }


def read_titles(path: str | Path) -> pa.Table:
    """titles.parquet, or a dataset directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / "titles.parquet"
    if not path.is_file():
        raise MemberStateError(f"titles: no titles.parquet at {path}")
    return pq.read_table(path, columns=["title_id", "series_id", "episodes"])
