"""Candidate sources under their policies: errors and overruns are dropped and named, fail-closed
sources are reported, chaos faults work, and the page config's sources become the stage's policies."""

from __future__ import annotations

import concurrent.futures as futures
import threading
import time
from types import SimpleNamespace

import pytest

from deployments.candidates import Retrieval, RetrievalConfig, SourceFault, SourcePolicy
from deployments.page_config import HomepageConfig, apply_override


def make_retrieval(config: RetrievalConfig, pool: futures.ThreadPoolExecutor) -> Retrieval:
    """A Retrieval around a model and catalog with nothing in them: `_run_all` needs neither."""
    model = SimpleNamespace(builder=SimpleNamespace(sources={}), index_of={}, source_names=())
    catalog = SimpleNamespace(titles={}, genres=())
    return Retrieval(model, catalog, config, executor=pool)


@pytest.fixture
def pool():
    pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-source")
    yield pool
    pool.shutdown(wait=True)


def fails():
    raise RuntimeError("index corrupt")


def test_all_sources_succeed(pool):
    retrieval = make_retrieval(RetrievalConfig(), pool)
    results, degraded, closed = retrieval._run_all({"a": lambda: 1, "b": lambda: [2]})
    assert results == {"a": 1, "b": [2]}
    assert degraded == [] and closed == []


def test_a_source_that_raises_is_dropped_and_named(pool):
    retrieval = make_retrieval(RetrievalConfig(), pool)
    results, degraded, closed = retrieval._run_all({"a": lambda: 1, "broken": fails, "c": lambda: 3})
    assert results == {"a": 1, "c": 3}  # the sources after it still ran
    assert degraded == ["broken"] and closed == []


def test_a_hanging_source_is_dropped_within_about_its_timeout_and_the_others_are_not(pool):
    release = threading.Event()

    def hangs():
        release.wait(10.0)
        return "late"

    config = RetrievalConfig(policies={"hangs": SourcePolicy(timeout_ms=50)},
                             default_policy=SourcePolicy(timeout_ms=2000))
    retrieval = make_retrieval(config, pool)
    started = time.monotonic()
    try:
        results, degraded, closed = retrieval._run_all({"quick": lambda: 1, "hangs": hangs, "after": lambda: 2})
        returned_while_hanging = not release.is_set()
        elapsed = time.monotonic() - started
    finally:
        release.set()
    assert returned_while_hanging  # it did not wait for the hanging source
    assert elapsed < 5.0  # generous: the wait is the 50 ms timeout, not the 10 s hang
    assert results == {"quick": 1, "after": 2}  # sources run side by side: a hang costs only itself
    assert degraded == ["hangs"] and closed == []


def test_a_hung_source_holds_a_bounded_number_of_threads_and_recovers(pool):
    from deployments.candidates import MAX_IN_FLIGHT

    release = threading.Event()
    config = RetrievalConfig(policies={"hangs": SourcePolicy(timeout_ms=20)},
                             default_policy=SourcePolicy(timeout_ms=2000))
    big_pool = futures.ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT + 2)
    retrieval = make_retrieval(config, big_pool)
    try:
        for _ in range(MAX_IN_FLIGHT + 3):  # more requests than the bound, while it hangs
            results, degraded, _ = retrieval._run_all({"hangs": lambda: release.wait(10.0), "ok": lambda: 1})
            assert results == {"ok": 1} and degraded == ["hangs"]  # healthy sources keep working
        assert retrieval._in_flight["hangs"] == MAX_IN_FLIGHT  # no more threads than the bound
    finally:
        release.set()
    deadline = time.monotonic() + 5.0
    while retrieval._in_flight["hangs"] and time.monotonic() < deadline:
        time.sleep(0.01)  # the released runs finish and give their slots back
    assert retrieval._in_flight["hangs"] == 0
    results, degraded, _ = retrieval._run_all({"hangs": lambda: "back", "ok": lambda: 1})
    assert results == {"hangs": "back", "ok": 1} and degraded == []
    big_pool.shutdown(wait=True)
    del pool


def test_a_source_that_overruns_its_own_timeout_is_dropped_even_if_it_finishes(pool):
    config = RetrievalConfig(policies={"tight": SourcePolicy(timeout_ms=10)},
                             default_policy=SourcePolicy(timeout_ms=2000))

    def slow_ok():
        time.sleep(0.05)  # at least 50 ms: over tight's 10 ms, well within the 2 s wait
        return "done"

    results, degraded, closed = make_retrieval(config, pool)._run_all({"tight": slow_ok, "loose": lambda: 1})
    assert results == {"loose": 1}
    assert degraded == ["tight"]


def test_a_fail_closed_source_that_fails_is_reported(pool):
    config = RetrievalConfig(policies={"critical": SourcePolicy(timeout_ms=500, fail_open=False)})
    results, degraded, closed = make_retrieval(config, pool)._run_all(
        {"critical": fails, "optional": fails, "ok": lambda: 1})
    assert results == {"ok": 1}
    assert degraded == ["critical", "optional"]
    assert closed == ["critical"]


def test_a_fail_closed_source_that_succeeds_is_not_reported(pool):
    config = RetrievalConfig(policies={"critical": SourcePolicy(fail_open=False)})
    results, degraded, closed = make_retrieval(config, pool)._run_all({"critical": lambda: 1})
    assert results == {"critical": 1} and degraded == [] and closed == []


def test_fault_raise_drops_a_healthy_source(pool):
    calls = []
    config = RetrievalConfig(faults={"victim": "raise"})
    retrieval = make_retrieval(config, pool)
    results, degraded, _ = retrieval._run_all({"victim": lambda: calls.append(1), "other": lambda: 2})
    assert results == {"other": 2}
    assert degraded == ["victim"]
    assert calls == []  # the injected fault raises before the source runs
    with pytest.raises(SourceFault, match="victim"):
        retrieval._guarded("victim", lambda: 1)()


def test_fault_slow_makes_a_source_overrun(pool):
    config = RetrievalConfig(faults={"victim": "slow"}, slow_fault_s=0.2,
                             default_policy=SourcePolicy(timeout_ms=30))
    started = time.monotonic()
    results, degraded, _ = make_retrieval(config, pool)._run_all({"first": lambda: 1, "victim": lambda: 2})
    assert time.monotonic() - started < 5.0
    assert results == {"first": 1}
    assert degraded == ["victim"]


def test_policy_lookup_falls_back_to_the_default():
    special = SourcePolicy(timeout_ms=10, fail_open=False)
    config = RetrievalConfig(policies={"x": special}, default_policy=SourcePolicy(timeout_ms=99))
    assert config.policy("x") is special
    assert config.policy("y").timeout_ms == 99


# -- configuration ---------------------------------------------------------------------------------


def test_the_page_config_gives_the_stage_its_policies_faults_and_boosts():
    config = apply_override(HomepageConfig(), {
        "sources": {"embedding": {"timeout_ms": 40, "fail_open": False}, "content": {"fault": "slow"}},
        "candidates": {"row_depth": 12},
        "selectors": {"editorial_pins": {"boosts": {"12": "0.5"}}},
    }).retrieval()
    assert config.policy("embedding") == SourcePolicy(40, False)
    assert config.policy("sequence") == SourcePolicy(250.0, True)
    assert config.editorial_boost == {12: 0.5}
    assert config.faults == {"content": "slow"}
    assert config.row_depth == 12
    assert config.sources == tuple(HomepageConfig().sources)


def test_a_source_left_out_of_the_config_does_not_run():
    config = apply_override(HomepageConfig(), {"sources": {"embedding": None}}).retrieval()
    assert "embedding" not in config.sources and "sequence" in config.sources


def test_policy_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_ms"):
        SourcePolicy(timeout_ms=0)
    with pytest.raises(ValueError, match="policies.x"):
        RetrievalConfig(policies={"x": {"timeout_ms": 5}})
    with pytest.raises(ValueError, match="faults.x"):
        RetrievalConfig(faults={"x": "explode"})


def test_inline_sources_are_isolated_too_and_run_beside_the_threaded_ones(pool):
    config = RetrievalConfig(policies={"lookup_slow": SourcePolicy(timeout_ms=5)},
                             default_policy=SourcePolicy(timeout_ms=2000), faults={"lookup_bad": "raise"})
    retrieval = make_retrieval(config, pool)
    threads = {}

    def where(name):
        def run():
            threads[name] = threading.get_ident()
            if name == "lookup_slow":
                time.sleep(0.05)  # overruns its 5 ms policy
            return name
        return run

    jobs = {n: where(n) for n in ("model", "lookup", "lookup_bad", "lookup_slow")}
    results, degraded, _ = retrieval._run_all(jobs, inline=frozenset({"lookup", "lookup_bad", "lookup_slow"}))
    assert results == {"model": "model", "lookup": "lookup"}
    assert sorted(degraded) == ["lookup_bad", "lookup_slow"]
    assert threads["lookup"] == threading.get_ident() != threads["model"]


async def _with_ticker(call):
    """Run `call()` on this loop beside a ticker; returns (its result, the ticker's turns)."""
    import asyncio

    ticks = 0

    async def tick():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    try:
        return await call(), ticks
    finally:
        ticker.cancel()


def test_awaited_sources_get_the_same_verdicts_and_leave_the_loop_free(pool):
    """The fused placement awaits the pooled sources on the replica's event loop: the verdicts
    are `_run_all`'s (inline, pooled, raising, hanging, fail-closed), a hanging source is given
    its own timeout and not the longest one, and while it hangs the loop keeps serving other
    coroutines (a blocking wait would give the ticker no turn at all)."""
    import asyncio

    release = threading.Event()
    config = RetrievalConfig(policies={"hangs": SourcePolicy(timeout_ms=200),
                                       "critical": SourcePolicy(timeout_ms=5000, fail_open=False)},
                             default_policy=SourcePolicy(timeout_ms=5000))
    retrieval = make_retrieval(config, pool)
    jobs = {"quick": lambda: 1, "hangs": lambda: release.wait(10.0), "critical": fails,
            "lookup": lambda: [3]}
    started = time.monotonic()
    try:
        (results, degraded, closed), ticks = asyncio.run(
            _with_ticker(lambda: retrieval._run_all_async(jobs, inline=frozenset({"lookup"}))))
        elapsed = time.monotonic() - started
        returned_while_hanging = not release.is_set()
    finally:
        release.set()
    assert returned_while_hanging
    assert elapsed < 2.5  # its own 200 ms, not the others' 5 s
    assert results == {"quick": 1, "lookup": [3]}
    assert degraded == ["hangs", "critical"] and closed == ["critical"]
    assert ticks >= 5  # ~20 turns in the 200 ms the hanging source was given


def test_an_awaited_source_not_back_by_its_own_deadline_is_dropped_though_it_ends_before_the_others(pool):
    import asyncio

    config = RetrievalConfig(policies={"tight": SourcePolicy(timeout_ms=50)},
                             default_policy=SourcePolicy(timeout_ms=5000))
    jobs = {"tight": lambda: time.sleep(0.3) or "late", "loose": lambda: time.sleep(0.6) or "fine"}
    results, degraded, _ = asyncio.run(make_retrieval(config, pool)._run_all_async(jobs))
    assert results == {"loose": "fine"} and degraded == ["tight"]


def test_the_slow_fault_on_an_inline_source_sleeps_off_the_loop(pool):
    """Chaos on a row source (inline: it runs on the caller's thread) must not freeze a replica's
    event loop: on the awaited path the faulted source runs on the pool and is dropped in time."""
    import asyncio

    config = RetrievalConfig(policies={"lookup": SourcePolicy(timeout_ms=100)},
                             default_policy=SourcePolicy(timeout_ms=5000),
                             faults={"lookup": "slow"}, slow_fault_s=0.5)
    retrieval = make_retrieval(config, pool)
    (results, degraded, _), ticks = asyncio.run(_with_ticker(
        lambda: retrieval._run_all_async({"lookup": lambda: [1], "other": lambda: 2},
                                         inline=frozenset({"lookup"}))))
    assert results == {"other": 2} and degraded == ["lookup"]
    assert ticks >= 3  # the loop turned while the fault slept (inline on the loop: 0 turns)
