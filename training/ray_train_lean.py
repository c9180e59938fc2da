"""Ray Train's XGBoost trainer with the savings of `training.ray_train_startup` (why: there).

Imports ray.train at module level: only the driver, which builds the trainer and hosts its
controller, imports this module.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable

import ray
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2._internal.constants import ENABLE_CONTROLLER_STRUCTURED_LOGGING_ENV_VAR
from ray.train.v2._internal.execution.controller import TrainController
from ray.train.v2._internal.execution.worker_group import WorkerGroup
from ray.train.xgboost import XGBoostTrainer

from training.ray_train_startup import worker_runtime_env

Inherited = Callable[[list[str]], dict]  # env-var names -> what the raylet's plain workers see


def _single_node() -> bool:
    return sum(1 for node in ray.nodes() if node.get("Alive")) == 1


class LeanWorkerGroup(WorkerGroup):
    """Ray Train's worker group, its workers' runtime_env reduced to what they would not inherit
    (`inherited` is set per run by the controller)."""

    inherited: Inherited

    def _get_worker_runtime_env(self, custom_runtime_env: Any) -> dict:  # type: ignore[override]
        full = dict(WorkerGroup._get_worker_runtime_env(custom_runtime_env))
        if not full.get("env_vars"):
            return full
        single_node = _single_node()  # several nodes: nothing to ask, every var is kept
        inherited = self.inherited(sorted(full["env_vars"])) if single_node else {}
        return worker_runtime_env(full, inherited, single_node)

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


class DriverTrainController(TrainController):
    """Ray Train's controller, run on the calling thread of the driver instead of as an actor of
    its own: the control loop is the same; what goes is a fresh process importing ray.train.

    Its logs are the driver's: Ray Train's structured controller logging (skipped here) would
    reconfigure the driver's `ray.train` logger to print every INFO line to the console."""

    def __init__(self, *args: Any, inherited: Inherited, **kwargs: Any) -> None:
        self.worker_group_cls = type("RunWorkerGroup", (LeanWorkerGroup,), {"inherited": staticmethod(inherited)})
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
    no placement-group cleaner, and (on one node) workers without a runtime_env.

    The cleaner is a detached actor that removes the run's placement group if the controller's
    process dies while the driver lives; here the controller is the driver, and a placement
    group dies with the job that created it."""

    def __init__(self, *args: Any, inherited: Inherited, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inherited = inherited

    def _create_default_callbacks(self) -> list:
        dropped = (PlacementGroupCleanerCallback,) + (() if self.datasets else (DatasetsCallback,))
        return [cb for cb in super()._create_default_callbacks() if not isinstance(cb, dropped)]

    def _initialize_and_run_controller(self, **controller_init_kwargs: Any):
        controller = DriverTrainController(inherited=self._inherited, **controller_init_kwargs)
        asyncio.run(controller.run())
        return controller.get_result()
