"""The pipeline's settings: which sources propose how many candidates, and how the ranker is
trained and blended. Training fits by them; serving and the admin API validate them, so they live
below both."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_PARAMS = {
    "objective": "binary:logistic",
    # 100 rounds of depth-5 trees at eta 0.1: as good offline as 300 rounds of depth 6 at 0.05
    # (ml-100k NDCG@10 0.1982 vs 0.1945; world 0.0728 vs 0.0735, within noise) and about 3.5x
    # cheaper to score, which is the ranker's share of every homepage request.
    "eta": 0.1,
    "max_depth": 5,
    "min_child_weight": 5,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "tree_method": "hist",
    "eval_metric": "logloss",
}


@dataclass
class PipelineConfig:
    """Which sources propose how many candidates, and how the ranker is trained and blended."""

    depth: dict[str, int] = field(default_factory=lambda: {
        "sequence": 100, "recency_ease": 100, "embedding": 50, "trending": 20, "content": 20})
    # Inner split for the ranker's labels: each member's last `holdout` training interactions,
    # for members with more than `min_interactions`. Short (3 of 5+) so most members teach the
    # ranker, not only the heaviest ones (measured: 10-of-20 left the world's ranker 272 positives).
    holdout: int = 3
    min_interactions: int = 5
    rounds: int = 100
    params: dict = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    play_weight: float = 1.0
    completion_weight: float = 0.5
    engine: str = "local"  # "local": xgboost.train in process; "ray": Ray Train XGBoostTrainer
    seed: int = 7

    def __post_init__(self) -> None:
        # every value checked here, so `retrain --set` and the admin API refuse a bad one at once
        # instead of a training job failing minutes later
        if self.engine not in ("local", "ray"):
            raise ValueError(f"engine: expected 'local' or 'ray', got {self.engine!r}")
        for name in ("holdout", "min_interactions", "rounds", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name}: expected an integer, got {value!r}")
        if self.rounds < 1:
            raise ValueError(f"rounds: expected at least 1, got {self.rounds}")
        if self.holdout < 1 or self.min_interactions < self.holdout:
            raise ValueError("holdout must be >= 1 and min_interactions >= holdout")
        if (not isinstance(self.depth, dict) or not self.depth
                or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                           for k, v in self.depth.items())):
            raise ValueError(f"depth: give each source a non-negative integer candidate count, got {self.depth!r}")
        if not isinstance(self.params, dict):
            raise ValueError(f"params: expected a dict of xgboost parameters, got {self.params!r}")
        for name in ("play_weight", "completion_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
