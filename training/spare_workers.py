"""Warm spare processes for the next Ray Train run, asked of the raylet when a run ends.

Why: what is left of a cold fit's fixed cost (`training.ray_train_startup`) is mostly the
training worker's own fresh process: the raylet spawns it (~0.3 s here) and it imports ray.train
(which imports pandas and ray.data) and xgboost before its first call (~0.6-0.9 CPU-s). An idle
worker that has never run anything is handed to the next actor whose runtime_env matches, so the
raylet's PrestartWorkers call (the one Ray's own task backlog prestart uses; no public Python API
in Ray 2.60, so it is sent as the raylet's gRPC message) makes a spare ready ahead:

  * one hooked spare per training worker and one for Ray Train's synchronization actor (which
    imports ray.train too): started with Ray's worker_process_setup_hook env var naming
    `import_training_worker`, so it has done the imports before it is needed. The training
    workers and the synchronization actor get the same var in their runtime_env
    (`with_spare_hook`, `training.ray_train_lean`), so the raylet matches them (a worker is
    reused only for the same runtime_env);
  * a plain spare for the run's mailbox, which inherits the job's runtime_env: it skips the
    spawn and `import ray`.

Spares belong to no job, so a retrain submitted later as a new driver takes them too (each is
started with the runtime_env its actor will be leased with, `leased_runtime_env`); the raylet keeps
them `SPARE_KEEP_ALIVE_S` even above its idle-worker limit. Cost: the spares' start-up
(~2 CPU-s) right after a run, and their memory while idle (measured here: ~115 MB USS for a
hooked spare, ~41 MB for a plain one). One node only: on several nodes the worker's node is
not known in advance, and its runtime_env is Ray Train's own (`worker_runtime_env`).

Only the standard library at module level: a spare's process imports this module to run its hook.
"""

from __future__ import annotations

import json
import logging
import time

# ray._private.ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR: a worker started with it set to a
# module path calls that function before it takes work (Ray's worker_process_setup_hook).
SETUP_HOOK_ENV = "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"
TRAINING_WORKER_HOOK = f"{__name__}.import_training_worker"
SPARE_KEEP_ALIVE_S = 900
HOOKED_SPARES_BESIDES_WORKERS = 1  # Ray Train's synchronization actor
PLAIN_SPARES_PER_RUN = 1  # the run's mailbox
log = logging.getLogger("marquee.spare_workers")


def import_training_worker() -> None:
    """A hooked spare's start: what a Ray Train XGBoost worker of `training.xgb_train` imports
    before its first call (Ray Train's worker actor class, xgboost and the train loop's module)."""
    import ray.train.v2._internal.execution.worker_group.worker  # noqa: F401

    import training.xgb_train  # noqa: F401


def with_spare_hook(runtime_env: dict) -> dict:
    """`runtime_env` with the spare hook's env var: the runtime_env a hooked spare is started
    with, so a training worker given it can take that spare (the input is left unchanged)."""
    env_vars = {**(runtime_env.get("env_vars") or {}), SETUP_HOOK_ENV: TRAINING_WORKER_HOOK}
    return {**runtime_env, "env_vars": env_vars}


def hooked_spares(num_workers: int) -> int:
    """How many hooked spares a run of `num_workers` training workers takes and leaves."""
    return num_workers + HOOKED_SPARES_BESIDES_WORKERS


def spare_runtime_envs(num_workers: int, worker_runtime_env: dict) -> list[dict]:
    """The runtime_envs to prestart after a run of `num_workers` training workers, in the order to
    ask for them: a plain one ({}) for the mailbox, then theirs for each worker and for the
    synchronization actor (the plain one starts fastest: when the last hooked spare is ready,
    every spare is)."""
    return [{}] * PLAIN_SPARES_PER_RUN + [dict(worker_runtime_env)] * hooked_spares(num_workers)


# how a serialized runtime_env says "none": the job's or a lease's; workers with it share one pool
_NO_RUNTIME_ENV = ("", "{}")


def leased_runtime_env(actor_env: dict, job_env: str) -> str:
    """The runtime_env string the raylet matches idle workers by (a hash of it) for an actor
    created with `actor_env` in a job whose driver serialized its runtime_env as `job_env`, as
    Ray 2.60's core worker forms it (measured: a spare started with any other spelling is not
    reused): no actor runtime_env, the job's as it is; no job runtime_env, the actor's as the
    driver serializes it (sorted keys, json's default separators); both, the two merged (the
    actor's fields over the job's, env vars merged key by key) and dumped compactly, sorted."""
    if not actor_env:
        return job_env
    if job_env in _NO_RUNTIME_ENV:
        return json.dumps(actor_env, sort_keys=True)
    job = json.loads(job_env)
    merged = {**job, **actor_env}
    if "env_vars" in job or "env_vars" in actor_env:
        merged["env_vars"] = {**(job.get("env_vars") or {}), **(actor_env.get("env_vars") or {})}
    return json.dumps(merged, sort_keys=True, separators=(",", ":"))


def prestart_spares(runtime_envs: list[dict], keep_alive_s: int = SPARE_KEEP_ALIVE_S,
                    appear_timeout_s: float = 20.0) -> int:
    """Ask this process's raylet for one idle worker per actor runtime_env ({}: an actor given
    none), as this job's actors with it would be leased (`leased_runtime_env`), for no job in
    particular: one at a time, each once the one before has registered, because the raylet
    starts at most its startup concurrency (its CPUs) at once and drops a prestart beyond it
    (measured: three asked at once on 2 CPUs gave two). Blocks for the spares' start (~1 s
    each): call it off the caller's path. Returns how many registered; a refusal or a spare
    that does not come is logged and costs nothing else (a spare only saves time)."""
    import ray
    from ray._private.grpc_utils import init_grpc_channel
    from ray._private.utils import get_runtime_env_info
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc
    from ray.runtime_env import RuntimeEnv

    if not runtime_envs:
        return 0
    job_env = ray._private.worker.global_worker.core_worker.get_job_config().runtime_env_info.serialized_runtime_env
    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    channel = init_grpc_channel(f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}")
    started = 0
    try:
        stub = node_manager_pb2_grpc.NodeManagerServiceStub(channel)
        for env in runtime_envs:
            leased = leased_runtime_env(env, job_env)
            request = node_manager_pb2.PrestartWorkersRequest(
                language=common_pb2.PYTHON, num_workers=1, keep_alive_duration_secs=keep_alive_s)
            if leased not in _NO_RUNTIME_ENV:  # none: the empty runtime_env plain workers and actors share
                request.runtime_env_info.CopyFrom(get_runtime_env_info(RuntimeEnv(**json.loads(leased)), serialize=False))
                request.runtime_env_info.serialized_runtime_env = leased
            idle_before = set(spare_pids(hooked=False))
            try:
                stub.PrestartWorkers(request, timeout=10)
            except Exception as exc:  # grpc errors: the raylet refused or is going away
                log.info("the raylet did not prestart a spare worker: %s", exc)
                continue
            if _registered(idle_before, appear_timeout_s):
                started += 1
            else:
                log.info("a spare worker did not register within %.0f s", appear_timeout_s)
    finally:
        channel.close()
    return started


def _registered(idle_before: set[int], timeout_s: float) -> bool:
    """Whether an idle worker not in `idle_before` appears within `timeout_s`."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if set(spare_pids(hooked=False)) - idle_before:
            return True
        time.sleep(0.05)
    return False


def spare_pids(hooked: bool = True, env_vars: dict[str, str] | None = None) -> list[int]:
    """The idle Ray workers (never given work) of the raylet this process started (of any
    cluster on this machine when it joined one): those started with the spare hook, or
    (hooked=False) every idle one; with `env_vars`, only those whose environment holds them
    (a spare started for another job's runtime_env is not handed to this one's actors)."""
    import psutil

    from training.ray_train_startup import local_raylet_pid

    raylet = local_raylet_pid()
    wanted = {**(env_vars or {}), **({SETUP_HOOK_ENV: TRAINING_WORKER_HOOK} if hooked else {})}
    found = []
    for process in psutil.process_iter(["cmdline", "ppid"]):
        try:
            if not (process.info["cmdline"] or [""])[0].startswith("ray::IDLE"):  # Ray's process title
                continue
            if raylet is not None and process.info["ppid"] != raylet:
                continue
            if wanted:
                environ = process.environ()
                if any(environ.get(name) != value for name, value in wanted.items()):
                    continue
            found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_for_spares(count: int, timeout_s: float = 30.0, quiet_cpu_s: float = 0.02,
                    env_vars: dict[str, str] | None = None) -> float:
    """Block until the raylet has at least `count` hooked spares (holding `env_vars`, as
    `spare_pids`) and no idle worker is still busy starting (their CPU time grew less than
    `quiet_cpu_s` over 0.25 s); returns the wait in seconds. Raises TimeoutError. For benchmarks
    and tests that must not time anything while spares start beside it."""
    import psutil

    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if len(spare_pids(env_vars=env_vars)) >= count:
            idle = spare_pids(hooked=False)
            before = _cpu_seconds(psutil, idle)
            time.sleep(0.25)
            if _cpu_seconds(psutil, idle) - before < quiet_cpu_s:
                return time.perf_counter() - started
        else:
            time.sleep(0.05)
    raise TimeoutError(f"fewer than {count} spare training workers were ready within {timeout_s} s")


def _cpu_seconds(psutil, pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total
