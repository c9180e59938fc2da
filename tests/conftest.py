"""Shared fixtures. One local Ray cluster per test session (ray.init costs seconds here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from marquee.config import data_root


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster shared by every test that asks for it; shut down at session end."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
            configure_logging=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def movielens_100k() -> Path:
    """Path to MovieLens 100K under MARQUEE_DATA; skips the test when it is absent."""
    path = data_root() / "ml-100k"
    if not (path / "u.data").exists():
        pytest.skip(f"MovieLens 100K not found at {path} (set MARQUEE_DATA to the folder holding ml-100k/)")
    return path
