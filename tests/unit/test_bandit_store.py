"""The policy store: versions round-trip exactly without pickle, numbers are assigned by the store,
LATEST moves only after a version is complete, and every corrupt or missing file is named."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from bandits.policies import Feedback, make_policy
from bandits.store import MANIFEST, POINTER, MemberThemeCounts, PolicyStore, PolicyStoreError

DIM = 6


def trained(name: str = "linucb", seed: int = 0, **params):
    rng = np.random.default_rng(seed)
    policy = make_policy(name, DIM, n_classes=4, **params)
    x = rng.normal(size=(50, DIM))
    policy.update(Feedback(x, rng.integers(0, 4, 50), (rng.random(50) < 0.3).astype(float)))
    return policy


def assert_same_state(a, b):
    sa, sb = a.to_state(), b.to_state()
    assert sa.keys() == sb.keys()
    for key in sa:
        if isinstance(sa[key], np.ndarray):
            np.testing.assert_array_equal(sa[key], sb[key])
        else:
            assert sa[key] == sb[key], key


@pytest.mark.parametrize("name, params", [("linucb", {"alpha": 0.5, "arm_model": "shared"}),
                                          ("linear_ts", {"scale": 0.3}), ("epsilon_greedy", {"epsilon": 0.2}),
                                          ("bernoulli_ts", {"prior_a": 2.0}), ("uniform", {})])
def test_every_policy_round_trips_exactly(tmp_path, name, params):
    store = PolicyStore(tmp_path / "bandit")
    policy = trained(name, **params)
    assert store.latest() is None and store.latest_version() is None
    assert store.publish(policy) == 1 and policy.version == 1
    version, loaded = store.latest()
    assert version == 1 and type(loaded) is type(policy)
    assert_same_state(loaded, policy)


def test_versions_are_numbered_by_the_store_and_latest_follows(tmp_path):
    store = PolicyStore(tmp_path)
    first, second = trained(seed=1), trained(seed=2)
    second.version = 40  # a learner's own count does not pick the number
    assert store.publish(first, metadata={"trials": 50}) == 1
    assert store.publish(second) == 2 and second.version == 2
    assert store.latest_version() == 2 and store.versions() == [1, 2]
    published = store.load(1)
    assert published.metadata == {"trials": 50} and published.member_counts is None
    assert_same_state(published.policy, first)
    manifest = json.loads((store.version_path(2) / MANIFEST).read_text())
    assert manifest["policy"] == "linucb" and manifest["dim"] == DIM and manifest["version"] == 2
    assert manifest["params"] == {"alpha": 1.0, "ridge": 1.0, "arm_model": "disjoint", "n_classes": 4}
    assert set(manifest["files"]) == {"design.npy", "response.npy"} and manifest["created_at"]


def test_member_counts_are_published_with_the_policy(tmp_path):
    store = PolicyStore(tmp_path)
    counts = MemberThemeCounts.from_dict({9: (np.arange(4.0), np.ones(4)), 3: (np.ones(4), np.zeros(4))}, 4)
    store.publish(trained(), member_counts=counts)
    got = store.load(1).member_counts
    assert list(got.member_ids) == [3, 9] and len(got) == 2
    np.testing.assert_array_equal(got.lookup(9)[0], np.arange(4.0))
    assert got.lookup(5) is None


def test_no_file_is_a_pickle(tmp_path):
    store = PolicyStore(tmp_path)
    store.publish(trained())
    for path in store.version_path(1).glob("*.npy"):
        np.load(path, allow_pickle=False)  # raises on an object array
    with pytest.raises(PolicyStoreError, match="neither an array nor a JSON scalar"):
        bad = trained()
        bad.arm_model = {"not": "scalar"}  # a parameter no manifest can hold
        store.publish(bad)


def test_a_corrupt_array_is_refused_naming_the_file(tmp_path):
    store = PolicyStore(tmp_path)
    store.publish(trained())
    target = store.version_path(1) / "design.npy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(PolicyStoreError, match=r"design\.npy: sha256 differs"):
        store.latest()


@pytest.mark.parametrize("damage, message", [
    (lambda v: (v / "response.npy").unlink(), r"response\.npy: missing"),
    (lambda v: (v / MANIFEST).unlink(), r"manifest\.json: missing"),
    (lambda v: (v / MANIFEST).write_text("{half"), r"manifest\.json: not valid JSON"),
    (lambda v: (v / MANIFEST).write_text('{"format": 7}'), r"manifest\.json: format 7"),
])
def test_missing_or_broken_files_are_named(tmp_path, damage, message):
    store = PolicyStore(tmp_path)
    store.publish(trained())
    damage(store.version_path(1))
    with pytest.raises(PolicyStoreError, match=message):
        store.latest()


def test_a_broken_pointer_is_named(tmp_path):
    store = PolicyStore(tmp_path)
    store.publish(trained())
    (tmp_path / POINTER).write_text("garbage")
    with pytest.raises(PolicyStoreError, match="LATEST: not a policy pointer"):
        store.latest_version()


def test_an_array_of_the_wrong_shape_is_refused(tmp_path):
    store = PolicyStore(tmp_path)
    store.publish(trained())
    version = store.version_path(1)
    np.save(version / "response.npy", np.zeros((2, 2)), allow_pickle=False)
    manifest = json.loads((version / MANIFEST).read_text())
    manifest["files"]["response.npy"] = hashlib.sha256((version / "response.npy").read_bytes()).hexdigest()
    (version / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PolicyStoreError, match="response: expected shape"):
        store.load(1)


def test_a_crash_mid_publish_leaves_latest_on_the_previous_complete_version(tmp_path, monkeypatch):
    store = PolicyStore(tmp_path)
    store.publish(trained(seed=1))
    real_rename = os.rename

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.publish(trained(seed=2))
    monkeypatch.setattr(os, "rename", real_rename)
    assert store.latest_version() == 1 and store.versions() == [1]
    assert not any((tmp_path / ".staging").glob("*"))
    assert store.publish(trained(seed=3)) == 2  # the number was never taken


def test_leftover_staging_of_a_dead_publisher_is_never_read_and_is_cleaned(tmp_path):
    store = PolicyStore(tmp_path)
    leftover = tmp_path / ".staging" / "v000001-dead"
    leftover.mkdir(parents=True)
    (leftover / MANIFEST).write_text("{half")
    assert store.latest() is None and store.versions() == []
    assert store.publish(trained()) == 1 and not leftover.exists()


def test_prune_keeps_the_newest_latest_and_protected(tmp_path):
    store = PolicyStore(tmp_path)
    for seed in range(6):
        store.publish(trained(seed=seed))
    assert store.prune(keep=2, protect=[2]) == [1, 3, 4]
    assert store.versions() == [2, 5, 6] and store.latest_version() == 6
    assert store.publish(trained()) == 7
    with pytest.raises(ValueError, match="keep"):
        store.prune(keep=0)


def test_member_counts_are_validated():
    with pytest.raises(ValueError, match="plays"):
        MemberThemeCounts(np.array([1, 2]), np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="ascending"):
        MemberThemeCounts(np.array([2, 1]), np.zeros((2, 3)), np.zeros((2, 3)))
