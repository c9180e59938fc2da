"""A multi-node Ray cluster on one machine, the Serve cluster profile on it, and a worker node
removed under load. Prints one JSON report; tests/system/test_multinode.py judges it.

    python tests/system/multinode_scenario.py --workers 2 --home /tmp/x/home --out report.json

Steps: prepare a small home in this process (world, arrow features, a model trained locally: no
Ray needed, ~4 s), start `ray.cluster_utils.Cluster` (a head and N worker nodes, logical CPUs),
fit a small XGBoost model through Ray Train on it (its controller in this driver, which joined the
cluster: the several-node path), start the stateful actors on it (ops.local.up.prepare_system), deploy the cluster profile
(deployments.app.deploy), record where every replica and actor runs, start closed-loop readers
and writers (multinode_load.py, its own process), kill the worker node that hosts the most
replicas, wait until Serve has replaced them on the remaining nodes, keep the load a few seconds
more, and finally read every event id back from the event log.

Runs in its own process on purpose: a pytest session may already hold a ray.init of its own.
RAY_TMPDIR is private to the run, so nobody's `ray.init()` finds this cluster by accident.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from marquee.home import SERVE_ENV, Paths  # noqa: E402
from marquee.names import APP_NAME, EVENT_LOG_ACTOR, MEMBER_STATE_ACTOR, NAMESPACE  # noqa: E402
from ops.local.ports import free_port, free_ports  # noqa: E402

LOAD = Path(__file__).with_name("multinode_load.py")
NODE_CPUS = 2  # logical CPUs per node (the machine has 2 real cores for all of them)
CPU_SCALE = 0.5  # the cluster profile's replicas at half their CPUs: Gateway 0.25, Retrieval/Ranker 0.5
# Node death is noticed after period x threshold of missed health checks (defaults 3 s x 5): shorter
# here so a short run sees the whole recovery; what follows (rescheduling) is Serve's default.
SYSTEM_CONFIG = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}
# Serve's env on a cluster (cluster.yaml sets the same; a test keeps them equal): `marquee up`'s,
# plus HAProxy replaying a request whose replica died before answering ("empty-response": the
# connection closed with nothing received, as when a node vanishes mid-request) on another
# replica. Safe for this API: a homepage is a read, and events are idempotent by event_id.
CLUSTER_SERVE_ENV = {**SERVE_ENV, "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response"}


def prepare_home(paths: Paths) -> None:
    """A small world, its features and a promoted model, all in this process (no Ray)."""
    from models.bundle import DatasetIdentity
    from producers.world.generate import generate_world
    from state.registry import Registry
    from training.features import run_feature_job
    from training.retrain import retrain

    generate_world(members=300, titles=300, days=14, seed=5, out=paths.world)
    run_feature_job(paths.world, paths.features / paths.world.name, engine="arrow")
    Registry(paths.registry).bind_catalog(DatasetIdentity.of_dataset_dir(paths.world), reason="multinode test")
    report = retrain(f"world:{paths.world}", paths=paths, engine="local", run_features=False,
                     config_overrides={"rounds": 25}, progress=False)
    if not report.promoted:
        raise RuntimeError(f"the test model was not promoted: {report.gate}")


def node_env(stats_port: int, metrics_port: int, worker_http_port: int | None) -> None:
    """What the next node inherits: Serve's env as `marquee up` sets it, and HAProxy's ports and
    (on a worker) the proxy's HTTP port distinct per node, as separate hosts would have them."""
    os.environ.update({**CLUSTER_SERVE_ENV, "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port),
                       "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port)})
    if worker_http_port is None:
        os.environ.pop("RAY_SERVE_WORKER_PROXY_HTTP_PORT", None)
    else:
        os.environ["RAY_SERVE_WORKER_PROXY_HTTP_PORT"] = str(worker_http_port)


def start_cluster(workers: int):
    """A head and `workers` worker nodes, every port picked free (the machine is shared)."""
    from ray.cluster_utils import Cluster

    gcs, dashboard, agent, *ports = free_ports(3 + 6 * (workers + 1))

    def node_ports(i: int) -> dict:
        base = 6 * i
        node_env(ports[base], ports[base + 1], ports[base + 2] if i else None)
        return {"metrics_export_port": ports[base + 3], "metrics_agent_port": ports[base + 4],
                "runtime_env_agent_port": ports[base + 5]}

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": NODE_CPUS, "gcs_server_port": gcs, "include_dashboard": True, "dashboard_port": dashboard,
        "dashboard_host": "127.0.0.1", "dashboard_agent_listen_port": agent, "_system_config": SYSTEM_CONFIG,
        **node_ports(0)})
    for i in range(1, workers + 1):
        cluster.add_node(num_cpus=NODE_CPUS, **node_ports(i))
    cluster.wait_for_nodes()
    return cluster


def placement(alive_nodes: set[str]) -> dict:
    """Where each Serve replica and each stateful actor runs now (alive ones only)."""
    from ray.util.state import list_actors

    replicas: dict[str, list[str]] = {}
    actors: dict[str, str] = {}
    for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False):
        if actor.node_id not in alive_nodes:
            continue  # the GCS has not noticed yet that its node is gone
        if actor.class_name.startswith(f"ServeReplica:{APP_NAME}:"):
            replicas.setdefault(actor.class_name.split(":")[-1], []).append(actor.node_id)
        elif actor.name in (EVENT_LOG_ACTOR, MEMBER_STATE_ACTOR):
            actors[actor.name] = actor.node_id
    return {"replicas": replicas, "actors": actors}


def alive_node_ids() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def serve_settled(minimum: dict[str, int]) -> bool:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    if app is None or app.status != "RUNNING":
        return False
    return all(app.deployments[name].status == "HEALTHY" and
               app.deployments[name].replica_states.get("RUNNING", 0) >= count
               for name, count in minimum.items())


def wait_until(condition, timeout_s: float, what: str, interval_s: float = 0.25):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def logged_event_ids(root: Path, prefix: str) -> set[str]:
    """Every event id with `prefix` in the event log on disk (read after the cluster is gone: what
    was acknowledged must have been durable, not only in the actor's memory)."""
    from state.eventlog import EventLog

    log = EventLog(root)
    ids: set[str] = set()
    since = -1
    while True:
        table = log.read(since, 50_000)
        if table.num_rows == 0:
            return ids
        ids.update(i for i in table.column("event_id").to_pylist() if i.startswith(prefix))
        since = table.column("seq")[-1].as_py()


def run(args) -> dict:
    import ray
    import pyarrow.parquet as pq

    from deployments.app import PROFILES, deploy
    from ops.local.up import prepare_system

    timeline: dict[str, float] = {}
    started = time.monotonic()

    def mark(step: str) -> None:
        timeline[step] = round(time.monotonic() - started, 1)

    paths = Paths(args.home)
    prepare_home(paths)
    mark("home_prepared")
    cluster = start_cluster(args.workers)
    head_id = cluster.head_node.node_id
    node_ids = [head_id, *(n.node_id for n in cluster.worker_nodes)]
    report: dict = {"nodes": 1 + args.workers, "node_cpus": NODE_CPUS, "cpu_scale": CPU_SCALE,
                    "head_node": head_id, "timeline_s": timeline}
    load = None
    try:
        mark("cluster_started")
        ray.init(address=cluster.address, namespace=NAMESPACE, logging_level="ERROR", log_to_driver=False)
        report["ray_train"] = ray_train_fit()
        mark("ray_train_fitted")
        prepare_system(paths, paths.world)
        mark("actors_started")
        url = deploy({"home": str(paths.home), "profile": "cluster", "cpu_scale": CPU_SCALE}, free_port())
        mark("app_deployed")
        minimum = {name: options["autoscaling_config"]["min_replicas"]
                   for name, options in PROFILES["cluster"].items() if isinstance(options, dict)}
        before = wait_until(lambda: _if_complete(placement(alive_node_ids()), minimum), 60, "every replica placed")
        report["before"] = before

        members = pq.read_table(paths.world / "members.parquet", columns=["member_id"]).column(0).to_pylist()
        titles = pq.read_table(paths.world / "titles.parquet", columns=["title_id"]).column(0).to_pylist()
        stop = args.out.with_name("load.stop")
        load_out = args.out.with_name("load.json")
        load = subprocess.Popen([sys.executable, str(LOAD), "--url", url, "--members", ",".join(map(str, members[:200])),
                                 "--titles", ",".join(map(str, titles)), "--readers", str(args.readers),
                                 "--writers", str(args.writers), "--stop-file", str(stop), "--out", str(load_out)])
        time.sleep(args.warmup_s)
        mark("load_warm")

        by_node = Counter(node for nodes in before["replicas"].values() for node in nodes if node != head_id)
        victim_id = by_node.most_common(1)[0][0] if by_node else None
        victim = next(n for n in cluster.worker_nodes if n.node_id == victim_id) if victim_id else \
            next(iter(cluster.worker_nodes))
        report["removed_node"] = victim.node_id
        report["replicas_on_removed_node"] = {name: nodes.count(victim.node_id)
                                              for name, nodes in before["replicas"].items()}
        removed_at = time.time()
        mark("node_removed")
        cluster.remove_node(victim, allow_graceful=False)  # abrupt: a preempted or crashed host
        wait_until(lambda: victim.node_id not in alive_node_ids(), 60, "the node to be seen dead")
        mark("node_seen_dead")
        after = wait_until(lambda: serve_settled(minimum) and _if_complete(placement(alive_node_ids()), minimum),
                           args.recover_timeout_s, "the replicas to come back")
        recovered_at = time.time()
        mark("replicas_back")
        report["after"] = after
        time.sleep(args.after_s)
        stop.touch()
        load.wait(timeout=60)
        mark("load_stopped")
        results = json.loads(load_out.read_text())
        report["window"] = {"start": removed_at, "end": recovered_at + args.after_s}
        report["load"] = summarize(results["records"], removed_at, recovered_at + args.after_s)
        report["actors_after"] = placement(alive_node_ids())["actors"]
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        _shutdown(cluster, node_ids)
    mark("cluster_stopped")
    acked = set(results["acked"])
    logged = logged_event_ids(paths.event_log, "mn-")
    report["events"] = {"acknowledged": len(acked), "logged": len(logged),
                        "missing_count": len(acked - logged), "missing": sorted(acked - logged)[:20]}
    mark("events_checked")
    return report


def ray_train_fit() -> dict:
    """One small fit through Ray Train on this cluster of several nodes, against the same fit in
    this process: what it returned and what its worker was started with."""
    import numpy as np
    import pyarrow as pa

    from training.xgb_train import RayTrainRun, TrainSpec, predict, train_local

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2_000, 4)).astype(np.float32)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(4)},
                      "label": (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int8)})
    spec = TrainSpec(features=[f"f{i}" for i in range(4)], label="label", num_boost_round=10,
                     params={"objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "nthread": 1})
    started = time.monotonic()
    with RayTrainRun(num_workers=1, cpus_per_worker=1) as run:
        run.feed(table, {"model": spec})
        booster = run.result()["model"].booster
    same = bool(np.array_equal(predict(booster, table, spec.features),
                               predict(train_local(table, spec).booster, table, spec.features)))
    return {"seconds": round(time.monotonic() - started, 2), "models_identical": same,
            "worker_env_vars": run.worker_env_vars, "alive_nodes": len(alive_node_ids())}


def _if_complete(where: dict, minimum: dict[str, int]) -> dict | None:
    """`where`, once every deployment has its minimum of alive replicas and both actors run."""
    enough = all(len(where["replicas"].get(name, [])) >= count for name, count in minimum.items())
    return where if enough and len(where["actors"]) == 2 else None


def summarize(records: list[dict], window_start: float, window_end: float) -> dict:
    def stats(rows: list[dict]) -> dict:
        ok = sum(r["ok"] for r in rows)
        failures = Counter(str(r["status"] if r["status"] is not None else r["error"]) for r in rows if not r["ok"])
        latencies = sorted(r["latency_s"] for r in rows)
        p99 = latencies[max(0, int(0.99 * len(latencies)) - 1)] if latencies else None
        return {"requests": len(rows), "ok": ok, "success_rate": round(ok / len(rows), 4) if rows else None,
                "degraded": sum(r["ok"] and r["degraded"] for r in rows), "failures": dict(failures),
                "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
                "p99_ms": round(p99 * 1000, 1) if p99 is not None else None}

    out = {}
    for kind in ("homepage", "events"):
        rows = [r for r in records if r["kind"] == kind]
        # every request in flight at any moment of the window, the ones the kill caught included
        during = [r for r in rows if r["start"] <= window_end and r["start"] + r["latency_s"] >= window_start]
        out[kind] = {"all": stats(rows), "during_removal": stats(during)}
    return out


def _shutdown(cluster, node_ids: list[str]) -> None:
    """Stop the driver and every node (no serve.shutdown: it waits up to 30 s for a controller the
    node kill ends anyway); then Serve's HAProxy, which outlives its node and names the node's id
    on its command line (as ops.local.cluster.stop_head finds it)."""
    import psutil
    import ray

    ray.shutdown()
    cluster.shutdown()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if any(f"haproxy-serve/{node}" in cmdline for node in node_ids):
            try:
                proc.kill()
            except psutil.Error:
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--after-s", type=float, default=5.0)
    parser.add_argument("--recover-timeout-s", type=float, default=90.0)
    args = parser.parse_args(argv)
    ray_tmp = tempfile.mkdtemp(prefix="mn-ray-", dir="/tmp")  # short: Unix socket paths are bounded
    os.environ.update({"RAY_TMPDIR": ray_tmp, "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"})
    os.environ.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    try:
        report = run(args)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    report["total_s"] = round(time.monotonic() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
