"""The single-machine Ray start-up environment and the check that lets a Ray Train controller go
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
    cluster_carries,
    cluster_environment,
)


def test_cluster_environment_holds_every_default_and_the_users_value_wins():
    assert cluster_environment({}) == {**RAY_TRAIN_DEFAULTS, **CONTROLLER_ENV_DEFAULTS}
    env = cluster_environment({HEALTH_CHECK_INTERVAL_ENV: "2", "UNRELATED": "x"})
    assert env[HEALTH_CHECK_INTERVAL_ENV] == "2"
    assert env[PREEMPTION_WATCHER_ENV] == RAY_TRAIN_DEFAULTS[PREEMPTION_WATCHER_ENV]
    assert "UNRELATED" not in env  # only what Ray Train's controller needs


def test_the_cluster_carries_the_controllers_vars_only_when_every_value_matches():
    wanted = {HEALTH_CHECK_INTERVAL_ENV: "0.1", WARN_BLOCKING_GET_ENV: "0"}
    assert cluster_carries(wanted, {HEALTH_CHECK_INTERVAL_ENV: "0.1", WARN_BLOCKING_GET_ENV: "0", "X": "1"})
    assert not cluster_carries(wanted, {HEALTH_CHECK_INTERVAL_ENV: "0.1", WARN_BLOCKING_GET_ENV: None})
    assert not cluster_carries(wanted, {HEALTH_CHECK_INTERVAL_ENV: "3", WARN_BLOCKING_GET_ENV: "0"})
    assert cluster_carries({}, {})


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
