"""Co-watch, incrementally across daily snapshots.

The co-watch snapshot at day D ranks, for every title, the titles most often played by the same
members before D: count(i, j) = members whose first plays of i and j both fall before D. Counts
only grow, so the snapshot of D+1 is the snapshot of D plus the pairs day D adds: a member who
first plays the titles N on day D, having first played the titles O before, adds one to every pair
in N x (O + N) and (O + N) x N (with X the member x title first-play matrix split into O and N:
X'X grows by N'(O + N) + O'N). `CowatchCounts.advance` adds those pairs; recomputing X'X from
every play for each of ~200 daily snapshots was most of the feature job on ml-100k.

The top-k order (count desc, then score = count / sqrt(n_i * n_j) desc, then title id asc) is,
within one title's row, the order (count desc, n_j asc, title asc): for a fixed count and n_i the
score falls strictly as n_j rises (float64 keeps distinct integers distinct here). Counts only
grow, so the k-th largest count of a row never falls: the previous snapshot's k-th count is a
floor that leaves only a small set of candidates to sort each day. Output is identical to the
from-scratch computation (tests/unit/test_cowatch_incremental.py keeps that one as reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from scipy import sparse

# Counts are kept as a dense titles x titles int32 matrix up to this many cells (64 MB); larger
# catalogs keep a sparse matrix (same output, a lexsort over every nonzero per snapshot).
DENSE_CELLS_LIMIT = 1 << 24


@dataclass(frozen=True)
class CowatchIndex:
    """Every (member, title) first play, sorted by day: what co-watch counts are made of."""

    day: np.ndarray  # day number of the first play, ascending
    member: np.ndarray  # dense member index 0..n_members-1
    title: np.ndarray  # catalog title index
    n_members: int
    n_titles: int

    @classmethod
    def from_first_plays(cls, member_ids: np.ndarray, title_index: np.ndarray, first_day: np.ndarray,
                         n_titles: int) -> "CowatchIndex":
        """`title_index` -1 (not in the catalog) rows are dropped."""
        known = title_index >= 0
        first_day = np.asarray(first_day)[known]
        order = np.argsort(first_day, kind="stable")
        _, member = np.unique(np.asarray(member_ids)[known], return_inverse=True)
        n_members = int(member.max()) + 1 if len(member) else 0
        return cls(first_day[order], member[order], np.asarray(title_index)[known][order], n_members, n_titles)


class CowatchCounts:
    """Co-play counts as of a day that only moves forward (`advance`), and their top-k table."""

    def __init__(self, index: CowatchIndex, k: int, dense_cells_limit: int = DENSE_CELLS_LIMIT):
        self.index, self.k = index, k
        n, rows = index.n_titles, len(index.day)
        self.dense = n * n <= dense_cells_limit
        self._added = 0  # rows of the index already counted
        self._as_of: int | None = None
        # member x title -> 1 + row number in the index, to split a member's plays into old and new
        self._by_member = sparse.csr_matrix(
            (np.arange(1, rows + 1, dtype=np.int64), (index.member, index.title)),
            shape=(max(index.n_members, 1), n))
        self._counts = np.zeros((n, n), np.int32) if self.dense else sparse.csr_matrix((n, n), dtype=np.int32)
        # dense only: per title, a floor on its k-th largest co-count, and the cells that may
        # still reach a top-k (count at or above the floor, or grown since the last top_k)
        self._kth: np.ndarray | None = None
        self._cells: tuple[np.ndarray, np.ndarray] | None = None
        self._grown: list[tuple[np.ndarray, np.ndarray]] = []
        self._slot = np.zeros((n, n), np.int32) if self.dense else None  # scratch for de-duplication

    def advance(self, as_of: int) -> "CowatchCounts":
        """Count every first play before day `as_of` (which may not go back in time)."""
        if self._as_of is not None and as_of < self._as_of:
            raise ValueError(f"co-watch counts are at as_of {self._as_of}; they cannot go back to {as_of}")
        self._as_of = as_of
        end = int(np.searchsorted(self.index.day, as_of, side="left"))
        if end <= self._added:
            return self
        members = np.unique(self.index.member[self._added:end])
        plays = self._by_member[members]
        row = plays.data - 1
        old, new = plays.copy(), plays.copy()
        old.data = (row < self._added).astype(np.int32)
        new.data = ((row >= self._added) & (row < end)).astype(np.int32)
        old.eliminate_zeros()
        new.eliminate_zeros()
        delta = (new.T @ (old + new) + old.T @ new).tocoo()
        if self.dense:
            self._counts[delta.row, delta.col] += delta.data.astype(np.int32)
            self._grown.append((delta.row, delta.col))
        else:
            self._counts = (self._counts + delta.tocsr().astype(np.int32)).tocsr()
        self._added = end
        return self

    def top_k(self) -> list[np.ndarray]:
        """[title, other title, count, score, rank] of every title's top-k co-played titles."""
        if self.dense:
            rows, cols = self._candidates()
            result, self._kth, self._cells = _top_k_dense(self._counts, self.k, self._kth, rows, cols)
            return result
        return _top_k_sparse(self._counts, self.k)

    def _candidates(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Cells that may be in a top-k now: last call's cells at or above their row's floor
        plus every cell grown since (a cell that did not grow stays below a floor that only
        rises). None on the first call: every cell is looked at."""
        if self._cells is None:
            self._grown.clear()
            return None, None
        rows = np.concatenate([self._cells[0], *(r for r, _ in self._grown)])
        cols = np.concatenate([self._cells[1], *(c for _, c in self._grown)])
        self._grown.clear()
        order = np.arange(len(rows), dtype=np.int32)
        self._slot[rows, cols] = order  # one write per cell survives: keep that one
        unique = self._slot[rows, cols] == order
        return rows[unique], cols[unique]

    def table(self, title_ids: np.ndarray) -> pa.Table:
        rows, cols, counts, score, rank = self.top_k()
        return pa.table({
            "title_id": pa.array(title_ids[rows.astype(np.int64)], pa.int64()),
            "other_title_id": pa.array(title_ids[cols.astype(np.int64)], pa.int64()),
            "count": pa.array(counts.astype(np.int32)),
            "score": pa.array(score.astype(np.float32)),
            "rank": pa.array(rank.astype(np.int16)),
        })


def _score(counts: np.ndarray, n_played: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    n = np.maximum(n_played, 1).astype(np.float64)
    return counts / np.sqrt(n[rows] * n[cols])


def _top_k_dense(counts: np.ndarray, k: int, floor: np.ndarray | None, rows: np.ndarray | None,
                 cols: np.ndarray | None) -> tuple[list[np.ndarray], np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Top-k per row of a dense count matrix (diagonal = plays per title), among the candidate
    cells (rows, cols; None: all). Also returns each row's k-th count (the next call's floor) and
    the cells at or above it (the next call's candidates, with the cells grown meanwhile)."""
    n = counts.shape[0]
    diagonal = np.arange(n)
    n_played = counts[diagonal, diagonal].astype(np.int64)
    if rows is None:  # first call: the exact k-th largest off-diagonal count per row, every cell
        off = counts.copy()
        off[diagonal, diagonal] = 0
        floor = np.partition(off, n - k, axis=1)[:, n - k] if k < n else np.zeros(n, np.int32)
        del off
        mask = counts >= np.maximum(floor, 1)[:, None]
        mask[diagonal, diagonal] = False
        rows, cols = np.nonzero(mask)
        c = counts[rows, cols].astype(np.int64)
    else:
        c = counts[rows, cols].astype(np.int64)
        keep = (c >= np.maximum(floor, 1)[rows]) & (rows != cols)
        rows, cols, c = rows[keep], cols[keep], c[keep]
    # within a row: count desc, then plays of the other title asc (= score desc), then title asc
    position = np.empty(n, np.int64)
    position[np.lexsort((diagonal, n_played))] = diagonal
    top = int(c.max()) if len(c) else 0
    order = np.argsort((rows * (top + 1) + (top - c)) * n + position[cols])  # keys are unique
    rows, cols, c = rows[order], cols[order], c[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, diagonal)[rows] + 1
    kth = np.zeros(n, np.int64)
    at_k = rank == k
    kth[rows[at_k]] = c[at_k]
    still = c >= np.maximum(kth, 1)[rows]
    cells = (rows[still], cols[still])
    keep = rank <= k
    rows, cols, c, rank = rows[keep], cols[keep], c[keep], rank[keep]
    return [rows, cols, c, _score(c, n_played, rows, cols), rank], kth, cells


def _top_k_sparse(counts: sparse.csr_matrix, k: int) -> list[np.ndarray]:
    """Top-k per row of a sparse count matrix: one lexsort over its off-diagonal nonzeros."""
    n_played = counts.diagonal().astype(np.int64)
    co = counts.copy()
    co.setdiag(0)
    co.eliminate_zeros()
    rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
    cols, c = co.indices.astype(np.int64), co.data.astype(np.int64)
    order = np.lexsort((cols, n_played[cols], -c, rows))
    rows, cols, c = rows[order], cols[order], c[order]
    rank = np.arange(len(rows)) - np.repeat(co.indptr[:-1], np.diff(co.indptr)) + 1
    keep = rank <= k
    rows, cols, c, rank = rows[keep], cols[keep], c[keep], rank[keep]
    return [rows, cols, c, _score(c, n_played, rows, cols), rank]
