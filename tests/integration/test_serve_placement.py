"""Placement is configuration, sources fail open, and models hot-swap without a failed request:
all through real Serve HTTP on the shared cluster."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from state.registry import Registry
from tests.live_app import wait_for as wait_for_condition
from deployments.app import deploy
from deployments.candidates import MODEL_SOURCES, ROW_SOURCES

pytestmark = pytest.mark.timeout(600)


def redeploy(serve_app, user_config: dict) -> None:
    deploy({"home": str(serve_app.paths.home), "profile": "single", "user_config": user_config}, 0)


def get_page(url: str, member: int, **params) -> dict:
    response = httpx.get(f"{url}/v1/homepage", params={"member_id": member, **params}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def page_if(page: dict, condition) -> dict | None:
    return page if condition(page) else None


def wait_for(fn, what: str = "condition"):
    """Up to a minute: a replica swap or a split app takes longer than one poll."""
    return wait_for_condition(fn, timeout_s=60.0, what=what)


def test_cluster_profile_runs_the_same_stages_split_and_gives_the_same_page(serve_app):
    base = deploy({"home": str(serve_app.paths.home), "profile": "cluster", "cpu_scale": 0.05}, 0,
                  name="marquee-cluster", route_prefix="/cluster")
    health = wait_for(lambda: _health(base), what="the split app")
    assert health["placement"] == "split"
    assert health["model"]["version"] == _health(serve_app.url)["model"]["version"]
    for member in (5, 17):
        fused = get_page(serve_app.url, member, request_id=f"same-{member}")
        split = get_page(base, member, request_id=f"same-{member}")
        assert split["model_versions"] == fused["model_versions"]
        assert [r["row_id"] for r in split["rows"]] == [r["row_id"] for r in fused["rows"]]
        for a, b in zip(split["rows"], fused["rows"]):
            assert [i["title_id"] for i in a["items"]] == [i["title_id"] for i in b["items"]]
            assert [i["artwork"] for i in a["items"]] == [i["artwork"] for i in b["items"]]
    from ray import serve

    serve.delete("marquee-cluster")


def _health(url: str) -> dict | None:
    try:
        body = httpx.get(f"{url}/healthz", timeout=5).json()
    except Exception:
        return None
    return body if body.get("model", {}).get("version") else None  # split: read from the Retrieval stage


def test_a_failing_source_is_dropped_and_named_and_the_page_still_serves(serve_app):
    pid_before = {_health(serve_app.url)["pid"] for _ in range(30)}  # both replicas, almost surely
    sources = {name: {"timeout_ms": 400} for name in (*MODEL_SOURCES, *ROW_SOURCES)}
    sources["sequence"]["fault"], sources["embedding"]["fault"] = "raise", "slow"
    redeploy(serve_app, {"sources": sources, "candidates": {"slow_fault_s": 1.0}})
    try:
        page = wait_for(lambda: page_if(get_page(serve_app.url, 5), lambda p: "sequence" in p["degraded"]),
                        what="the fault to apply")
        assert set(page["degraded"]) == {"sequence", "embedding"}  # the others are unaffected
        assert page["fallback"] is False and page["rows"]
        pid_after = {_health(serve_app.url)["pid"] for _ in range(30)}
        assert pid_after == pid_before, "reconfiguring hot values restarted a replica"
    finally:
        redeploy(serve_app, {})


def test_all_sources_failing_serves_the_precomputed_popular_rows(serve_app):
    every = {name: {"fault": "raise"} for name in (*MODEL_SOURCES, *ROW_SOURCES)}
    redeploy(serve_app, {"sources": every})
    try:
        page = wait_for(lambda: page_if(get_page(serve_app.url, 5, country="US"), lambda p: p["fallback"]),
                        what="the fallback page")
        assert "personalization" in page["degraded"]
        assert set(MODEL_SOURCES) <= set(page["degraded"])
        rows = {row["row_id"] for row in page["rows"]}
        assert "top_in_country" in rows and all(row["items"] for row in page["rows"])
    finally:
        redeploy(serve_app, {})
    wait_for(lambda: not get_page(serve_app.url, 5)["degraded"], what="recovery")


def test_a_promoted_model_swaps_in_under_load_and_a_broken_one_never_does(serve_app):
    registry = Registry(serve_app.paths.registry)
    original = registry.promoted_version()
    meta = registry.get(original)
    files = {name: registry.read_artifact(original, name) for name in meta.files}
    booster = next(name for name in files if "boosters/" in name)  # its bundle sha256 will not match
    copy = registry.register(files, metrics=meta.metrics, data_window=meta.data_window,
                             feature_schema_hash=meta.feature_schema_hash, parent=original).version
    broken = registry.register({**files, booster: b"truncated"}, metrics=meta.metrics,
                               data_window=meta.data_window, feature_schema_hash=meta.feature_schema_hash,
                               parent=original).version

    failures, versions, stop = [], [], threading.Event()

    def load():
        with httpx.Client(base_url=serve_app.url, timeout=30) as client:
            member = 1
            while not stop.is_set():
                try:
                    response = client.get("/v1/homepage", params={"member_id": member})
                    if response.status_code != 200:
                        failures.append((response.status_code, response.text[:200]))
                    else:
                        versions.append(response.json()["model_versions"].get("ranker"))
                except Exception as exc:  # a dropped connection is a failed request too
                    failures.append(("transport", repr(exc)))
                member = member % 50 + 1

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(1.0)
        registry.promote(copy, reason="hot swap test")
        wait_for(lambda: versions[-8:] == [copy] * 8 if len(versions) >= 8 else False, what=f"{copy} everywhere")
        registry.promote(broken, reason="hot swap test: broken artifact")
        wait_for(lambda: (h := _health(serve_app.url)) and broken in h["model"]["failed_versions"],
                 what="the broken version to be refused")
        time.sleep(1.0)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        registry.promote(original, reason="restore after hot swap test")
    assert not failures, failures[:5]
    assert versions and original in versions and copy in versions
    assert broken not in versions  # the broken version never served
    wait_for(lambda: get_page(serve_app.url, 3)["model_versions"].get("ranker") == original, what="restore")
