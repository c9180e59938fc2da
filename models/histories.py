"""Members' viewing histories as one batch: what every candidate source scores from.

Offline the batch is cut from TrainData; online it is built from live member state (titles most
recent first). Both go through the same scoring code, so a served homepage ranks from what the
member watched a second ago, not from the matrix the model was fitted on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from models.protocol import TrainData


@dataclass
class Histories:
    """Entries (row, title, position) of `n_rows` members; position 0 is a member's latest title.

    `now` is each row's point in time in seconds (time-aware sources count up to it)."""

    rows: np.ndarray
    titles: np.ndarray
    position: np.ndarray
    now: np.ndarray
    n_titles: int
    # (entry -> nonzero, column indices, indptr) of the rows x titles matrix, built once and
    # shared by every weighting: each source weighs the same history its own way
    _layout: tuple[np.ndarray, np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.rows = np.asarray(self.rows, dtype=np.int64)
        self.titles = np.asarray(self.titles, dtype=np.int64)
        self.position = np.asarray(self.position, dtype=np.float64)
        self.now = np.asarray(self.now, dtype=np.int64)
        if not (len(self.rows) == len(self.titles) == len(self.position)):
            raise ValueError("histories: rows, titles and position must have the same length")
        if len(self.titles) and (self.titles.min() < 0 or self.titles.max() >= self.n_titles):
            raise ValueError(f"histories: title index out of range 0..{self.n_titles - 1}")
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= len(self.now)):
            raise ValueError("histories: a row index has no `now`")

    @property
    def n_rows(self) -> int:
        return len(self.now)

    @classmethod
    def from_data(cls, data: TrainData, members: np.ndarray) -> "Histories":
        """The training rows of `members` (in that order); now = each member's last row."""
        members = np.asarray(members, dtype=np.int64)
        counts = np.bincount(data.members, minlength=data.shape[0])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        take = counts[members]
        rows = np.repeat(np.arange(len(members)), take)
        offsets = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
        index = np.repeat(starts[members], take) + offsets
        position = np.repeat(take, take) - 1 - offsets
        return cls(rows, data.titles[index], position, data.last_ts[members], data.shape[1])

    @classmethod
    def from_lists(cls, histories: Sequence[Sequence[int]], now: Sequence[int], n_titles: int) -> "Histories":
        """One list of title indices per member, most recent first (titles a model does not know
        must be dropped by the caller: they have no index)."""
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        rows = np.repeat(np.arange(len(histories)), lengths)
        titles = np.fromiter((t for h in histories for t in h), dtype=np.int64, count=int(lengths.sum()))
        position = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return cls(rows, titles, position, np.asarray(now, dtype=np.int64), n_titles)

    def weighted(self, tau: float, floor: float) -> sp.csr_matrix:
        """Rows x titles, each entry floor + exp(-position / tau); repeats of a title add up."""
        entry_to_nonzero, columns, indptr = self._csr_layout()
        weights = floor + np.exp(-self.position / tau)
        data = np.bincount(entry_to_nonzero, weights=weights, minlength=len(columns))
        return sp.csr_matrix((data, columns, indptr), shape=(self.n_rows, self.n_titles))

    def _csr_layout(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Canonical CSR structure (sorted columns, one nonzero per member x title) and which
        nonzero each entry adds to. Building it directly skips scipy's COO round trip, which cost
        more than the scoring itself for a one-member batch (every homepage request)."""
        if self._layout is None:
            keys = self.rows * self.n_titles + self.titles
            nonzeros, entry_to_nonzero = np.unique(keys, return_inverse=True)
            index_type = np.int32 if max(self.n_titles, len(nonzeros)) < 2**31 else np.int64
            columns = (nonzeros % self.n_titles).astype(index_type)
            indptr = np.zeros(self.n_rows + 1, dtype=index_type)
            np.cumsum(np.bincount(nonzeros // self.n_titles, minlength=self.n_rows), out=indptr[1:])
            self._layout = (entry_to_nonzero.reshape(-1), columns, indptr)
        return self._layout

    def seen(self) -> np.ndarray:
        """Dense boolean rows x titles: what each member has already interacted with."""
        mask = np.zeros((self.n_rows, self.n_titles), dtype=bool)
        mask[self.rows, self.titles] = True
        return mask

    def lengths(self) -> np.ndarray:
        return np.bincount(self.rows, minlength=self.n_rows)
