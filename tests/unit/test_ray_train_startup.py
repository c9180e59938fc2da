"""The single-machine Ray start-up environment and the rule that lets a Ray Train worker go
without a runtime_env: the user's values win, and any difference keeps Ray Train's own path."""

from __future__ import annotations

import asyncio

from training.ray_train_startup import (
    CONTROLLER_ENV_DEFAULTS,
    HEALTH_CHECK_INTERVAL_ENV,
    PREEMPTION_WATCHER_ENV,
    RAY_TRAIN_DEFAULTS,
    WARN_BLOCKING_GET_ENV,
    Mailbox,
    cluster_environment,
    worker_runtime_env,
)


def test_cluster_environment_holds_every_default_and_the_users_value_wins():
    assert cluster_environment({}) == {**RAY_TRAIN_DEFAULTS, **CONTROLLER_ENV_DEFAULTS}
    env = cluster_environment({HEALTH_CHECK_INTERVAL_ENV: "2", "UNRELATED": "x"})
    assert env[HEALTH_CHECK_INTERVAL_ENV] == "2"
    assert env[PREEMPTION_WATCHER_ENV] == RAY_TRAIN_DEFAULTS[PREEMPTION_WATCHER_ENV]
    assert "UNRELATED" not in env  # only what Ray Train's controller needs


def test_a_worker_keeps_only_the_env_vars_it_would_not_inherit_and_only_on_one_node():
    runtime_env = {"env_vars": {HEALTH_CHECK_INTERVAL_ENV: "0.1", WARN_BLOCKING_GET_ENV: "0"}}
    inherited = {HEALTH_CHECK_INTERVAL_ENV: "0.1", WARN_BLOCKING_GET_ENV: "0"}
    assert worker_runtime_env(runtime_env, inherited, single_node=True) == {}  # a plain worker
    differs = {HEALTH_CHECK_INTERVAL_ENV: "2", WARN_BLOCKING_GET_ENV: "0"}
    assert worker_runtime_env(runtime_env, differs, single_node=True) == {
        "env_vars": {HEALTH_CHECK_INTERVAL_ENV: "0.1"}}
    missing = {HEALTH_CHECK_INTERVAL_ENV: None, WARN_BLOCKING_GET_ENV: "0"}
    assert worker_runtime_env(runtime_env, missing, single_node=True) == {
        "env_vars": {HEALTH_CHECK_INTERVAL_ENV: "0.1"}}
    assert worker_runtime_env(runtime_env, inherited, single_node=False) == runtime_env  # other raylets
    other = {"env_vars": {WARN_BLOCKING_GET_ENV: "0"}, "working_dir": "/src"}
    assert worker_runtime_env(other, inherited, single_node=True) == {"working_dir": "/src"}
    assert runtime_env["env_vars"] == inherited  # the input is not changed


def test_the_mailbox_gives_its_parcel_once_to_every_taker_and_reports_its_environment(monkeypatch):
    monkeypatch.setenv(HEALTH_CHECK_INTERVAL_ENV, "0.1")
    monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)

    async def scenario():
        box = Mailbox()
        takers = [asyncio.create_task(box.take()) for _ in range(2)]
        await asyncio.sleep(0)
        assert await box.waiting() == 2
        await box.put({"specs": 1})
        await box.put({"abort": "too late"})  # the first parcel stays
        got = await asyncio.gather(*takers)
        seen = await box.environment([HEALTH_CHECK_INTERVAL_ENV, PREEMPTION_WATCHER_ENV])
        return got, await box.waiting(), seen

    got, waiting, seen = asyncio.run(scenario())
    assert got == [{"specs": 1}, {"specs": 1}] and waiting == 0
    assert seen == {HEALTH_CHECK_INTERVAL_ENV: "0.1", PREEMPTION_WATCHER_ENV: None}


def test_the_spare_hook_is_rays_setup_hook_and_names_a_function_that_imports_the_worker():
    import importlib

    from ray._private import ray_constants

    from training.spare_workers import SETUP_HOOK_ENV, TRAINING_WORKER_HOOK, import_training_worker

    assert SETUP_HOOK_ENV == ray_constants.WORKER_PROCESS_SETUP_HOOK_ENV_VAR
    module, _, name = TRAINING_WORKER_HOOK.rpartition(".")
    assert getattr(importlib.import_module(module), name) is import_training_worker


def test_with_spare_hook_adds_only_the_hook_and_leaves_its_input_alone():
    from training.spare_workers import SETUP_HOOK_ENV, TRAINING_WORKER_HOOK, hooked_spares, spare_runtime_envs, with_spare_hook

    assert with_spare_hook({}) == {"env_vars": {SETUP_HOOK_ENV: TRAINING_WORKER_HOOK}}
    given = {"env_vars": {"A": "1"}, "working_dir": "/src"}
    assert with_spare_hook(given) == {"env_vars": {"A": "1", SETUP_HOOK_ENV: TRAINING_WORKER_HOOK}, "working_dir": "/src"}
    assert given == {"env_vars": {"A": "1"}, "working_dir": "/src"}
    hooked = with_spare_hook({})
    envs = spare_runtime_envs(2, hooked)
    assert envs == [{}] + [hooked] * hooked_spares(2) and hooked_spares(2) == 3  # the mailbox's plain one first


def test_the_leased_runtime_env_is_spelled_as_rays_core_worker_spells_it():
    from ray.runtime_env import RuntimeEnv

    from training.spare_workers import leased_runtime_env

    actor = {"env_vars": {"HOOK": "m.f", "A": "1"}}
    assert leased_runtime_env({}, "") == "" and leased_runtime_env({}, '{"env_vars": {"J": "1"}}') == '{"env_vars": {"J": "1"}}'
    assert leased_runtime_env(actor, "") == RuntimeEnv(**actor).serialize() == '{"env_vars": {"A": "1", "HOOK": "m.f"}}'
    job = '{"env_vars": {"A": "0", "J": "1"}, "working_dir": "/w"}'
    assert leased_runtime_env(actor, job) == '{"env_vars":{"A":"1","HOOK":"m.f","J":"1"},"working_dir":"/w"}'
