"""Retraining: a first candidate is promoted, a deliberately worse one is refused by the gate,
and a failing step leaves the serving version untouched (plain engine; no Ray needed, but whole
pipelines are fitted: too heavy for the unit tier's minute)."""

from __future__ import annotations

import pytest

from marquee.home import Paths
from models.bundle import BUNDLE_DIR, load_bundle, read_manifest
from state.registry import Registry
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
    assert registry.artifact_path(first.candidate, f"{BUNDLE_DIR}/boosters/play.ubj").stat().st_size > 0
    assert not any(name.endswith(".pkl") for name in manifest.files)  # a bundle, no pickle
    assert registry.catalog() == registry.dataset_of(first.candidate)  # the first promotion bound it

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
    with pytest.raises(RetrainError, match="(?s)step 'train' failed.*Unknown objective.*left untouched"):
        retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                config_overrides={"params": {"objective": "no-such:objective"}})  # xgboost refuses it mid-train
    with pytest.raises(ValueError, match="holdout: expected an integer >= 1, got 0"):
        retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                config_overrides={"holdout": 0})  # refused before any step runs
    registry = Registry(paths.registry)
    assert registry.promoted_version() == first.candidate
    assert [v.version for v in registry.list()] == [first.candidate]  # nothing half-registered


def test_the_ranker_reads_the_offline_feature_store(world, tmp_path):
    """With the feature step on, the ranker's features include the store's member and title
    features (joined as of each member's now), and the version records which store it read."""
    paths = Paths(tmp_path / "home")
    report = retrain(world, paths=paths, engine="local", run_features=True, progress=False,
                     config_overrides={"rounds": 20})
    assert report.features_version
    registry = Registry(paths.registry)
    bundle_dir = registry.artifact_path(report.candidate, f"{BUNDLE_DIR}/manifest.json").parent
    store_columns = [n for n in read_manifest(bundle_dir)["features"]["names"] if n.startswith("store_")]
    assert "store_genre_match" in store_columns and "store_member_cold_start" in store_columns
    assert registry.get(report.candidate).data_window["features_version"] == report.features_version
    assert load_bundle(bundle_dir).builder.snapshot is not None  # the store's features, frozen in


def test_a_dataset_of_another_catalog_is_refused_before_training(world, tmp_path):
    """The issue's bug: a home serving one catalog retrained on another must not train a model
    for promotion; the message names both catalogs."""
    other = tmp_path / "other"
    generate_world(members=200, titles=120, days=20, seed=5, out=other)
    paths = Paths(tmp_path / "home")
    first = retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                    config_overrides={"rounds": 10})
    registry = Registry(paths.registry)
    served = registry.catalog()
    with pytest.raises(RetrainError) as info:
        retrain(f"world:{other}", paths=paths, engine="local", run_features=False, progress=False)
    message = str(info.value)
    assert f"world:other (catalog fingerprint" in message and "120 titles" in message
    assert f"serves {served.name} (catalog fingerprint {served.fingerprint[:16]}" in message
    assert "Nothing was trained" in message
    assert registry.promoted_version() == first.candidate and registry.versions() == [first.candidate]


def test_the_report_carries_a_timeline_and_the_store_is_training_only(world, tmp_path):
    """`marquee retrain --json` prints seconds per step (train split into retrieval and ranker
    fit) and total_s; the store it builds records that it holds a split's training events only."""
    from features.offline_store import read_manifest as read_store_manifest

    paths = Paths(tmp_path / "home")
    report = retrain(world, paths=paths, engine="local", run_features=True, progress=False,
                     config_overrides={"rounds": 10})
    line = report.timeline
    assert set(line) == {"features", "train", "evaluate", "gate", "register", "promote"}
    assert {"retrieval", "ranker_fit", "retrieval_refit"} <= set(line["train"]["parts"])
    assert {"load_split", "feature_job"} <= set(line["features"]["parts"])
    assert report.total_s >= sum(step["seconds"] for step in line.values()) - 0.05
    assert report.cpu_s > 0
    manifest = read_store_manifest(paths.features / "training-only" / "w")
    assert manifest["events_source"]["kind"] == "training_only" and manifest["entities"] == ["member", "title"]
    assert manifest["events_source"]["removed_held_out"] > 0
    again = retrain(world, paths=paths, engine="local", run_features=False, progress=False,
                    config_overrides={"rounds": 10})
    assert again.features_version == report.features_version  # same split: the store is reused
    assert again.gate["refit"] is False  # same config as serving: no refit


def test_the_feature_job_runs_on_ray_data_only_where_it_pays(world, monkeypatch):
    """Below RAY_DATA_MIN_EVENTS the retrain's feature job runs in-process (and meanwhile Ray
    starts); at or above it, on Ray Data; the plain engine never uses Ray."""
    import training.retrain as module
    from marquee.dataset import load_dataset

    directory = world.split(":", 1)[1]
    events = load_dataset(directory).manifest["events"]
    assert module.feature_engine("ray", directory) == "arrow"
    assert module.feature_engine("local", directory) == "arrow"
    monkeypatch.setattr(module, "RAY_DATA_MIN_EVENTS", events)
    assert module.feature_engine("ray", directory) == "ray"
    assert module.feature_engine("local", directory) == "arrow"


def test_a_ray_start_that_fails_is_raised_on_the_retrains_thread(monkeypatch):
    import training.retrain as module

    def broken():
        raise OSError("no GCS")

    monkeypatch.setattr(module, "_start_ray", broken)
    starting = module.RayStart()
    starting.start()
    with pytest.raises(RetrainError, match="Ray did not start: no GCS"):
        starting.wait()
    starting.finish()  # nothing was started: nothing to shut down, the thread ends
    assert not starting._thread.is_alive()
