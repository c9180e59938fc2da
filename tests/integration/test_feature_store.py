"""The online FeatureStore on real actors: publish, batched reads, cold starts, and a publish of
v2 while another thread reads: every read is entirely v1 or entirely v2."""

from __future__ import annotations

import threading

import pytest

from actors.features import ENTITIES, FeatureStore, actor_name
from feature_data import random_dataset
from training.features import features_as_of, read_manifest, run_feature_job


@pytest.fixture
def store(ray_cluster):
    store = FeatureStore.create(num_shards=2)
    yield store
    for entity in ENTITIES:
        for i in range(2):
            ray_cluster.kill(ray_cluster.get_actor(actor_name(entity, i), namespace="marquee"))


def _expected(features_dir, version):
    manifest = read_manifest(features_dir, version)
    table = features_as_of(features_dir, "member", manifest["as_of_last"], version=version)
    return {row["member_id"]: row["plays"] for row in table.to_pylist()}


def test_publish_read_and_swap_under_concurrent_reads(store, tmp_path):
    features = tmp_path / "features"
    ds1, _ = random_dataset(tmp_path / "ds1", n_events=1500, n_members=50, seed=1)
    ds2, _ = random_dataset(tmp_path / "ds2", n_events=3000, n_members=50, seed=2)
    v1 = run_feature_job(ds1, features, engine="arrow").version
    assert store.publish(features) == v1
    expected = {v1: _expected(features, v1)}
    keys = sorted(expected[v1])[:40] + [10_000]

    rows = store.get_many("member", keys)
    assert [r["member_id"] for r in rows] == keys
    assert [r["plays"] for r in rows[:-1]] == [expected[v1][k] for k in keys[:-1]]
    assert rows[-1]["cold_start"] is True and rows[-1]["plays"] == 0 and rows[-1]["version"] == v1
    assert FeatureStore.connect().get_many("title", [1])[0]["version"] == v1

    v2 = run_feature_job(ds2, features, engine="arrow").version
    expected[v2] = _expected(features, v2)
    assert any(expected[v1][k] != expected[v2][k] for k in keys[:-1])
    seen, problems, stop = [], [], threading.Event()

    def reader():
        reader_store = FeatureStore.connect()
        while not stop.is_set() or len(seen) < 3:
            result = reader_store.get_many("member", keys)
            versions = {r["version"] for r in result}
            if len(versions) != 1:
                problems.append(f"mixed versions {versions}")
                continue
            version = versions.pop()
            seen.append(version)
            if [r["plays"] for r in result[:-1]] != [expected[version][k] for k in keys[:-1]]:
                problems.append(f"values do not match {version}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):  # re-publish v1 and v2 alternately while the reader runs
            assert store.publish(features, version=v2) == v2
            assert store.publish(features, version=v1) == v1
        assert store.publish(features) == v2
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not problems, problems[:5]
    assert seen and set(seen) <= {v1, v2}
    assert {r["version"] for r in store.get_many("member", keys)} == {v2}
