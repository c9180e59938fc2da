"""The pipeline's settings: which sources propose how many candidates, and how the ranker is
trained and blended. Training fits by them; serving and the admin API validate them, so they live
below both."""

from __future__ import annotations

from dataclasses import dataclass, field

from marquee.settings import (
    assign,
    check_choice,
    check_int,
    check_int_map,
    check_mapping,
    check_number,
    fail,
)

ENGINES = ("local", "ray")

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


@dataclass(frozen=True)
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
    engine: str = "local"  # one of ENGINES; "local": xgboost.train in process; "ray": Ray Train XGBoostTrainer
    seed: int = 7

    def __post_init__(self) -> None:
        # every value checked here, so `retrain --set` and the admin API refuse a bad one at once
        # instead of a training job failing minutes later
        check_choice("engine", self.engine, ENGINES)
        assign(self, "holdout", check_int("holdout", self.holdout, ge=1))
        assign(self, "min_interactions", check_int("min_interactions", self.min_interactions))
        if self.min_interactions < self.holdout:
            raise fail("min_interactions", f"an integer >= holdout ({self.holdout})", self.min_interactions)
        assign(self, "rounds", check_int("rounds", self.rounds, ge=1))
        assign(self, "seed", check_int("seed", self.seed))
        assign(self, "depth", check_int_map("depth", self.depth, ge=0))
        check_mapping("params", self.params, "a dict of xgboost parameters")
        check_number("play_weight", self.play_weight, ge=0)
        check_number("completion_weight", self.completion_weight, ge=0)
