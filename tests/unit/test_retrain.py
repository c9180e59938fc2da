"""Retraining: a first candidate is promoted, a deliberately worse one is refused by the gate,
and a failing step leaves the serving version untouched (plain engine; no Ray needed)."""

from __future__ import annotations

import pytest

from actors.registry import Registry
from marquee.home import Paths
from producers.world.generate import generate_world
from training.retrain import RetrainError, retrain


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(members=500, titles=200, days=30, seed=11, out=out)  # ~27 members evaluated
    return f"world:{out}"


def test_promote_then_refuse_a_worse_candidate(world, tmp_path):
    paths = Paths(tmp_path / "home")
    fast = {"rounds": 40}
    first = retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                    config_overrides=fast)
    assert first.promoted and first.serving_before is None and first.serving_after == first.candidate
    assert 0.0 < first.metrics["ndcg@10"] <= 1.0
    registry = Registry(paths.registry)
    manifest = registry.get(first.candidate)
    assert manifest.metrics["config"]["rounds"] == 40 and manifest.feature_schema_hash
    assert (registry.artifact_path(first.candidate, "ranker_play.json")).stat().st_size > 0

    worse = retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                    config_overrides={"rounds": 1, "depth": {"trending": 10}})
    assert not worse.promoted
    assert worse.gate["passed"] is False and "< serving" in worse.gate["reason"]
    assert worse.gate["serving_ndcg@10"] > worse.gate["candidate_ndcg@10"]
    assert registry.promoted_version() == first.candidate
    assert registry.get(worse.candidate).status == "rejected"


def test_a_failed_step_leaves_serving_untouched(world, tmp_path):
    paths = Paths(tmp_path / "home")
    first = retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                    config_overrides={"rounds": 20})
    with pytest.raises(RetrainError, match="step 'train' failed.*left untouched"):
        retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                config_overrides={"holdout": 0})  # invalid config: fails inside the train step
    registry = Registry(paths.registry)
    assert registry.promoted_version() == first.candidate
    assert [v.version for v in registry.list()] == [first.candidate]  # nothing half-registered


def test_the_ranker_reads_the_offline_feature_store(world, tmp_path):
    """With the feature step on, the ranker's features include the store's member and title
    features (joined as of each member's now), and the version records which store it read."""
    import pickle

    paths = Paths(tmp_path / "home")
    report = retrain(world, paths=paths, engine="local", run_features=True, progress=False,
                     config_overrides={"rounds": 20})
    assert report.features_version
    registry = Registry(paths.registry)
    model = pickle.loads(registry.read_artifact(report.candidate, "pipeline.pkl"))
    store_columns = [n for n in model.feature_names_ if n.startswith("store_")]
    assert "store_genre_match" in store_columns and "store_member_cold_start" in store_columns
    assert registry.get(report.candidate).data_window["features_version"] == report.features_version
