"""What each member has watched and listed, kept sparse between simulated days.

A dense members x titles array would not fit for large worlds; the simulator expands only the
members of the batch it is working on.
"""

from __future__ import annotations

import numpy as np


class ViewingState:
    """What each member has watched (episodes done, fraction into the current one) and listed,
    one record per touched (member, title), so memory follows activity, not members x titles."""

    def __init__(self, n_titles: int) -> None:
        self.n_titles = n_titles
        self.codes = np.empty(0, np.int64)  # member * n_titles + title, sorted
        self.episodes = np.empty(0, np.int16)
        self.fraction = np.empty(0, np.float32)
        self.listed = np.empty(0, bool)

    def lookup(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense (len(members), n_titles) episodes, fraction and listed for these members."""
        t = self.n_titles
        episodes = np.zeros((members.size, t), np.int16)
        fraction = np.zeros((members.size, t), np.float32)
        listed = np.zeros((members.size, t), bool)
        lo = np.searchsorted(self.codes, members * t)
        count = np.searchsorted(self.codes, members * t + t) - lo
        if count.sum():
            rows = np.repeat(np.arange(members.size), count)
            idx = np.arange(count.sum()) + np.repeat(lo - (np.cumsum(count) - count), count)
            cols = self.codes[idx] - members[rows] * t
            episodes[rows, cols] = self.episodes[idx]
            fraction[rows, cols] = self.fraction[idx]
            listed[rows, cols] = self.listed[idx]
        return episodes, fraction, listed

    def store(self, members: np.ndarray, episodes: np.ndarray, fraction: np.ndarray,
              listed: np.ndarray) -> None:
        """Replace these members' records with the dense arrays' non-empty cells."""
        keep = ~np.isin(self.codes // self.n_titles, members)
        rows, cols = np.nonzero((episodes > 0) | (fraction > 0) | listed)
        codes = np.concatenate([self.codes[keep], members[rows] * self.n_titles + cols])
        order = np.argsort(codes, kind="stable")
        self.codes = codes[order]
        self.episodes = np.concatenate([self.episodes[keep], episodes[rows, cols]])[order]
        self.fraction = np.concatenate([self.fraction[keep], fraction[rows, cols]])[order]
        self.listed = np.concatenate([self.listed[keep], listed[rows, cols]])[order]
