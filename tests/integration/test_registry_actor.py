"""RegistryActor on the session's local Ray cluster: register/promote through Ray, a long-poll
watch that does not block writers, errors that keep their type, and state that survives the
actor being killed (restarted by Ray, or started again by name) because it lives on disk."""

from __future__ import annotations

import time

import pytest

from actors.registry import Registry, RegistryError, UnknownVersionError, start_registry

WINDOW = {"start": "2024-01-01T00:00:00+00:00", "end": "2024-02-01T00:00:00+00:00", "dataset": "mem"}


def register(ray, actor, payload: bytes, **kw):
    kw.setdefault("metrics", {"ndcg@10": 0.1})
    return ray.get(actor.register.remote(
        {"model.bin": payload}, data_window=WINDOW, feature_schema_hash="h", **kw
    ))


def test_register_promote_and_survive_kills(ray_cluster, tmp_path):
    ray = ray_cluster
    actor = start_registry(tmp_path, name="registry-test-kill")
    first = register(ray, actor, b"one", metrics={"ndcg@10": 0.12})
    second = register(ray, actor, b"two", parent=None, notes="retrain")
    assert (first.version, second.version) == ("v0001", "v0002")
    assert ray.get(actor.promote.remote("v0001", reason="bootstrap")).status == "promoted"
    assert ray.get(actor.promote.remote("v0002")).version == "v0002"
    assert ray.get(actor.read_artifact.remote("v0002", "model.bin")) == b"two"
    before = (ray.get(actor.list.remote()), ray.get(actor.history.remote()))

    pid = ray.get(actor.pid.remote())
    ray.kill(actor, no_restart=False)  # Ray restarts it; it rebuilds from disk
    # The kill lands asynchronously: a call right after it may still reach the old process.
    deadline = time.monotonic() + 60
    while ray.get(actor.pid.remote()) == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.get(actor.pid.remote()) != pid
    assert ray.get(actor.promoted_version.remote()) == "v0002"
    assert (ray.get(actor.list.remote()), ray.get(actor.history.remote())) == before

    ray.kill(actor, no_restart=True)
    again = start_registry(tmp_path, name="registry-test-kill")  # a fresh actor, same disk
    assert ray.get(again.promoted.remote()).version == "v0002"
    assert ray.get(again.rollback.remote(reason="canary failed")).version == "v0001"
    assert Registry(tmp_path, read_only=True).promoted_version() == "v0001"  # same truth outside Ray
    ray.kill(again, no_restart=True)


def test_watch_long_polls_without_blocking_writers(ray_cluster, tmp_path):
    ray = ray_cluster
    actor = start_registry(tmp_path, name="registry-test-watch")
    register(ray, actor, b"one")
    register(ray, actor, b"two")
    ray.get(actor.promote.remote(1))
    waiting = actor.watch.remote("v0001", timeout_s=30)
    ray.get(actor.promote.remote(2))  # would deadlock on a single-threaded actor
    assert ray.get(waiting, timeout=30) == "v0002"
    ray.kill(actor, no_restart=True)


def test_errors_keep_their_type_and_names_are_checked(ray_cluster, tmp_path):
    ray = ray_cluster
    actor = start_registry(tmp_path / "a", name="registry-test-errors")
    register(ray, actor, b"one")
    with pytest.raises(UnknownVersionError, match="v0009 is not in the registry"):
        ray.get(actor.promote.remote("v0009"))
    ray.get(actor.reject.remote("v0001", "below the gate"))
    with pytest.raises(RegistryError, match="rejected"):
        ray.get(actor.promote.remote("v0001"))
    with pytest.raises(RegistryError, match="no artifact files"):
        ray.get(actor.register.remote({}, metrics={}, data_window={}, feature_schema_hash="h"))
    with pytest.raises(RegistryError, match="already serves"):
        start_registry(tmp_path / "b", name="registry-test-errors")
    found = ray.get_actor("registry-test-errors", namespace="marquee")
    assert ray.get(found.root.remote()) == str((tmp_path / "a").resolve())
    ray.kill(actor, no_restart=True)
