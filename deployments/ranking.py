"""The ranker stage: blended play/completion likelihoods from the boosters of one model version.

Scores always come from the same version that built the features (a request carries it), so a
hot swap between candidate generation and ranking can never mix one version's features with
another's trees. Requests batch: rows of several requests go through one XGBoost call.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

import numpy as np

from deployments.model import ServingModel
from deployments.model_holder import ModelHolder


class Ranker:
    """`score(version, features) -> scores`, same length and order as the feature rows."""

    def __init__(self, registry_root: str | Path, holder: ModelHolder | None = None,
                 loader: Callable[[str | Path, str], ServingModel] = ServingModel.load, keep: int = 2,
                 lookup: Callable[[str], ServingModel | None] | None = None):
        self.registry_root, self.holder, self.loader, self.keep = Path(registry_root), holder, loader, keep
        self.lookup = lookup  # another stage's models (fused: the one that built the features)
        self._cache: OrderedDict[str, ServingModel] = OrderedDict()
        self._lock = threading.Lock()

    def model(self, version: str) -> ServingModel:
        held = self.holder.model if self.holder is not None else None
        if held is not None and held.version == version:
            return held
        found = self.lookup(version) if self.lookup is not None else None
        if found is not None:
            return found
        with self._lock:  # split placement, right after a swap: loaded once, then cached
            if version not in self._cache:
                self._cache[version] = self.loader(self.registry_root, version)
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(version)
            return self._cache[version]

    def score(self, version: str, features: np.ndarray) -> np.ndarray:
        scores = self.model(version).rank(features)
        if len(scores) != len(features):
            raise AssertionError(f"ranker returned {len(scores)} scores for {len(features)} rows")
        return scores

    def score_many(self, requests: Sequence[tuple[str, np.ndarray]]) -> list[np.ndarray]:
        """One booster call per version for a whole batch of requests, split back per request."""
        out: list[np.ndarray | None] = [None] * len(requests)
        by_version: dict[str, list[int]] = {}
        for i, (version, _) in enumerate(requests):
            by_version.setdefault(version, []).append(i)
        for version, indices in by_version.items():
            blocks = [np.asarray(requests[i][1], dtype=np.float32) for i in indices]
            scores = self.score(version, np.vstack(blocks)) if sum(len(b) for b in blocks) else np.zeros(0)
            bounds = np.cumsum([0] + [len(b) for b in blocks])
            for j, i in enumerate(indices):
                out[i] = scores[bounds[j]:bounds[j + 1]]
        return out  # type: ignore[return-value]
