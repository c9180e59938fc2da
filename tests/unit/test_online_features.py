"""Online feature store without Ray: FeatureShard versions and cold starts, stable routing, the
client's batching, ordering and never-mixed versions (fake shards injected through a factory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from actors.features import (
    FeatureShard,
    FeatureStore,
    FeatureStoreError,
    StaleVersionError,
    cowatch_rows,
    shard_of,
)
from feature_data import members_table, ms, titles_table, write
from training.features import features_as_of, run_feature_job


def member_table(ids, plays):
    return pa.table({"member_id": pa.array(ids, pa.int64()), "plays": pa.array(plays, pa.int64()),
                     "genre_affinity": [[0.5, 0.5]] * len(ids)})


DEFAULTS = {"plays": 0, "genre_affinity": [0.0, 0.0]}


def test_shard_serves_committed_version_only():
    shard = FeatureShard("member")
    shard.stage("v1", member_table([3, 1, 2], [30, 10, 20]), DEFAULTS)
    version, rows = shard.read([1, 2])
    assert version is None and all(r["cold_start"] for r in rows)  # staged is not served
    shard.commit("v1")
    rows = shard.get_many([2, 9, 1])
    assert [r["plays"] for r in rows] == [20, 0, 10]
    assert [r["cold_start"] for r in rows] == [False, True, False]
    assert rows[1] == {"member_id": 9, "plays": 0, "genre_affinity": [0.0, 0.0], "cold_start": True}
    rows[1]["genre_affinity"].append(1.0)  # callers may mutate rows; defaults stay intact
    assert shard.get_many([9])[0]["genre_affinity"] == [0.0, 0.0]


def test_shard_keeps_previous_until_next_commit():
    shard = FeatureShard("member")
    shard.stage("v1", member_table([1], [1]), DEFAULTS)
    shard.commit("v1")
    shard.stage("v2", member_table([1], [2]), DEFAULTS)
    assert shard.get_many([1], version="v2")[0]["plays"] == 2  # staged readable when pinned
    shard.commit("v2")
    assert shard.get_many([1])[0]["plays"] == 2
    assert shard.get_many([1], version="v1")[0]["plays"] == 1  # in-flight readers finish on v1
    shard.stage("v3", member_table([1], [3]), DEFAULTS)
    shard.commit("v3")
    with pytest.raises(StaleVersionError, match="v1"):
        shard.get_many([1], version="v1")
    assert shard.versions() == {"current": "v3", "previous": "v2", "staged": []}


def test_shard_errors():
    with pytest.raises(FeatureStoreError, match="unknown entity"):
        FeatureShard("artwork")
    shard = FeatureShard("title")
    with pytest.raises(FeatureStoreError, match="never staged"):
        shard.commit("v9")
    with pytest.raises(FeatureStoreError, match="key column"):
        shard.stage("v1", member_table([1], [1]))
    with pytest.raises(FeatureStoreError, match="duplicate"):
        FeatureShard("member").stage("v1", member_table([1, 1], [1, 2]))


def test_shard_of_is_stable_and_balanced():
    keys = np.arange(10_000)
    routes = shard_of(keys, 4)
    assert np.bincount(routes, minlength=4).min() > 2_200
    # the same answer in another process with another hash seed (Python's hash() would differ)
    code = "import numpy as np; from actors.features import shard_of; print(shard_of(np.arange(50), 3).tolist())"
    root = str(Path(__file__).resolve().parents[2])
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PYTHONPATH": root}, cwd=root)
    assert other.stdout.strip() == str(shard_of(np.arange(50), 3).tolist())
    assert shard_of(pa.array([5, 6, 7]), 2).tolist() == shard_of([5, 6, 7], 2).tolist()
    with pytest.raises(TypeError):
        shard_of(["a"], 2)
    with pytest.raises(ValueError):
        shard_of([1], 0)


class CountingShard(FeatureShard):
    def __init__(self, entity):
        super().__init__(entity)
        self.reads = []

    def read(self, keys, version=None):
        self.reads.append(list(keys))
        return super().read(keys, version)


def test_store_batches_one_call_per_shard_and_keeps_order():
    store = FeatureStore.from_factory(lambda entity, i: CountingShard(entity), num_shards=3)
    table = member_table(list(range(100)), [k * 10 for k in range(100)])
    route = shard_of(table.column("member_id"), 3)
    for i, shard in enumerate(store.shards["member"]):
        shard.stage("v1", table.filter(pa.array(route == i)), DEFAULTS)
        shard.commit("v1")
    keys = [57, 3, 999, 12, 3, 88]
    rows = store.get_many("member", keys)
    assert [r["member_id"] for r in rows] == keys
    assert [r["plays"] for r in rows] == [570, 30, 0, 120, 30, 880]
    assert [r["cold_start"] for r in rows] == [False, False, True, False, False, False]
    assert {r["version"] for r in rows} == {"v1"}
    calls = [len(s.reads) for s in store.shards["member"]]
    assert calls == [1 if (shard_of(keys, 3) == i).any() else 0 for i in range(3)]
    for i, shard in enumerate(store.shards["member"]):  # each shard only saw its own keys
        assert all(shard_of(batch, 3).tolist() == [i] * len(batch) for batch in shard.reads)
    with pytest.raises(FeatureStoreError, match="unknown entity"):
        store.get_many("artwork", [1])


def test_store_never_mixes_versions_mid_publish():
    store = FeatureStore.local(num_shards=2)
    keys = list(range(40))
    v1, v2 = member_table(keys, [1] * 40), member_table(keys, [2] * 40)
    shards = store.shards["member"]
    route = shard_of(np.array(keys), 2)
    for version, table in (("v1", v1), ("v2", v2)):
        for i, shard in enumerate(shards):
            shard.stage(version, table.filter(pa.array(route == i)), DEFAULTS)
    for shard in shards:
        shard.commit("v1")
    shards[0].commit("v2")  # publish of v2 caught between its commits
    rows = store.get_many("member", keys)
    assert {(r["version"], r["plays"]) for r in rows} == {("v2", 2)}


def test_publish_from_offline_store(tmp_path):
    genres = {1: ["Action"], 2: ["Drama"], 3: ["Drama"]}
    events = [
        {"member_id": 1, "title_id": 1, "type": "play", "timestamp": ms("2026-01-01"), "device": "tv"},
        {"member_id": 1, "title_id": 2, "type": "play", "timestamp": ms("2026-01-02"), "device": "tv"},
        {"member_id": 2, "title_id": 2, "type": "play", "timestamp": ms("2026-01-02"), "device": "web"},
        {"member_id": 2, "title_id": 1, "type": "play", "timestamp": ms("2026-01-02"), "device": "web"},
    ]
    dataset = write(tmp_path / "ds", titles_table(genres), members_table({1: "US", 2: "FR"}), events)
    result = run_feature_job(dataset, tmp_path / "f", engine="arrow")
    store = FeatureStore.local()
    assert store.publish(tmp_path / "f") == result.version
    members = store.get_many("member", [2, 1, 404])
    latest = {r["member_id"]: r for r in features_as_of(tmp_path / "f", "member", result.as_of_last).to_pylist()}
    for row in members[:2]:
        expected = dict(latest[row["member_id"]], cold_start=False, version=result.version)
        assert row == expected
    assert members[2]["cold_start"] and members[2]["plays"] == 0 and members[2]["genre_affinity"] == [0.0, 0.0]
    titles = store.get_many("title", [3, 77])
    assert titles[0]["cold_start"] is False and titles[0]["plays"] == 0
    assert titles[1]["cold_start"] is True and titles[1]["plays_7d_by_country"] == [0, 0]
    cowatch = store.get_many("cowatch", [1, 3])
    assert cowatch[0]["neighbours"] == [{"title_id": 2, "count": 2, "score": pytest.approx(1.0)}]
    assert cowatch[1] == {"title_id": 3, "neighbours": [], "cold_start": True, "version": result.version}


def test_cowatch_rows_groups_ranked_neighbours():
    pairs = pa.table({"title_id": pa.array([5, 5, 6], pa.int64()), "other_title_id": pa.array([7, 6, 5], pa.int64()),
                      "count": pa.array([1, 3, 3], pa.int32()), "score": pa.array([0.1, 0.9, 0.9], pa.float32()),
                      "rank": pa.array([2, 1, 1], pa.int16())})
    rows = cowatch_rows(pairs).to_pylist()
    assert [r["title_id"] for r in rows] == [5, 6]
    assert [n["title_id"] for n in rows[0]["neighbours"]] == [6, 7]
    assert cowatch_rows(pairs.slice(0, 0)).num_rows == 0
