"""Retraining on the shared Ray cluster: Ray Data features, Ray Train ranker, gate, registry.
Short form on a small world; the full run on MovieLens 100K is marked slow."""

from __future__ import annotations

import subprocess
import sys
import json
import os
from pathlib import Path

import pytest

from state.registry import Registry
from marquee.home import Paths
from producers.world.generate import generate_world
from training.retrain import retrain

ROOT = Path(__file__).resolve().parents[2]


def test_retrain_on_ray_promotes_an_evaluated_version(ray_cluster, tmp_path):
    world = tmp_path / "world"
    generate_world(members=500, titles=200, days=30, seed=11, out=world)
    paths = Paths(tmp_path / "home")
    report = retrain(f"world:{world}", paths=paths, engine="ray", progress=False,
                     config_overrides={"rounds": 30})
    assert report.promoted and report.features_version
    assert (paths.features / "training-only" / "world" / report.features_version / "manifest.json").exists()
    version = Registry(paths.registry).promoted()
    assert version.version == report.candidate
    assert version.metrics["ndcg@10"] == report.metrics["ndcg@10"] > 0
    assert version.data_window["features_version"] == report.features_version


@pytest.mark.slow
@pytest.mark.movielens
def test_marquee_retrain_on_movielens_end_to_end(movielens_100k, tmp_path):
    """The command a user runs: a fresh home, Ray started by the job itself, a promoted version
    whose evaluation beats EASE's protocol figure (0.1445) by at least 10%."""
    env = {**os.environ, "MARQUEE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "ops.cli", "retrain", "--dataset",
                          f"movielens:{movielens_100k}", "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["promoted"] and report["serving_after"] == report["candidate"] == "v0001"
    assert report["metrics"]["ndcg@10"] >= 1.10 * 0.1445
    assert set(report["seconds"]) == {"features", "train", "evaluate", "gate", "register", "promote"}
