"""Artwork selection: one artwork per title on the page, with the probability it was chosen.

The ArtworkPolicy contract is the one the contextual bandits (Part 6) implement:
`select(context, arms) -> (arm, propensity)` and `update(context, arm, reward)`. The propensity
is logged with every impression so off-policy evaluation can later replay any other policy.
The policy here is epsilon-greedy over per-artwork mean reward; choices are seeded by request
and title, so one request always shows the same artwork and a replay reproduces it. It does not
learn yet: nothing in the running system calls `update` (joining rewards to impressions is Part
6's), so it serves the first artwork listed, exploring with probability epsilon.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol


class ArtworkPolicy(Protocol):
    def select(self, context: Mapping[str, Any], arms: Sequence[str]) -> tuple[str, float]: ...

    def update(self, context: Mapping[str, Any], arm: str, reward: float) -> None: ...


class EpsilonGreedyArtwork:
    """Best-known artwork with probability 1 - epsilon, a uniformly random one otherwise."""

    def __init__(self, epsilon: float = 0.1, seed: int = 7):
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        self.epsilon, self.seed = epsilon, seed
        self._stats: dict[str, tuple[float, int]] = {}  # arm -> (reward sum, pulls)
        self._lock = threading.Lock()

    def _draws(self, context: Mapping[str, Any], arms: Sequence[str]) -> tuple[float, int]:
        """Two reproducible draws for this request and title: u in [0, 1) and an arm index.
        (crc32, not random.Random: seeding a generator per title cost ~5 us x 100 titles.)"""
        key = f"{self.seed}|{context.get('request_id', '')}|{context.get('title_id', '')}|{arms[0]}".encode()
        first = zlib.crc32(key)
        return first / 4294967296.0, zlib.crc32(key, first) % len(arms)

    def _mean(self, arm: str) -> float:
        total, pulls = self._stats.get(arm, (0.0, 0))
        return total / pulls if pulls else 0.0

    def greedy(self, arms: Sequence[str]) -> str:
        """The best mean reward; ties (every arm untried at first) go to the first arm listed."""
        best, best_mean = arms[0], self._mean(arms[0])
        for arm in arms[1:]:  # strictly better only: a tie keeps the earlier arm
            mean = self._mean(arm)
            if mean > best_mean:
                best, best_mean = arm, mean
        return best

    def select(self, context: Mapping[str, Any], arms: Sequence[str]) -> tuple[str, float]:
        if not arms:
            raise ValueError("select: no artwork to choose from")
        arms = list(arms)
        with self._lock:
            best = self.greedy(arms)
        explore = self.epsilon / len(arms)
        u, index = self._draws(context, arms)
        arm = arms[index] if u < self.epsilon else best
        return arm, (1.0 - self.epsilon + explore) if arm == best else explore

    def update(self, context: Mapping[str, Any], arm: str, reward: float) -> None:
        with self._lock:
            total, pulls = self._stats.get(arm, (0.0, 0))
            self._stats[arm] = (total + float(reward), pulls + 1)


ARTWORK_POLICIES = {"epsilon_greedy": EpsilonGreedyArtwork}  # HomepageConfig.artwork.policy -> class
