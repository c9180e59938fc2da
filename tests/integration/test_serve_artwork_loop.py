"""The artwork loop through the running system (named test_serve_* so it runs after the bench tests,
which stop Serve on the shared cluster, like the other users of the session's serve_app): each page served writes its decision record to
the event log (what the page showed, with the same propensities); impressions and plays posted
with the page's request id become trials for the nearline learner; its new policy version
reaches the replicas without a restart (the page's model_versions.artwork moves on)."""

from __future__ import annotations

import time

import httpx
import pytest
import ray

from marquee.names import BANDIT_LEARNER_ACTOR, EVENT_LOG_ACTOR, NAMESPACE
from marquee.schema import parse_decision

pytestmark = pytest.mark.timeout(600)
HOUR_MS = 3_600_000


def page_items(page: dict) -> list[tuple[dict, dict]]:
    return [(row, item) for row in page["rows"] for item in row["items"]]


def decisions_of(request_ids: set[str]) -> dict[str, object]:
    log = ray.get_actor(EVENT_LOG_ACTOR, namespace=NAMESPACE)
    table = ray.get(log.read.remote(-1, 10_000_000))
    found = {}
    for row in table.to_pylist():
        if row["type"] == "decision" and row["request_id"] in request_ids:
            found[row["request_id"]] = parse_decision(row)
    return found


def test_pages_are_recorded_rewards_join_and_a_learned_version_is_served(serve_app):
    pages = {}
    with httpx.Client(base_url=serve_app.url, timeout=30) as client:
        for i in range(40):
            rid = f"loop-{i}"
            response = client.get("/v1/homepage", params={"member_id": 10 + i % 20, "request_id": rid})
            assert response.status_code == 200, response.text
            pages[rid] = response.json()
        before = {p["model_versions"]["artwork"] for p in pages.values()}
        assert len(before) == 1 and before.pop().startswith("linucb@")

        # the records land (written in batches, off the request path) and say what the page showed
        deadline = time.monotonic() + 30
        records = {}
        while time.monotonic() < deadline and len(records) < len(pages):
            records = decisions_of(set(pages))
            time.sleep(0.5)
        assert set(records) == set(pages)
        for rid, page in pages.items():
            shown = {(item["title_id"], row["row_id"]): item["artwork"] for row, item in page_items(page)}
            decision = records[rid]
            assert decision.member_id == page["member_id"] and len(decision.items) == len(shown)
            for item in decision.items:
                art = shown[(item.title_id, item.row_id)]
                assert (art["artwork_id"], art["propensity"]) == (item.artwork_id, pytest.approx(item.propensity))

        # the member sees the first row and plays its first title; a forged propensity is ignored
        events = []
        for rid, page in pages.items():
            row = page["rows"][0]
            when = records[rid].timestamp_ms
            for item in row["items"]:
                events.append({"event_id": f"imp-{rid}-{item['title_id']}", "member_id": page["member_id"],
                               "title_id": item["title_id"], "type": "impression", "timestamp": when + 1000,
                               "row": row["row_id"], "position": item["position"], "request_id": rid,
                               "artwork": item["artwork"]["artwork_id"], "propensity": 1.0})
            first = row["items"][0]
            events.append({"event_id": f"play-{rid}", "member_id": page["member_id"], "title_id": first["title_id"],
                           "type": "play", "timestamp": when + 5000, "request_id": rid})
        for start in range(0, len(events), 500):
            answer = client.post("/v1/events", json={"events": events[start:start + 500]})
            assert answer.status_code == 200, answer.text

        learner = ray.get_actor(BANDIT_LEARNER_ACTOR, namespace=NAMESPACE)
        ray.get(learner.sync.remote())
        latest = max(d.timestamp_ms for d in records.values())
        ray.get(learner.advance.remote(latest + 2 * HOUR_MS))  # the server's clock closes every window
        stats = ray.get(learner.stats.remote())
        impressions = sum(len(p["rows"][0]["items"]) for p in pages.values())
        assert stats["trials"] >= impressions and stats["rewards"] >= len(pages)
        version = ray.get(learner.update.remote())
        if version is None:  # the learner's own schedule may have published already
            version = ray.get(learner.policy_version.remote())
        assert version and version >= 1

        deadline = time.monotonic() + 30  # replicas poll the store: no restart, no redeploy
        served = None
        while time.monotonic() < deadline:
            page = client.get("/v1/homepage", params={"member_id": 3}).json()
            served = page["model_versions"]["artwork"]
            if served == f"linucb@{version}":
                break
            time.sleep(0.5)
        assert served == f"linucb@{version}"
