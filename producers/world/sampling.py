"""Small numpy sampling helpers shared by the world's catalog, members and simulator.

They are vectorised over rows so a whole batch of members or titles draws at once, which keeps
world generation fast; each takes an explicit Generator so every draw stays seeded.
"""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Gumbel noise (float32): adding it to logits and taking the top k samples k without
    replacement in proportion to exp(logit)."""
    return -np.log(np.maximum(rng.standard_exponential(shape, dtype=np.float32), np.float32(1e-30)))


def weighted_subset(rng: np.random.Generator, weights: np.ndarray, k: np.ndarray) -> np.ndarray:
    """For each row i, k[i] distinct indices drawn proportionally to weights[i] (Gumbel top-k);
    returns an (n, max k) array padded with -1, best draw first."""
    keys = np.log(weights) + gumbel(rng, weights.shape)
    order = np.argsort(-keys, axis=1, kind="stable")[:, : int(k.max())]
    return np.where(np.arange(order.shape[1])[None, :] < k[:, None], order, -1)


def group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """Index of the first element of each element's run in an array sorted by group."""
    first = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]] if sorted_groups.size else np.zeros(0, bool)
    return np.maximum.accumulate(np.where(first, np.arange(sorted_groups.size), 0))


def group_cumsum(values: np.ndarray, sorted_groups: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of `values` within runs of equal `sorted_groups`."""
    total = np.cumsum(values)
    starts = group_starts(sorted_groups)
    return total - (total - values)[starts]
