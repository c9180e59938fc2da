"""The seen-id index: idempotency by event id, in two tiers, so ~2 M events cost tens of MB.

The ids of events still in the WAL are an exact ``set[str]`` (they are in memory anyway); the ids
of compacted events are a sorted ``numpy.int64`` array of their 64-bit hashes (8 bytes per event).
A hash hit is confirmed against the Parquet files before an event is called a duplicate, so a hash
collision can never drop a new event (it only costs one scan of the ``event_id`` column). The
hashes are Python's ``hash(str)`` (64-bit SipHash); they are rebuilt from disk on every open, so
their per-process salt does not matter.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from state.eventlog.compaction import CompactedSegment


def id_hashes(ids: Iterable[str], count: int) -> np.ndarray:
    return np.fromiter((hash(i) for i in ids), dtype=np.int64, count=count)


class SeenIds:
    """Which event ids the log holds. `in_wal` is the exact tier, used directly on the append
    path (a set lookup per event); the hashed tier is asked only through `compacted_duplicates`."""

    def __init__(self) -> None:
        self.in_wal: set[str] = set()
        self._hashes = np.empty(0, dtype=np.int64)

    @property
    def hashed_count(self) -> int:
        return int(self._hashes.size)

    def has_compacted(self) -> bool:
        return self._hashes.size > 0

    def rebuild_hashed(self, compacted_ids: Iterable[list[str]]) -> None:
        """The hashed tier from every compacted segment's ids (one sort for all of them)."""
        hashes = [id_hashes(ids, len(ids)) for ids in compacted_ids]
        self._hashes = np.sort(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.int64)

    def move_to_hashed(self, ids: list[str]) -> None:
        """A segment was compacted: its ids leave the exact tier for the hashed one."""
        self.in_wal.difference_update(ids)
        merged = np.concatenate([self._hashes, id_hashes(ids, len(ids))])
        merged.sort(kind="stable")
        self._hashes = merged

    def compacted_duplicates(self, event_ids: list[str], segments: Sequence[CompactedSegment]) -> set[str]:
        """Ids among `event_ids` that are already compacted. A 64-bit hash hit is only a candidate:
        it is confirmed against the Parquet event_id column, so a collision never drops an event."""
        hashes = id_hashes(event_ids, len(event_ids))
        known = self._hashes
        idx = np.minimum(np.searchsorted(known, hashes), known.size - 1)
        hits = known[idx] == hashes
        if not hits.any():
            return set()
        candidates = pa.array([e for e, hit in zip(event_ids, hits) if hit], type=pa.string())
        confirmed: set[str] = set()
        for segment in reversed(segments):  # replays are most likely of recent events
            ids = segment.read(columns=["event_id"]).column("event_id")
            confirmed.update(ids.filter(pc.is_in(ids, value_set=candidates)).to_pylist())
            if len(confirmed) == len(candidates):
                break
        return confirmed
