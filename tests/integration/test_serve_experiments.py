"""Experiments through the running system (named test_serve_* to run with the other users of the
session's serve_app): the experiments file under HOME reaches the replicas without a restart; the
page and its decision record carry the assignments; the first page in a variant logs one exposure;
a bad edit is refused whole (named in /healthz) while the running version keeps serving; an
interleaving variant serves a team-drafted page whose record names the teams."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from experiments.allocation import Allocator
from experiments.spec import load_spec
from tests.live_app import all_replicas, event_log_table, wait_for, write_followed_file

pytestmark = pytest.mark.timeout(600)

SPEC = """
holdout: 0.1
layers: [ranking]
experiments:
  - name: rankers
    layer: ranking
    traffic: 1.0
    salt: rankers-it
    variants:
      control: {weight: 1}
      popular: {weight: 1, override: {scorer: popularity}}
      tdi: {weight: 1, override: {interleaving: {rankers: [popularity, ranker]}}}
"""


def log_rows(kind: str, request_ids: set[str] | None = None, member_ids: set[int] | None = None) -> list[dict]:
    return [r for r in event_log_table().to_pylist() if r["type"] == kind
            and (request_ids is None or r["request_id"] in request_ids)
            and (member_ids is None or r["member_id"] in member_ids)]


def test_serve_experiments_file_is_a_hot_value_with_assignments_exposures_and_interleaving(serve_app):
    path = serve_app.paths.experiments
    members = list(range(1, 121))
    try:
        with httpx.Client(base_url=serve_app.url, timeout=30) as client:
            write_followed_file(path, SPEC)
            version = load_spec(path).version
            wait_for(lambda: all_replicas(client, lambda e: e.get("version") == version))
            allocator = Allocator(load_spec(path))
            pages = {}
            for m in members:
                page = client.get("/v1/homepage", params={"member_id": m, "request_id": f"exp-{m}"}).json()
                assert page["experiments"] == allocator.assign(m, int(time.time() * 1000)), m
                pages[f"exp-{m}"] = page
            variants = {p["experiments"].get("rankers") for p in pages.values()}
            assert variants == {None, "control", "popular", "tdi"}  # the holdout sees no experiment
            popular = [p for p in pages.values() if p["experiments"].get("rankers") == "popular"]
            assert all(p["model_versions"]["ranker"] == "popularity" for p in popular)

            # a second page for each member: still one exposure per member and variant
            for m in members[:30]:
                client.get("/v1/homepage", params={"member_id": m, "request_id": f"exp2-{m}"})
            assigned = {p["member_id"]: p["experiments"]["rankers"] for p in pages.values() if p["experiments"]}
            exposures = wait_for(lambda: (rows := log_rows("exposure", member_ids=set(members)))
                                 and len(rows) >= len(assigned) and rows)
            time.sleep(1.0)  # anything late would show up now
            exposures = log_rows("exposure", member_ids=set(members))
            assert sorted((r["member_id"], json.loads(r["experiments"])["rankers"]) for r in exposures) == \
                sorted(assigned.items())
            decisions = wait_for(lambda: (rows := log_rows("decision", set(pages))) and len(rows) == len(pages)
                                 and rows)
            for record in decisions:
                assert json.loads(record["experiments"]) == pages[record["request_id"]]["experiments"]
                payload = json.loads(record["payload"])
                assert payload["latency_ms"] > 0
                if pages[record["request_id"]]["experiments"].get("rankers") == "tdi":
                    inter = payload["interleaving"]
                    assert inter["experiment"] == "rankers" and inter["rankers"] == {"A": "popularity", "B": "ranker"}
                    shown = {str(i["title_id"]) for row in pages[record["request_id"]]["rows"] for i in row["items"]}
                    assert inter["teams"] and set(inter["teams"]) <= shown
                else:
                    assert "interleaving" not in payload

            # a bad edit is refused whole: named in /healthz, the running version keeps serving
            write_followed_file(path, SPEC.replace("scorer: popularity", "scorer: nonesuch"))
            wait_for(lambda: all_replicas(client, lambda e: "scorer" in (e.get("error") or "")))
            again = client.get("/v1/homepage", params={"member_id": members[0], "request_id": "exp-bad"}).json()
            assert again["experiments"] == pages[f"exp-{members[0]}"]["experiments"]
            health = client.get("/healthz").json()["experiments"]
            assert health["version"] == version and "experiments[0].variants.popular.override" in health["error"]
    finally:
        path.unlink(missing_ok=True)
    with httpx.Client(base_url=serve_app.url, timeout=30) as client:  # deleting the file ends them all
        wait_for(lambda: all_replicas(client, lambda e: e.get("version") is None))
        assert client.get("/v1/homepage", params={"member_id": 1}).json()["experiments"] == {}
