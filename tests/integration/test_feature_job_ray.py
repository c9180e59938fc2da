"""The Ray Data engine produces exactly the tables of the single-process engine (same partial and
combine functions, different execution), on a small multi-day dataset."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from feature_data import random_dataset
from features.definitions import ENTITIES
from training.features import features_as_of, read_manifest, run_feature_job


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    dataset, _ = random_dataset(tmp_path_factory.mktemp("ray_features") / "ds", n_events=3000,
                                n_members=60, n_titles=30, days=9, seed=11)
    return dataset


def _days(result):
    first, last = date.fromisoformat(result.as_of_first), date.fromisoformat(result.as_of_last)
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@pytest.mark.parametrize("num_blocks", [None, 3])
def test_ray_engine_matches_arrow_engine(ray_cluster, small_dataset, tmp_path, num_blocks):
    arrow = run_feature_job(small_dataset, tmp_path / "arrow", engine="arrow")
    ray_result = run_feature_job(small_dataset, tmp_path / "ray", engine="ray", num_blocks=num_blocks)
    assert ray_cluster.is_initialized(), "the job must not shut down a cluster it did not start"
    assert (ray_result.events, ray_result.snapshots, ray_result.rows) == (arrow.events, arrow.snapshots, arrow.rows)
    assert read_manifest(tmp_path / "ray")["engine"] == "ray"
    assert "partial" in ray_result.stages and "ray_init" in ray_result.stages
    for day in _days(arrow):
        for entity in ENTITIES:
            expected = features_as_of(tmp_path / "arrow", entity, day)
            got = features_as_of(tmp_path / "ray", entity, day)
            assert got.equals(expected), f"{entity} at {day} differs between engines"
