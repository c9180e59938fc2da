"""Ray Train's XGBoost trainer with the savings of `training.ray_train_startup` (why: there).

Imports ray.train at module level: only the driver, which builds the trainer and hosts its
controller, imports this module.
"""

from __future__ import annotations

import asyncio
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import ray
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.constants import ENABLE_CONTROLLER_STRUCTURED_LOGGING_ENV_VAR
from ray.train.v2._internal.execution.controller import TrainController
from ray.train.v2._internal.execution.worker_group import WorkerGroup
from ray.train.v2._internal.execution.worker_group import worker_group as worker_group_module
from ray.train.xgboost import XGBoostTrainer

from training.ray_train_startup import worker_runtime_env
from training.spare_workers import spare_pids, with_spare_hook

Inherited = Callable[[list[str]], dict]  # env-var names -> what the raylet's plain workers see


def _single_node() -> bool:
    return sum(1 for node in ray.nodes() if node.get("Alive")) == 1


class LeanWorkerGroup(WorkerGroup):
    """Ray Train's worker group, its workers' runtime_env reduced to what they would not inherit;
    on one node with `spare_envs` set (a list), its workers and synchronization actor take the
    raylet's warm spares (`training.spare_workers`) when there are enough, and the hooked
    runtime_env the run's spares are to be started with is appended to `spare_envs`
    (`inherited` and `spare_envs` are set per run). The workers' runtime_env is resolved once
    per start (`_start_impl`): resolving it may ask the mailbox."""

    inherited: Inherited
    spare_envs: list[dict] | None = None
    _worker_env: dict | None = None  # the workers' runtime_env, as resolved when the group started

    def _resolve_runtime_env(self, custom_runtime_env: Any, single_node: bool) -> dict:
        full = dict(WorkerGroup._get_worker_runtime_env(custom_runtime_env))
        # one node: keep only the vars the workers would not inherit (asked of the mailbox);
        # several nodes: nothing to ask, every var is kept
        if single_node and full.get("env_vars"):
            full = worker_runtime_env(full, self.inherited(sorted(full["env_vars"])), single_node=True)
        return full

    def _get_worker_runtime_env(self, custom_runtime_env: Any) -> dict:  # type: ignore[override]
        if self._worker_env is not None:
            return self._worker_env
        return self._resolve_runtime_env(custom_runtime_env, _single_node())

    def _start_impl(self, worker_group_state_builder: Any) -> None:
        """As Ray Train does, with the spares split before it starts: the workers take the hooked
        spares first; the synchronization actor (created inline with the job's runtime_env, so
        given the workers' here) takes one when there is one left, since in a plain process its
        import of ray.train (~0.6 CPU-s) runs beside the fit."""
        single_node = _single_node()
        self._worker_env = self._resolve_runtime_env(self._train_run_context.run_config.worker_runtime_env,
                                                     single_node)
        if self.spare_envs is None or not single_node:  # several nodes: no spares
            return super()._start_impl(worker_group_state_builder)
        hooked = with_spare_hook(self._worker_env)
        self.spare_envs.append(hooked)
        job_env_vars = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}
        waiting = len(spare_pids(env_vars={**job_env_vars, **hooked["env_vars"]}))
        num_workers = self._worker_group_context.num_workers
        if waiting >= num_workers:  # only with a spare to take: a fresh worker with a runtime_env
            self._worker_env = hooked  # starts through setup_worker.py (start-up 3.3 -> 4.4 s, a retrain)
        if waiting < num_workers + 1:
            return super()._start_impl(worker_group_state_builder)
        with _sync_actor_runtime_env(hooked):
            return super()._start_impl(worker_group_state_builder)

    def _init_train_context_on_workers(self, workers: list, sync_actor: Any, train_context_args: dict) -> None:
        """As Ray Train does, but with no controller actor to hand the workers: the controller is
        the driver. (A worker uses that handle only for ray.train.get_all_reported_checkpoints,
        which the training loop here never calls.)"""
        ray.get([
            worker.actor.init_train_context.remote(
                train_run_context=self._train_run_context,
                distributed_context=worker.distributed_context,
                synchronization_actor=sync_actor,
                storage_context=self._storage_context,
                worker_callbacks=self._worker_callbacks_to_propagate,
                controller_actor=None,
                **{arg: values[i] for arg, values in train_context_args.items()},
            )
            for i, worker in enumerate(workers)
        ])
        self._decorate_worker_log_file_paths(workers)


@contextmanager
def _sync_actor_runtime_env(runtime_env: dict) -> Iterator[None]:
    """Ray Train's SynchronizationActor, as the worker group module names it, created with
    `runtime_env` for the duration (one run at a time per process, as with its env settings)."""
    actor_class = worker_group_module.SynchronizationActor

    class WithRuntimeEnv:
        @staticmethod
        def options(**options: Any) -> Any:
            return actor_class.options(runtime_env=runtime_env, **options)

    worker_group_module.SynchronizationActor = WithRuntimeEnv
    try:
        yield
    finally:
        worker_group_module.SynchronizationActor = actor_class


class DriverTrainController(TrainController):
    """Ray Train's controller, run on the calling thread of the driver instead of as an actor of
    its own: the control loop is the same; what goes is a fresh process importing ray.train.

    Its logs are the driver's: Ray Train's structured controller logging (skipped here) would
    reconfigure the driver's `ray.train` logger to print every INFO line to the console."""

    def __init__(self, *args: Any, inherited: Inherited, spare_envs: list[dict] | None, **kwargs: Any) -> None:
        self.worker_group_cls = type("RunWorkerGroup", (LeanWorkerGroup,),
                                     {"inherited": staticmethod(inherited), "spare_envs": spare_envs})
        previous = os.environ.get(ENABLE_CONTROLLER_STRUCTURED_LOGGING_ENV_VAR)
        os.environ[ENABLE_CONTROLLER_STRUCTURED_LOGGING_ENV_VAR] = "0"  # read only in this constructor
        try:
            super().__init__(*args, **kwargs)
        finally:
            if previous is None:
                os.environ.pop(ENABLE_CONTROLLER_STRUCTURED_LOGGING_ENV_VAR, None)
            else:
                os.environ[ENABLE_CONTROLLER_STRUCTURED_LOGGING_ENV_VAR] = previous


class LeanXGBoostTrainer(XGBoostTrainer):
    """XGBoostTrainer with its controller in the driver, no dataset manager without datasets,
    no placement-group cleaner, and (on one node) workers with no runtime_env but the spare
    hook's (with `spare_envs`, a list the workers' runtime_envs are appended to) or none.

    The cleaner is a detached actor that removes the run's placement group if the controller's
    process dies while the driver lives; here the controller is the driver, and a placement
    group dies with the job that created it."""

    def __init__(self, *args: Any, inherited: Inherited, spare_envs: list[dict] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inherited, self._spare_envs = inherited, spare_envs

    def _create_default_callbacks(self) -> list:
        dropped = (PlacementGroupCleanerCallback,) + (() if self.datasets else (DatasetsCallback,))
        return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, dropped)]

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any):
        controller = DriverTrainController(inherited=self._inherited, spare_envs=self._spare_envs,
                                           **controller_init_kwargs)
        asyncio.run(controller.run())
        return controller.get_result()
