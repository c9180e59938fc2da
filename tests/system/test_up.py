"""`marquee up` from nothing, as a user runs it: world, features, actors, a first model and the
homepage app on the chosen port; live events flow through the event log into member state;
Ctrl-C stops everything; a restart reuses the cache; a retrain job hot-swaps the served model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from ops.local.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
MARQUEE = [sys.executable, "-m", "ops.cli"]

PROBE = r"""
import json, os, sys, time
from pathlib import Path
from marquee.home import LocalCluster, use_cluster_auth
home = Path(os.environ["MARQUEE_HOME"])
use_cluster_auth(home)
import ray
ray.init(address=LocalCluster.load(home).gcs_address, namespace="marquee", logging_level="ERROR")
from actors.events import append_with_retry
log = ray.get_actor("marquee-event-log")
state = ray.get_actor("marquee-member-state")
events_before = ray.get(log.stats.remote())["events"]
# every homepage served adds its decision record: count them among the live (latest) rows
tail = ray.get(log.read.remote(max(-1, events_before - 10_001), 100_000))
decisions_before = tail.column("type").to_pylist().count("decision")
result = append_with_retry(log, [
    {"event_id": "probe-1", "member_id": 5, "title_id": 77, "type": "my_list_add",
     "timestamp": "2026-02-01T20:00:00Z", "device": "tv", "country": "US"},
    {"event_id": "probe-2", "member_id": 5, "type": "nonsense", "timestamp": 1},
])
deadline = time.time() + 20
while time.time() < deadline and 77 not in ray.get(state.get.remote(5)).my_list:
    time.sleep(0.2)
print(json.dumps({
    "events_before": events_before,
    "decisions_before": decisions_before,
    "accepted": result.accepted,
    "rejected": [r.reason for r in result.rejected],
    "my_list": ray.get(state.get.remote(5)).my_list,
}))
"""


def _env(home: Path) -> dict:
    return {**os.environ, "MARQUEE_HOME": str(home), "PYTHONPATH": str(ROOT)}


def _probe(home: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], env=_env(home), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _markers(home: Path) -> list[str]:
    """What every process of this home's cluster names: its temp dir; Serve's HAProxy its node."""
    cluster = json.loads((home / "cluster.json").read_text())
    return [cluster["temp_dir"], f"haproxy-serve/{(home / 'head_node_id').read_text().strip()}"]


def _processes(markers: list[str]) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if any(m in " ".join(p.info["cmdline"] or []) for m in markers)]


def _homepage(port: int, member: int) -> dict:
    response = httpx.get(f"http://127.0.0.1:{port}/v1/homepage", params={"member_id": member}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _homepage_requests_counted(home: Path, timeout_s: float = 45.0) -> float:
    """The node's Prometheus export (Ray's metrics agent) until it counts homepage requests.
    HAProxy's own request metrics are off (marquee/home.py SERVE_ENV), so these are the
    replicas' ingress metrics: the families must not vanish with it."""
    cluster = json.loads((home / "cluster.json").read_text())
    session = Path(cluster["temp_dir"]) / "session_latest"
    port = int(next(session.glob("metrics_export_port_*")).read_text().strip())
    deadline, last = time.monotonic() + timeout_s, ""
    while time.monotonic() < deadline:
        last = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        counted = [float(line.rsplit(" ", 1)[1]) for line in last.splitlines()
                   if line.startswith("ray_serve_num_http_requests_total{")
                   and 'application="marquee"' in line and 'route="/v1/homepage"' in line
                   and 'status_code="200"' in line]
        if counted:
            return sum(counted)
        time.sleep(1)
    raise AssertionError("no ray_serve_num_http_requests_total for /v1/homepage in the node's metrics: "
                         + "\n".join(line for line in last.splitlines() if "serve_num_http" in line)[:2000])


@pytest.mark.timeout(600)
def test_up_serves_the_system_and_ctrl_c_stops_it(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    proc = subprocess.Popen(MARQUEE + ["up", "--port", str(port)], env=_env(home), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C to stop" in line:
                break
        assert proc.poll() is None, "".join(lines)[-3000:]
        output = "".join(lines)
        assert "Marquee is up" in output and "Ray dashboard     http://127.0.0.1:" in output
        assert f"Homepage API      http://127.0.0.1:{port}/v1/homepage" in output
        page = _homepage(port, 5)
        assert page["model_versions"]["ranker"] == "v0001" and page["rows"] and not page["degraded"]
        markers = _markers(home)
        assert any("haproxy" in " ".join(p.info["cmdline"] or []) for p in _processes(markers))
        assert _homepage_requests_counted(home) >= 1  # by the replicas, in process

        probe = _probe(home)
        manifest = json.loads((home / "world" / "manifest.json").read_text())
        assert probe["decisions_before"] >= 1  # the page above was recorded
        # history is in the log (besides the decision records of the pages served)
        assert probe["events_before"] - probe["decisions_before"] == manifest["events"] > 100_000
        assert probe["accepted"] == 1
        assert probe["rejected"] and "type: expected one of" in probe["rejected"][0]
        assert 77 in probe["my_list"]  # the live event reached member state
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest[-2000:]
    assert "Stopping Marquee" in rest
    time.sleep(1)
    assert not _processes(markers)  # Serve's HAProxy included

    # A restart reuses the world, the features and the log: nothing is regenerated or lost.
    up = subprocess.run(MARQUEE + ["up", "--detach", "--port", str(port)], env=_env(home), cwd=ROOT,
                        capture_output=True, text=True, timeout=200)
    try:
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        assert "Generating the synthetic world" not in up.stdout
        assert "Running the feature job" not in up.stdout
        assert "Training the first model" not in up.stdout  # the promoted model is reused
        assert _homepage(port, 5)["model_versions"]["ranker"] == "v0001"
        again = _probe(home)
        # the live event survived (and the pages' records with it)
        assert again["events_before"] - again["decisions_before"] == probe["events_before"] - probe["decisions_before"] + 1
        assert again["accepted"] == 0  # replaying probe-1 is a duplicate, not a second event
        assert 77 in again["my_list"]

        # Retraining as a Ray job on this cluster, started through the admin API: the serving
        # actors and replicas hold CPU fractions, and the job must still schedule its Ray Train
        # worker, evaluate, and promote a version.
        assert httpx.post(f"http://127.0.0.1:{port}/v1/admin/retrain", timeout=30).status_code == 401
        token = (home / "admin_token").read_text().strip()
        started = httpx.post(f"http://127.0.0.1:{port}/v1/admin/retrain", timeout=60,
                             headers={"Authorization": f"Bearer {token}"},
                             json={"skip_features": True})  # same config as serving: the gate passes
        assert started.status_code == 202, started.text
        job = started.json()["job_id"]
        from state.registry import Registry

        registry = Registry(home / "registry", read_only=True)
        deadline = time.monotonic() + 400
        while registry.promoted_version() != "v0002" and time.monotonic() < deadline:
            time.sleep(2)
        assert registry.promoted_version() == "v0002", f"Ray job {job} did not promote v0002"
        deadline = time.monotonic() + 60  # the running app swaps to the new version by itself
        while _homepage(port, 5)["model_versions"]["ranker"] != "v0002" and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _homepage(port, 5)["model_versions"]["ranker"] == "v0002"
        markers = _markers(home)
    finally:
        down = subprocess.run(MARQUEE + ["down"], env=_env(home), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0 and "Stopped" in down.stdout
    assert not _processes(markers)
