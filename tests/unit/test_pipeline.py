"""The two-stage pipeline (candidate sources -> XGBoost ranker) on a small synthetic world with a
strong learnable signal; its inner split (`holdout_last`) by hand; its config's validation."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp

from models.peers import Popularity
from models.pipeline_config import PipelineConfig
from training.pipeline import Pipeline, holdout_last
from models.protocol import TrainData, evaluate, temporal_split
from models.retrieval import DAY_S, TitleContent

T0 = 1_700_000_000
CLUSTERS, PER_CLUSTER, MEMBERS = 4, 20, 80
N_TITLES = CLUSTERS * PER_CLUSTER


def sequential_habits(seed: int = 11) -> pa.Table:
    """Members in clusters; each walks its cluster's title sequence in order from a random
    start (one play every 2-12 hours), with 10% random plays. What comes next is learnable from
    sequences and co-occurrence; popularity is nearly flat."""
    rng = np.random.default_rng(seed)
    rows = []
    for member in range(MEMBERS):
        cluster = member % CLUSTERS
        start, length = rng.integers(PER_CLUSTER), rng.integers(24, 34)
        t = T0 + int(rng.integers(0, 5 * DAY_S))
        for step in range(length):
            if rng.random() < 0.1:
                title = int(rng.integers(N_TITLES))
            else:
                title = cluster * PER_CLUSTER + (start + step) % PER_CLUSTER
            rows.append((member, title, t, bool(rng.random() < 0.6)))
            t += int(rng.integers(2 * 3600, 12 * 3600))
    member, title, ts, strong = zip(*rows)
    return pa.table({"member_id": list(member), "title_id": list(title), "timestamp": list(ts),
                     "strong": list(strong)})


@pytest.fixture(scope="module")
def split():
    return temporal_split(sequential_habits())


@pytest.fixture(scope="module")
def fitted(split):
    return Pipeline(PipelineConfig(rounds=30)).fit(split.train_data())


def test_pipeline_beats_popularity_on_the_protocol(split, fitted):
    train = split.train_data()
    popularity = evaluate(split, Popularity().fit(train).score)
    pipeline = evaluate(split, fitted.score)
    assert pipeline.members == popularity.members > 0
    assert pipeline.ndcg_at_10 > 2 * popularity.ndcg_at_10, (pipeline, popularity)
    assert pipeline.recall_at_20 > popularity.recall_at_20


def test_pipeline_trained_both_objectives_on_the_inner_split(fitted):
    assert set(fitted.boosters_) == {"play", "completion"}
    assert fitted.training_["rows"] > 0 and fitted.training_["positives"] > 0
    assert "sequence_score" in fitted.feature_names_ and "content_score" not in fitted.feature_names_


def test_score_ranks_only_unseen_candidates_above_the_rest(split, fitted):
    members = split.test_members[:5]
    scores = fitted.score(members)
    assert scores.shape == (len(members), split.n_titles) and np.isfinite(scores).all()
    seen = split.train[members].toarray() > 0
    candidates = scores > -1e9
    assert not (candidates & seen).any()
    for row in range(len(members)):
        assert candidates[row].sum() > 0
        assert scores[row, candidates[row]].min() > scores[row, ~candidates[row]].max()


def test_refit_is_deterministic(split, fitted):
    again = Pipeline(PipelineConfig(rounds=30)).fit(split.train_data())
    members = split.test_members[:8]
    np.testing.assert_array_equal(again.score(members), fitted.score(members))


def test_content_adds_the_content_source(split):
    genres = sp.csr_matrix((np.ones(N_TITLES), (np.arange(N_TITLES), np.arange(N_TITLES) // PER_CLUSTER)),
                           shape=(N_TITLES, CLUSTERS))
    content = TitleContent(genres, np.full(N_TITLES, 2001.0), np.zeros(N_TITLES, dtype=int))
    pipeline = Pipeline(PipelineConfig(rounds=5), content).fit(split.train_data())
    assert {"content_score", "content_rank"} <= set(pipeline.feature_names_)


# ------------------------------------------------------------------ holdout_last by hand


def hand_made(strong=True) -> TrainData:
    # member 0: 6 rows (times deliberately out of order in the input); member 1: 4 rows;
    # member 2: 5 rows (exactly min_rows: not held out, "more than" is strict)
    rows = [
        (0, 10, 600, True), (0, 11, 100, False), (0, 12, 500, False), (0, 13, 200, True),
        (0, 14, 400, True), (0, 15, 300, False),
        (1, 20, 50, True), (1, 21, 60, True), (1, 22, 70, True), (1, 23, 80, True),
        (2, 30, 1, True), (2, 31, 2, True), (2, 32, 3, True), (2, 33, 4, True), (2, 34, 5, True),
    ]
    m, t, ts, s = zip(*rows)
    return TrainData.from_rows(m, t, ts, (3, 40), np.array(s) if strong else None)


def test_holdout_last_holds_out_the_latest_rows_of_members_with_more_than_min_rows():
    kept, labels, strong = holdout_last(hand_made(), holdout=2, min_rows=5)
    assert labels == {0: {10, 12}}  # member 0's latest two by time (600, 500)
    assert strong == {0: {10}}  # of those, the strong one
    assert sorted(kept.titles[kept.members == 0].tolist()) == [11, 13, 14, 15]
    assert kept.matrix[1].nnz == 4 and kept.matrix[2].nnz == 5  # untouched
    assert kept.last_ts.tolist() == [400, 80, 5]  # member 0's now moves back to its last kept row
    assert kept.matrix[0, 10] == 0 and kept.matrix[0, 12] == 0
    assert kept.strong[kept.members == 0].tolist() == [False, True, False, True]  # times 100..400


def test_holdout_last_with_lower_threshold_and_no_strong_flags():
    kept, labels, strong = holdout_last(hand_made(strong=False), holdout=3, min_rows=3)
    assert labels == {0: {10, 12, 14}, 1: {21, 22, 23}, 2: {32, 33, 34}}
    assert strong == {}
    assert kept.strong is None
    assert kept.matrix.nnz == 15 - 9


# ------------------------------------------------------------------ config validation


@pytest.mark.parametrize("kwargs, message", [
    ({"engine": "spark"}, "engine: expected 'local' or 'ray'"),
    ({"holdout": 0}, r"holdout: expected an integer >= 1, got 0"),
    ({"holdout": 5, "min_interactions": 4}, r"min_interactions: expected an integer >= holdout \(5\), got 4"),
    ({"depth": {}}, "depth: expected a non-empty mapping of name -> integer >= 0"),
    ({"depth": {"sequence": 10, "trending": -1}}, "depth: expected a non-empty mapping of name -> integer >= 0"),
    ({"depth": {"sequence": "ten"}}, "depth: expected a non-empty mapping of name -> integer >= 0"),
    ({"rounds": "abc"}, "rounds: expected an integer"),
    ({"rounds": 0}, r"rounds: expected an integer >= 1, got 0"),
    ({"rounds": 2.5}, "rounds: expected an integer"),
    ({"seed": True}, "seed: expected an integer"),
    ({"params": [1, 2]}, "params: expected a dict"),
    ({"play_weight": -1}, "play_weight: expected a finite number >= 0"),
    ({"completion_weight": float("nan")}, "completion_weight: expected a finite number >= 0"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PipelineConfig(**kwargs)


def test_config_defaults_are_valid():
    config = PipelineConfig()
    assert config.engine == "local" and config.holdout >= 1 and config.min_interactions >= config.holdout
