"""How a Ray Train run starts fewer and cheaper processes (used by training.xgb_train).

Why this module exists: a 1-worker XGBoost fit through Ray Train 2.60 starts six fresh Python
processes (controller, placement-group cleaner, synchronization actor, training worker, dataset
manager, and on a fresh cluster the autoscaling coordinator), each ~1-3 CPU-s, on a machine with
two cores; traced process by process (psutil), its start-up was a chain three deep (the
controller, then its actors, then the worker's train function at ~3.2 s). The classes in
`training.ray_train_lean` run the same control loop with less:

  * the controller runs on the run's thread in the driver, which has imported ray.train already:
    no controller process, no runtime_env for it (its settings are read from the driver's
    os.environ, where `_ray_train_settings` puts them), and no placement-group cleaner, a
    detached actor that removes the run's placement group if the controller's process dies while
    the driver lives (a placement group dies with the job that created it). The workers get no
    handle to a controller actor; they use it only for ray.train.get_all_reported_checkpoints,
    which train_ray's loop never calls;
  * the dataset manager starts even when the trainer was given no datasets; train_ray never gives
    it any (rows travel as Arrow refs through the mailbox), so its datasets callback is left out;
  * the controller gives each training worker a runtime_env of the env vars it propagates
    (`get_env_vars_to_propagate`), and a worker with a runtime_env is launched through Ray's
    setup_worker.py, which imports ray and then execs a second interpreter that imports it again.
    A worker started by a raylet without one inherits the raylet's environment; so on a one-node
    cluster the vars whose values equal that environment are left out (`worker_runtime_env`),
    and when none is left the worker has no runtime_env at all. The raylet's environment is read
    from /proc when this process started it (`local_raylet_environment`), else asked of the
    mailbox, a plain worker of the same raylet. Anything that differs, and everything on a
    cluster of several nodes (whose raylets may differ), keeps Ray Train's own path.

Only the standard library is imported at module level: the mailbox's process imports this module
to load its class.
"""

from __future__ import annotations

import os

HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # ray.train.v2 constants
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
WARN_BLOCKING_GET_ENV = "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"  # Ray Train sets it for its controller and workers
# Ray Train settings a fit applies unless the user set them (why: xgb_train._ray_train_settings).
RAY_TRAIN_DEFAULTS = {
    HEALTH_CHECK_INTERVAL_ENV: "0.1",
    PREEMPTION_WATCHER_ENV: "0",
}
# What Ray Train 2.60 puts in its controller's runtime_env when nothing else is set.
CONTROLLER_ENV_DEFAULTS = {WARN_BLOCKING_GET_ENV: "0"}


def cluster_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars to start a single-machine Ray with (head and raylet inherit them, and so does
    every worker), so a training worker inherits the settings its controller propagates and needs
    no runtime_env (`worker_runtime_env`). A value already in `environ` (default os.environ) wins."""
    environ = os.environ if environ is None else environ
    wanted = {**RAY_TRAIN_DEFAULTS, **CONTROLLER_ENV_DEFAULTS}
    return {name: environ.get(name, value) for name, value in wanted.items()}


def worker_runtime_env(runtime_env: dict, inherited: dict[str, str | None], single_node: bool) -> dict:
    """`runtime_env` (what Ray Train would give a training worker) without the env vars the
    worker inherits anyway: those whose value equals `inherited` (the environment of the raylet
    that starts it) when the cluster has one node. No env vars left: no `env_vars` key, so
    a runtime_env with nothing else is empty and the worker starts as a plain one."""
    env_vars = dict(runtime_env.get("env_vars") or {})
    if single_node:
        env_vars = {name: value for name, value in env_vars.items() if inherited.get(name) != value}
    reduced = {key: value for key, value in runtime_env.items() if key != "env_vars"}
    if env_vars:
        reduced["env_vars"] = env_vars
    return reduced


def local_raylet_pid() -> int | None:
    """The pid of the raylet this process started (its workers are the raylet's children); None
    when this process joined a running cluster instead."""
    import ray
    from ray._private import ray_constants

    node = ray._private.worker._global_node
    raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) if node is not None else None
    return raylets[0].process.pid if raylets else None


def local_raylet_environment() -> dict[str, str] | None:
    """The environment of the raylet this process started (the workers it spawns inherit it),
    read from /proc: no worker to ask and wait for. None when this process did not start the
    raylet (it joined a running cluster) or the environment cannot be read."""
    pid = local_raylet_pid()
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            entries = handle.read().split(b"\0")
    except OSError:
        return None
    pairs = (entry.decode("utf-8", "replace").partition("=") for entry in entries if b"=" in entry)
    return {name: value for name, _, value in pairs}


class Mailbox:
    """Where a started run's workers wait for their rows: one parcel, put once, taken by every
    worker ({"specs", "shards"} or {"abort": why}), and where worker 0 delivers the fitted models
    back ({"boosters", "metrics"}). An async actor, so takers wait without a thread. Being a plain
    worker itself, it also tells the run what its raylet's workers inherit (`environment`)."""

    def __init__(self) -> None:
        import asyncio

        self._parcel: dict | None = None
        self._ready = asyncio.Event()
        self._waiting = 0
        self._delivered: dict | None = None
        self._arrived = asyncio.Event()

    async def put(self, parcel: dict) -> None:
        if self._parcel is None:
            self._parcel = parcel
            self._ready.set()

    async def take(self) -> dict:
        self._waiting += 1
        try:
            await self._ready.wait()
        finally:
            self._waiting -= 1
        return self._parcel  # type: ignore[return-value]

    async def waiting(self) -> int:
        return self._waiting

    async def deliver(self, parcel: dict) -> None:
        """Worker 0's models and metrics, the moment they are fitted (the first delivery wins)."""
        if self._delivered is None:
            self._delivered = parcel
            self._arrived.set()

    async def delivery(self) -> dict:
        await self._arrived.wait()
        return self._delivered  # type: ignore[return-value]

    async def environment(self, names: list[str]) -> dict[str, str | None]:
        """What a plain worker of this raylet inherits, for `names` (see `worker_runtime_env`)."""
        return {name: os.environ.get(name) for name in names}
