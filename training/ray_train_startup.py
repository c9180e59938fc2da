"""How a Ray Train run starts fewer and cheaper processes (used by training.xgb_train).

Why this module exists: a 1-worker XGBoost fit through Ray Train 2.60 starts six fresh Python
processes (controller, placement-group cleaner, synchronization actor, training worker, dataset
manager, and on a fresh cluster the autoscaling coordinator), each ~1-3 CPU-s, on a machine with
two cores. Measured by process (py-spy, psutil), two costs are avoidable without changing what
runs:

  * the dataset manager starts even when the trainer was given no datasets; train_ray never gives
    it any (rows travel as Arrow refs through the mailbox), so `lean_trainer` leaves the datasets
    callback out when `datasets` is empty;
  * Ray Train gives its controller a runtime_env holding env vars, and every actor the
    controller creates inherits it. A worker with a runtime_env is launched through Ray's
    setup_worker.py, which imports ray and then execs a second interpreter that imports it again,
    and it cannot be an idle pooled worker. When the cluster's own workers already carry those env
    vars with the same values (the cluster was started with `cluster_environment()`), the
    controller needs no runtime_env: `lean_trainer` then creates it without one. The training
    worker keeps its runtime_env (the controller still propagates the settings to it).

The check is made on the cluster, not assumed: the mailbox actor (a plain actor of the same job)
reports the values it sees, and anything different keeps Ray Train's own path. Only the standard
library is imported at module level: the mailbox's process imports this module to load its class.
"""

from __future__ import annotations

import os
from typing import Any

HEALTH_CHECK_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # ray.train.v2 constants
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
WARN_BLOCKING_GET_ENV = "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"  # Ray Train sets it for its controller
# Ray Train settings a fit applies unless the user set them (why: xgb_train._ray_train_settings).
RAY_TRAIN_DEFAULTS = {
    HEALTH_CHECK_INTERVAL_ENV: "0.1",
    PREEMPTION_WATCHER_ENV: "0",
}
# What Ray Train 2.60 puts in its controller's runtime_env when nothing else is set.
CONTROLLER_ENV_DEFAULTS = {WARN_BLOCKING_GET_ENV: "0"}


def cluster_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The env vars to start a single-machine Ray with (head and raylet inherit them, and so does
    every worker), so a fit's controller finds its settings without a runtime_env. A value
    already in `environ` (default os.environ) wins."""
    environ = os.environ if environ is None else environ
    wanted = {**RAY_TRAIN_DEFAULTS, **CONTROLLER_ENV_DEFAULTS}
    return {name: environ.get(name, value) for name, value in wanted.items()}


def controller_env_vars() -> dict[str, str]:
    """The env vars Ray Train would give its controller from this driver, right now (call it
    where the fit's settings apply)."""
    from ray.train.v2._internal.constants import get_env_vars_to_propagate

    env_vars = get_env_vars_to_propagate()
    for name, value in CONTROLLER_ENV_DEFAULTS.items():
        env_vars.setdefault(name, value)
    return env_vars


def cluster_carries(wanted: dict[str, str], seen: dict[str, str | None]) -> bool:
    """True when the cluster's workers already see every wanted env var with the wanted value."""
    return all(seen.get(name) == value for name, value in wanted.items())


class Mailbox:
    """Where a started run's workers wait for their rows: one parcel, put once, taken by every
    worker ({"specs", "shards"} or {"abort": why}), and where worker 0 delivers the fitted models
    back ({"boosters", "metrics"}). An async actor, so takers wait without a thread.
    It also tells the driver which env vars the cluster's plain workers see (`environment`)."""

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
        return {name: os.environ.get(name) for name in names}


_LEAN_TRAINERS: dict[type, type] = {}


def lean_trainer(base: type) -> type:
    """`base` (a Ray Train DataParallelTrainer such as XGBoostTrainer) with the two savings of the
    module docstring. Its constructor takes one more keyword, `controller_env_inherited`: True
    when the cluster was checked to carry the controller's env vars (`cluster_carries`)."""
    if base not in _LEAN_TRAINERS:
        _LEAN_TRAINERS[base] = _make_lean_trainer(base)
    return _LEAN_TRAINERS[base]


def _make_lean_trainer(base: type) -> type:
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    class LeanTrainer(base):  # type: ignore[misc, valid-type]
        __doc__ = f"{base.__name__} starting no dataset manager without datasets, and its " \
                  "controller without a runtime_env when the cluster carries its env vars."

        def __init__(self, *args: Any, controller_env_inherited: bool = False, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.controller_env_inherited = controller_env_inherited

        def _create_default_callbacks(self) -> list:
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]

        def _initialize_and_run_controller(self, **controller_init_kwargs: Any):
            if not self.controller_env_inherited:
                return super()._initialize_and_run_controller(**controller_init_kwargs)
            import threading

            import ray
            from ray.train.v2._internal.execution.controller import TrainController

            # As Ray Train does (pinned to the driver's node, no CPU), minus the runtime_env.
            controller_cls = ray.remote(
                num_cpus=0,
                label_selector={ray._raylet.RAY_NODE_ID_KEY: ray.get_runtime_context().get_node_id()},
            )(TrainController)
            controller = controller_cls.remote(**controller_init_kwargs)
            if threading.current_thread() is threading.main_thread():
                self._register_sigint_handler(controller)  # as Ray Train does: Ctrl-C aborts the run
            ray.get(controller.run.remote())
            return ray.get(controller.get_result.remote())

    LeanTrainer.__name__ = LeanTrainer.__qualname__ = f"Lean{base.__name__}"
    return LeanTrainer
