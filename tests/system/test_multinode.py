"""A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`): the Serve cluster
profile spreads its replicas across nodes, a worker node is killed under load, the homepage keeps
serving, the replicas come back on the remaining nodes, and no acknowledged event is lost.

The scenario runs in its own process (multinode_scenario.py): it needs a cluster of its own, and
a pytest session may already hold a ray.init. The short form (head + 1 worker) runs in
`make test`; the full one (head + 2 workers, more load) is marked slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIO = Path(__file__).with_name("multinode_scenario.py")
MIN_SUCCESS = 0.99  # of homepage requests while the node is removed and until the replicas are back


def run_scenario(tmp_path: Path, *, workers: int, readers: int, warmup_s: float, after_s: float,
                 timeout_s: float) -> dict:
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, str(SCENARIO), "--home", str(tmp_path / "home"), "--out", str(out),
         "--workers", str(workers), "--readers", str(readers), "--writers", "1",
         "--warmup-s", str(warmup_s), "--after-s", str(after_s)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert proc.returncode == 0, f"scenario failed (rc {proc.returncode}):\n{proc.stderr[-6000:]}"
    report = json.loads(out.read_text())
    print(json.dumps({"total_s": report["total_s"], "timeline_s": report["timeline_s"],
                      "homepage_during_removal": report["load"]["homepage"]["during_removal"],
                      "events": report["events"], "ray_train": report["ray_train"],
                      "replicas_before": report["before"]["replicas"],
                      "replicas_after": report["after"]["replicas"]}))  # shown with -s
    return report


def check_report(report: dict) -> None:
    head, removed = report["head_node"], report["removed_node"]
    before, after = report["before"], report["after"]

    # Ray Train on several nodes: the controller in the driver fits the local model, and its
    # worker keeps the runtime_env Ray Train gives it (another node's raylet may differ)
    fit = report["ray_train"]
    assert fit["alive_nodes"] >= 2 and fit["models_identical"], fit
    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in fit["worker_env_vars"], fit

    # spread: the replicas ran on more than one node, and the removed worker hosted some of them
    nodes_before = {node for nodes in before["replicas"].values() for node in nodes}
    assert len(nodes_before) >= 2, f"every replica on one node: {before['replicas']}"
    assert removed != head and sum(report["replicas_on_removed_node"].values()) >= 1, report

    # the memory of record stayed on the head, before and after
    assert before["actors"] == after["actors"] == report["actors_after"]
    assert set(before["actors"].values()) == {head}, before["actors"]

    # the replicas came back, each deployment at its minimum, none on the removed node
    for name, nodes in before["replicas"].items():
        assert len(after["replicas"].get(name, [])) >= 1, f"{name} has no replica after the removal"
    assert removed not in {node for nodes in after["replicas"].values() for node in nodes}

    # the homepage kept serving while the node went and the replicas came back
    during = report["load"]["homepage"]["during_removal"]
    assert during["requests"] >= 50, f"too few homepage requests during the removal to judge: {during}"
    assert during["success_rate"] >= MIN_SUCCESS, during

    # nothing acknowledged is lost (read back from the log on disk after the cluster stopped)
    events = report["events"]
    assert events["acknowledged"] >= 100, events
    assert events["missing_count"] == 0, events


@pytest.mark.timeout(400)
def test_a_worker_node_removed_under_load_loses_nothing_acknowledged(tmp_path):
    report = run_scenario(tmp_path, workers=1, readers=2, warmup_s=3.0, after_s=3.0, timeout_s=360)
    check_report(report)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_workers_one_removed_under_heavier_load(tmp_path):
    report = run_scenario(tmp_path, workers=2, readers=3, warmup_s=5.0, after_s=10.0, timeout_s=800)
    check_report(report)
    assert report["nodes"] == 3
    nodes_before = {node for nodes in report["before"]["replicas"].values() for node in nodes}
    assert len(nodes_before) == 3, report["before"]["replicas"]  # four replicas, spread over all three nodes
