"""Settings chosen on validation, never on test (DESIGN.md section 6).

Every model gets the same budget: `CONFIGS_PER_MODEL` configurations, stated here and echoed in
`marquee eval --json`, each fitted on the validation split's training part and scored against its
validation sets; the one with the best validation NDCG@10 wins (ties: the earlier in the grid).
The tuner is handed the validation split only, so it cannot read a test set. Popularity has no
setting to tune (one configuration); SASRec, minutes a fit here, gets a smaller grid, stated in
`SASREC_CONFIGS`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from models.peers import ALS, BPR, EASE, ItemKNN, Popularity, Recommender
from models.protocol import Split, evaluate

CONFIGS_PER_MODEL = 9
SELECTED_BY = "validation ndcg@10"


@dataclass(frozen=True)
class ModelGrid:
    """How to build one model from a settings dict, its defaults (used by --no-tune), and the
    configurations tried when tuning (each a full settings dict, reported as is)."""

    name: str
    build: Callable[[dict], Recommender]
    defaults: dict
    configs: tuple[dict, ...]

    def __post_init__(self) -> None:
        if not self.configs:
            raise ValueError(f"grid {self.name!r}: configs must not be empty")


@dataclass
class Trial:
    settings: dict
    ndcg_at_10: float
    recall_at_20: float
    fit_s: float

    def as_dict(self) -> dict:
        return {"settings": self.settings, "ndcg@10": round(self.ndcg_at_10, 5),
                "recall@20": round(self.recall_at_20, 5), "fit_s": round(self.fit_s, 2)}


@dataclass
class Tuned:
    settings: dict
    trials: list[Trial] = field(default_factory=list)

    @property
    def best(self) -> Trial:
        return next(t for t in self.trials if t.settings == self.settings)


def tune(grid: ModelGrid, validation: Split, *, title_genres: sp.csr_matrix | None = None,
         progress: Callable[[str], None] | None = None) -> Tuned:
    """Fit every configuration on `validation`'s training part, score its held-out sets, keep the
    best by NDCG@10 (the first of equals, so the choice is deterministic)."""
    say = progress or (lambda message: None)
    data = validation.train_data()
    trials = []
    for settings in grid.configs:
        started = time.perf_counter()
        model = grid.build(settings).fit(data)
        fit_s = time.perf_counter() - started
        metrics = evaluate(validation, model.score, title_genres=title_genres)
        trials.append(Trial(settings, metrics.ndcg_at_10, metrics.recall_at_20, fit_s))
        say(f"tune: {grid.name} {settings} validation ndcg@10={metrics.ndcg_at_10:.4f}")
    best = max(range(len(trials)), key=lambda i: (trials[i].ndcg_at_10, -i))
    return Tuned(trials[best].settings, trials)


def _product(**axes: list) -> tuple[dict, ...]:
    """Every combination of two axes, first axis outermost."""
    (a, values_a), (b, values_b) = axes.items()
    return tuple({a: x, b: y} for x in values_a for y in values_b)


def peer_grids(seed: int) -> dict[str, ModelGrid]:
    """The peers' grids; each includes the setting used before tuning existed (its default)."""
    return {
        "popularity": ModelGrid("popularity", lambda s: Popularity(), {}, ({},)),
        "itemknn": ModelGrid("itemknn", lambda s: ItemKNN(**s), {"k": 400, "shrink": 0.0},
                             _product(k=[100, 200, 400], shrink=[0.0, 10.0, 50.0])),
        "als": ModelGrid("als", lambda s: ALS(**s, random_state=seed),
                         {"factors": 64, "regularization": 0.05},
                         _product(factors=[32, 64, 128], regularization=[0.01, 0.05, 0.2])),
        "bpr": ModelGrid("bpr", lambda s: BPR(**s, random_state=seed),
                         {"factors": 100, "learning_rate": 0.01},
                         _product(factors=[50, 100, 200], learning_rate=[0.005, 0.01, 0.05])),
        "ease": ModelGrid("ease", lambda s: EASE(**s), {"l2": 500.0},
                          tuple({"l2": v} for v in [50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0,
                                                    1500.0, 2500.0])),
    }


PIPELINE_ROUNDS = (50, 100, 200)
PIPELINE_MAX_DEPTH = (4, 5, 6)
PIPELINE_DEPTH_SCALE = (0.5, 1.0, 2.0)  # every source's candidate depth times this


def pipeline_configs(default_depth: dict[str, int]) -> tuple[dict, ...]:
    """Nine of the 27 (rounds x max_depth x source-depth scale) combinations as a Latin square:
    every level of each axis appears three times, and the default (100 rounds, depth 5, the
    default source depths) is one of the nine."""
    configs = []
    for i, rounds in enumerate(PIPELINE_ROUNDS):
        for j, max_depth in enumerate(PIPELINE_MAX_DEPTH):
            scale = PIPELINE_DEPTH_SCALE[(i + j + 2) % 3]
            depth = {name: max(1, int(round(d * scale))) for name, d in default_depth.items()}
            configs.append({"rounds": rounds, "max_depth": max_depth, "depth": depth})
    return tuple(configs)


def pipeline_grid(build: Callable[[dict], Recommender], defaults: dict) -> ModelGrid:
    """`build(settings)` makes a Pipeline from {rounds, max_depth, depth}; `defaults` are today's."""
    return ModelGrid("pipeline", build, defaults, pipeline_configs(defaults["depth"]))


# SASRec is the slow one: 1.5-4 minutes a fit of 30 epochs on ml-100k here, so three
# configurations instead of nine, said so in the report: the number of epochs (30 or 60) and the
# model size (64 factors over the last 50 titles, or 128 over the last 100) chosen on validation.
SASREC_CONFIGS = (
    {"n_factors": 64, "epochs": 30, "session_max_len": 50},
    {"n_factors": 64, "epochs": 60, "session_max_len": 50},
    {"n_factors": 128, "epochs": 30, "session_max_len": 100},
)


def sasrec_grid(build: Callable[[dict], Recommender]) -> ModelGrid:
    return ModelGrid("sasrec", build, dict(SASREC_CONFIGS[0]), SASREC_CONFIGS)


def budget_of(grids: dict[str, ModelGrid]) -> dict[str, int]:
    return {name: len(grid.configs) for name, grid in grids.items()}

