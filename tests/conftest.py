"""Shared fixtures. One local Ray cluster per test session (ray.init costs seconds here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from marquee.home import data_root


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that asks for it; shut down at session end."""
    import ray

    from training.ray_train_startup import cluster_environment

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.update(cluster_environment())  # as the retrain starts its Ray (the lean controller)
    if not ray.is_initialized():
        # 4 logical CPUs on this 2-core machine: the session's Serve app keeps ~1 CPU of replicas
        # alive while later tests still schedule Ray Train workers that ask for 2 whole CPUs.
        ray.init(
            num_cpus=4,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
            configure_logging=False,
        )
    raylets = _raylet_pids()
    yield ray
    ray.shutdown()
    _kill_leftover_workers(raylets)


def _raylet_pids() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.name() == "raylet"}


def _kill_leftover_workers(raylets: set[int], grace_s: float = 3.0) -> None:
    """Ray workers exit when their raylet goes; one seldom hangs after its core worker shut down
    (seen once in CI: a Ray Train controller outlived the session, re-parented to init). Kill any
    process of this session's raylets still alive after a grace period, so no run leaves one."""
    import time

    import psutil

    if not raylets:
        return
    wanted = {str(pid) for pid in raylets}
    deadline = time.monotonic() + grace_s
    while True:
        left = []
        for proc in psutil.process_iter(["pid"]):
            try:
                if proc.environ().get("RAY_RAYLET_PID") in wanted:
                    left.append(proc)
            except (psutil.Error, OSError):
                continue
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass


@pytest.fixture(scope="session")
def movielens_100k() -> Path:
    """Path to MovieLens 100K under MARQUEE_DATA; skips the test when it is absent."""
    path = data_root() / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {path} (set MARQUEE_DATA to the folder holding ml-100k/)")
    return path


@pytest.fixture(scope="session")
def serve_home(ray_cluster, tmp_path_factory):
    """A small world with features, the stateful actors and a promoted model, on the shared
    cluster: what `marquee up` prepares before it deploys the app."""
    from marquee.home import Paths
    from ops.local.up import prepare_system
    from producers.world.generate import generate_world

    paths = Paths(tmp_path_factory.mktemp("serve-home"))
    generate_world(members=300, titles=300, days=14, seed=5, out=paths.world)
    system = prepare_system(paths, paths.world, train_overrides={"rounds": 25})
    return paths, system


@pytest.fixture(scope="session")
def serve_app(serve_home):
    """The homepage app on Ray Serve (single-machine profile) on a free port, shared by the
    HTTP tests of the session."""
    from types import SimpleNamespace

    from ray import serve

    from deployments.app import deploy
    from deployments.service import admin_token
    from ops.local.ports import free_port

    paths, system = serve_home
    url = deploy({"home": str(paths.home), "profile": "single"}, free_port())
    wait_until_healthy(url)
    yield SimpleNamespace(url=url, paths=paths, system=system, token=admin_token(paths.home))
    serve.shutdown()


def wait_until_healthy(url: str, timeout_s: float = 120.0, path: str = "/healthz") -> dict:
    import json
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + path, timeout=5) as resp:
                body = json.loads(resp.read())
                if body.get("model", {}).get("version"):
                    return body
                last = body
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url}{path} not healthy after {timeout_s} s: {last}")
