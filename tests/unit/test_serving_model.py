"""Serving a registered pipeline from live histories: no train/serve skew.

A small random dataset goes through the real feature job (arrow engine), the pipeline fits with
the offline store linked, and the version is registered as a bundle; ServingModel then scores
histories given as plain lists, the way member state hands them over.
"""

from __future__ import annotations

import numpy as np
import pytest

from deployments.model import LiveMember, ModelLoadError, ServingModel
from feature_data import random_dataset
from models.bundle import registry_files, write_bundle
from state.registry import Registry
from training.evaluate import load_eval_data, title_content
from training.features import run_feature_job
from models.histories import Histories
from models.pipeline_config import PipelineConfig
from training.pipeline import Pipeline
from models.protocol import temporal_split
from models.ranker_features import SnapshotFeatures, StoreLink, store_features


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    dataset, _ = random_dataset(root / "ds", n_events=6000, n_members=30, n_titles=25, days=12, seed=3)
    result = run_feature_job(dataset, root / "features", engine="arrow")
    data = load_eval_data(f"world:{dataset}")
    split = temporal_split(data.interactions)
    link = StoreLink(str(root / "features"), split.member_ids, split.title_ids, result.version)
    config = PipelineConfig(rounds=8, depth={"sequence": 8, "recency_ease": 8, "embedding": 5, "trending": 3, "content": 3})
    pipeline = Pipeline(config, title_content(data.titles, split.title_ids), link).fit(split.train_data())
    bundle = pipeline.bundle(data.name, data.titles.column("title_id").to_numpy(), split.title_ids, split.member_ids)
    write_bundle(bundle, root / "bundle")
    registry = Registry(root / "registry")
    version = registry.register(registry_files(root / "bundle"), metrics={}, data_window={},
                                feature_schema_hash="test").version
    return registry, version, pipeline, split


def live_history(pipeline, member: int) -> tuple[list[int], list[int]]:
    """A training member's history as member state would give it: title ids, most recent first
    (each title once), and the same as indices."""
    data = pipeline.serving_.data
    rows = np.flatnonzero(data.members == member)[::-1]
    indices = list(dict.fromkeys(int(t) for t in data.titles[rows]))
    return indices, [int(pipeline.serving_.store.title_ids[i]) for i in indices]


def test_lists_and_training_rows_give_the_same_histories(served):
    _, _, pipeline, _ = served
    data = pipeline.serving_.data
    for member in range(5):
        offline = Histories.from_data(data, [member])
        rows = np.flatnonzero(data.members == member)[::-1]
        live = Histories.from_lists([[int(t) for t in data.titles[rows]]], offline.now, data.shape[1])
        for tau, floor in ((10.0, 0.3), (3.0, 0.0)):
            np.testing.assert_allclose(live.weighted(tau, floor).toarray(), offline.weighted(tau, floor).toarray())


def test_live_history_scores_equal_offline_scores_for_the_same_history(served):
    """Every play in order (repeats included), handed over as ids the way the gateway does, scores
    exactly like the training rows of that member."""
    registry, version, pipeline, _ = served
    model = ServingModel.load(registry.root, version)
    data = pipeline.serving_.data
    for member in (0, 3, 7):
        rows = np.flatnonzero(data.members == member)[::-1]
        ids = tuple(int(model.title_ids[t]) for t in data.titles[rows])
        batch = model.batch([LiveMember(member, ids)])
        for name in ("recency_ease", "sequence", "content"):
            offline = pipeline.serving_.sources[name].score(np.array([member]))
            np.testing.assert_allclose(model.score_source(name, batch.histories), offline, rtol=1e-9, atol=1e-12,
                                       err_msg=name)
        folded = model.score_source("embedding", batch.histories)[0]
        fitted = pipeline.serving_.sources["embedding"].score(np.array([member]))[0]
        assert np.corrcoef(folded, fitted)[0, 1] > 0.9  # fold-in solves the same ALS user step


def test_snapshot_features_equal_the_point_in_time_join(served):
    _, _, pipeline, split = served
    link = pipeline.serving_.store
    now = int(pipeline.serving_.data.timestamps.max())
    snapshot = SnapshotFeatures(link, now)
    rng = np.random.default_rng(0)
    members = np.concatenate([rng.choice(split.member_ids, 40), [10**9]])  # and one unknown member
    titles = rng.integers(0, len(link.title_ids), len(members))
    names, expected = store_features(link, members, titles, np.full(len(members), now))
    got_names, got = snapshot.features(members, titles, np.full(len(members), now))
    assert got_names == names
    for name, a, b in zip(names, expected, got):
        np.testing.assert_allclose(b, a, rtol=1e-6, err_msg=name)


def test_candidates_exclude_the_live_history_and_follow_a_new_play(served):
    registry, version, pipeline, _ = served
    model = ServingModel.load(registry.root, version)
    _, ids = live_history(pipeline, 2)
    before = model.batch([LiveMember(2, tuple(ids[1:]))])  # the latest play not yet applied
    after = model.batch([LiveMember(2, tuple(ids))])
    assert not np.allclose(model.score_source("recency_ease", before.histories),
                           model.score_source("recency_ease", after.histories))
    candidates = model.candidates(after, model.score_sources(after.histories))
    assert set(model.title_ids[candidates.titles].tolist()).isdisjoint(ids)
    assert list(candidates.names) == list(model.feature_names)
    scores = model.rank(candidates.features)
    assert scores.shape == (len(candidates.titles),) and np.isfinite(scores).all()


def test_a_failed_source_gives_missing_features_not_an_error(served):
    registry, version, _, _ = served
    model = ServingModel.load(registry.root, version)
    batch = model.batch([LiveMember(1, ())])
    scores = model.score_sources(batch.histories)
    scores["sequence"] = None
    candidates = model.candidates(batch, scores)
    column = list(candidates.names).index("sequence_score")
    assert np.isnan(candidates.features[:, column]).all()
    assert np.isfinite(model.rank(candidates.features)).all()


def test_ranking_equals_the_pipelines_boosters(served):
    registry, version, pipeline, _ = served
    import xgboost

    model = ServingModel.load(registry.root, version)
    batch = model.batch([LiveMember(4, tuple(live_history(pipeline, 4)[1]))])
    features = model.candidates(batch, model.score_sources(batch.histories)).features
    matrix = xgboost.DMatrix(features, feature_names=list(pipeline.feature_names_))
    expected = (pipeline.config.play_weight * pipeline.boosters_["play"].predict(matrix)
                + pipeline.config.completion_weight * pipeline.boosters_["completion"].predict(matrix))
    np.testing.assert_allclose(model.rank(features), expected, rtol=1e-6)


def test_unknown_member_and_unknown_titles_still_get_candidates(served):
    registry, version, _, _ = served
    model = ServingModel.load(registry.root, version)
    batch = model.batch([LiveMember(10**9, (999_999, 888_888))])  # titles the model never saw
    assert batch.histories.lengths().tolist() == [0]
    candidates = model.candidates(batch, model.score_sources(batch.histories))
    assert len(candidates.titles) > 0


def test_a_corrupt_version_fails_to_load_with_a_clear_error(served):
    registry, version, _, _ = served
    files = {name: registry.read_artifact(version, name) for name in registry.get(version).files}
    booster = "model/boosters/play.ubj"
    bad = registry.register({**files, booster: files[booster][:-7] + b"corrupt"}, metrics={}, data_window={},
                            feature_schema_hash="test").version
    with pytest.raises(ModelLoadError, match=f"{bad}.*boosters/play.ubj does not match its sha256"):
        ServingModel.load(registry.root, bad)


def test_a_version_of_the_previous_format_is_refused_and_says_retrain(served):
    """A pickle is never loaded: the message says the version must be retrained."""
    registry, _, _, _ = served
    old = registry.register({"pipeline.pkl": b"\x80\x04 a pickle", "title_ids.json": b"[1, 2]"}, metrics={},
                            data_window={}, feature_schema_hash="test").version
    with pytest.raises(ModelLoadError, match=rf"{old} was written in the previous format \(pipeline.pkl\).*retrain"):
        ServingModel.load(registry.root, old)
