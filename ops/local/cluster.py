"""A local Ray head started for one Marquee home, and stopped without touching anyone else's.

`ray stop` kills every Ray process on the machine; on a shared machine that is never acceptable.
So the head runs as `ray start --head --block` in its own process group with its own temp dir and
free ports, its pid and addresses are recorded in HOME/cluster.json, and stopping means signalling
that process group only.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from marquee.home import SERVE_ENV, ClusterError, LocalCluster, Paths, auth_env
from ops.local.ports import free_ports
from training.ray_train_startup import cluster_environment


# Every port Ray would otherwise take by default (52365 for the job agent, 10001 for the client
# server...) is picked free: another cluster on this machine may hold the defaults.
EXTRA_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
               "metrics-export-port", "ray-client-server-port", "node-manager-port", "object-manager-port")


def _temp_dir(home: Path) -> str:
    # Unix socket paths are limited to ~107 bytes, so keep Ray's temp dir short.
    digest = hashlib.sha1(str(home.resolve()).encode()).hexdigest()[:8]
    return f"/tmp/marquee-{digest}"


def start_head(home: Path, *, num_cpus: int | None = None, timeout_s: float = 60.0) -> LocalCluster:
    """Start a Ray head for `home` (or return the running one) and wait until it accepts clients."""
    existing = LocalCluster.load(home)
    if existing and existing.alive():
        return existing
    ray_bin = Path(sys.executable).with_name("ray")
    gcs_port, dashboard_port, stats_port, metrics_port, *more_ports = free_ports(4 + len(EXTRA_PORTS))
    temp_dir = _temp_dir(home)
    cmd = [
        str(ray_bin), "start", "--head", "--block", "--disable-usage-stats",
        f"--port={gcs_port}", f"--dashboard-port={dashboard_port}", "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp_dir}", f"--num-cpus={num_cpus or os.cpu_count() or 2}",
        *(f"--{name}={port}" for name, port in zip(EXTRA_PORTS, more_ports)),
    ]
    home.mkdir(parents=True, exist_ok=True)
    log = open(Paths(home).head_log, "ab")
    # Serve's throughput profile and its HAProxy ingress (measured: 69 -> 128 pages/s at 8
    # clients); HAProxy's stats and metrics ports default to fixed ones: pick free ones.
    env = {**SERVE_ENV, **cluster_environment(), "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
           "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port), **os.environ, **auth_env(home)}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    cluster = LocalCluster(
        pid=proc.pid, gcs_address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dashboard_port}", temp_dir=temp_dir, home=str(home),
    )
    cluster.save()
    _wait_for_gcs(cluster, proc, timeout_s)
    return cluster


def _wait_for_gcs(cluster: LocalCluster, proc: subprocess.Popen, timeout_s: float) -> None:
    import socket

    host, port = cluster.gcs_address.split(":")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(
                f"ray start exited with code {proc.returncode}; see {cluster.home}/ray-head.log")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    stop_head(Path(cluster.home))
    raise ClusterError(f"Ray head did not accept connections within {timeout_s:.0f} s")


def stop_head(home: Path, timeout_s: float = 8.0) -> bool:
    """Stop the head started for `home` (its process group only). Returns False if none ran."""
    cluster = LocalCluster.load(home)
    if cluster is None:
        return False
    was_alive = cluster.alive()
    if was_alive:
        try:
            os.killpg(cluster.pid, signal.SIGINT)  # `ray start --block` cleans up on Ctrl-C
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout_s
        while cluster.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        if cluster.alive():
            os.killpg(cluster.pid, signal.SIGKILL)
    markers = [cluster.temp_dir]
    node_file = Paths(Path(home)).head_node_id
    if node_file.exists():  # Serve's HAProxy outlives the head: it names the node's id instead
        markers.append(f"haproxy-serve/{node_file.read_text().strip()}")
    _kill_leftovers(*markers)
    node_file.unlink(missing_ok=True)
    cluster.state_file.unlink(missing_ok=True)
    return was_alive


def record_head_node(home: Path, node_id: str) -> None:
    """Remember the head's node id, so stop_head can find what Serve started outside Ray's tree."""
    (Paths(Path(home)).head_node_id).write_text(node_id)


def _kill_leftovers(*markers: str, timeout_s: float = 10.0) -> None:
    """Ray daemons that outlived `ray start --block` still name our temp dir (or, for Serve's
    HAProxy, our node id) on their command line. Scanned until none is left: a process can be
    born during a scan (HAProxy starts a new process on every reload), and a killed one is
    waited for, so `marquee down` returns only once they are gone."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if any(marker in cmdline for marker in markers) and proc.pid != os.getpid():
                found.append(proc)
        if not found or time.monotonic() > deadline:
            return
        for proc in found:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(found, timeout=1.0)
        time.sleep(0.2)  # then look again: a reload may have started another
