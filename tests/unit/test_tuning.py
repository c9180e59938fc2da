"""The tuner picks by validation only, on cases whose answer is known; every model gets the
same stated budget."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.protocol import temporal_split, validation_split
from training.tuning import (
    CONFIGS_PER_MODEL,
    PIPELINE_DEPTH_SCALE,
    PIPELINE_MAX_DEPTH,
    PIPELINE_ROUNDS,
    ModelGrid,
    peer_grids,
    pipeline_configs,
    tune,
)


def toy_split():
    """Two evaluated members, 30 titles each in time order: test = their last 10, validation the
    10 before, training-for-validation the first 10."""
    rows = [(m, 30 * m + i, i) for m in (0, 1) for i in range(30)]
    m, t, ts = zip(*rows)
    return temporal_split(pa.table({"member_id": list(m), "title_id": list(t), "timestamp": list(ts)}))


class Favours:
    """Scores the titles at positions `offsets` of every member's 30 highest: a model whose
    quality on validation and on test is known in advance."""

    def __init__(self, offsets: range, n_titles: int = 60):
        self.offsets, self.n_titles = offsets, n_titles

    def fit(self, data):
        self.fitted_on_ = data.matrix.nnz
        return self

    def score(self, members):
        scores = np.zeros((len(members), self.n_titles))
        for row, member in enumerate(members):
            scores[row, [30 * int(member) + i for i in self.offsets]] = 1.0
        return scores


TEST_TITLES, VALIDATION_TITLES, TRAINING_TITLES = range(20, 30), range(10, 20), range(0, 10)


def test_tuner_picks_the_configuration_best_on_validation_not_on_test():
    split = toy_split()
    validation = validation_split(split)
    built = []

    def build(settings):
        built.append(settings)
        return Favours({"test": TEST_TITLES, "validation": VALIDATION_TITLES, "seen": TRAINING_TITLES}[settings["aim"]])

    grid = ModelGrid("toy", build, {"aim": "test"}, ({"aim": "test"}, {"aim": "validation"}, {"aim": "seen"}))
    tuned = tune(grid, validation)
    assert tuned.settings == {"aim": "validation"}
    by_aim = {t.settings["aim"]: t for t in tuned.trials}
    assert by_aim["validation"].ndcg_at_10 == pytest.approx(1.0)
    assert by_aim["validation"].recall_at_20 == pytest.approx(1.0)
    # the configuration aimed at the test titles fills the top 10 with them and scores nothing on
    # validation: the tuner never saw test
    assert by_aim["test"].ndcg_at_10 == 0.0
    assert by_aim["seen"].ndcg_at_10 < 1.0  # seen titles are masked; the rest tie
    assert built == list(grid.configs)  # each configuration fitted once


def test_tuner_fits_on_training_minus_validation():
    split = toy_split()
    validation = validation_split(split)
    models = []
    grid = ModelGrid("toy", lambda s: models.append(Favours(VALIDATION_TITLES)) or models[-1], {}, ({},))
    tune(grid, validation)
    assert models[0].fitted_on_ == 20 == split.train.nnz - 20  # 10 training rows per member, not 20


def test_ties_go_to_the_earlier_configuration():
    validation = validation_split(toy_split())
    grid = ModelGrid("toy", lambda s: Favours(VALIDATION_TITLES), {}, ({"n": 1}, {"n": 2}, {"n": 3}))
    assert tune(grid, validation).settings == {"n": 1}


def test_empty_grid_is_refused_by_name():
    with pytest.raises(ValueError, match="grid 'toy'"):
        ModelGrid("toy", lambda s: None, {}, ())


def test_every_tunable_model_gets_the_same_budget_and_its_default_is_tried():
    grids = peer_grids(seed=7)
    default_depth = {"sequence": 100, "recency_ease": 100, "embedding": 50, "trending": 20, "content": 20}
    for name, grid in grids.items():
        if name == "popularity":
            assert grid.configs == ({},)  # nothing to tune
            continue
        assert len(grid.configs) == CONFIGS_PER_MODEL, name
        assert len({repr(sorted(c.items())) for c in grid.configs}) == CONFIGS_PER_MODEL, name
        assert grid.defaults in grid.configs, name
    pipeline = pipeline_configs(default_depth)
    assert len(pipeline) == CONFIGS_PER_MODEL
    assert {"rounds": 100, "max_depth": 5, "depth": default_depth} in pipeline
    # a Latin square: every level of every axis three times
    for rounds in PIPELINE_ROUNDS:
        assert sum(c["rounds"] == rounds for c in pipeline) == 3
    for depth in PIPELINE_MAX_DEPTH:
        assert sum(c["max_depth"] == depth for c in pipeline) == 3
    for scale in PIPELINE_DEPTH_SCALE:
        expected = max(1, round(100 * scale))
        assert sum(c["depth"]["sequence"] == expected for c in pipeline) == 3


def test_seeded_models_are_built_with_the_seed():
    grids = peer_grids(seed=11)
    assert grids["als"].build(grids["als"].configs[0]).random_state == 11
    assert grids["bpr"].build(grids["bpr"].configs[0]).random_state == 11
