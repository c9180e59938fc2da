"""`marquee bench ingest`'s HTTP run, without Ray: the batches it posts respect the gateway's
limits and get fresh ids, and only a batch answered 200 with every event stored counts as
acknowledged (those ids are what the run then looks up in the log)."""

from __future__ import annotations

import json

import orjson
import pytest

from bench.ingest import HttpTarget, acknowledged, http_bodies, make_events
from deployments.gateway import MAX_BODY_BYTES, MAX_EVENTS_PER_BATCH


def test_bodies_carry_fresh_ids_and_the_same_events():
    events = make_events(7, seed=3)
    bodies, ids = http_bodies([events[:4], events[4:]], "run1")
    assert [len(i) for i in ids] == [4, 3]
    flat = [i for batch in ids for i in batch]
    assert len(set(flat)) == 7 and all(i.startswith("http-run1-") for i in flat)
    sent = [e for body in bodies for e in orjson.loads(body)["events"]]
    assert [e["event_id"] for e in sent] == flat
    assert [{k: v for k, v in e.items() if k != "event_id"} for e in sent] == \
           [{k: v for k, v in e.items() if k != "event_id"} for e in events]
    again, _ = http_bodies([events[:4]], "run2")
    assert orjson.loads(again[0])["events"][0]["event_id"] != sent[0]["event_id"]


def test_batches_over_the_gateway_limits_are_refused_by_name():
    events = make_events(MAX_EVENTS_PER_BATCH + 1, seed=0)
    with pytest.raises(ValueError, match=f"at most {MAX_EVENTS_PER_BATCH}"):
        http_bodies([events], "x")
    fat = [{**e, "device": "x" * 4000} for e in events[:MAX_EVENTS_PER_BATCH]]
    with pytest.raises(ValueError, match=f"at most {MAX_BODY_BYTES}"):
        http_bodies([fat], "x")


def _answer(accepted, duplicates=0, rejected=()):
    return json.dumps({"accepted": accepted, "duplicates": duplicates, "rejected": list(rejected),
                       "last_seq": 9}).encode()


def test_only_fully_stored_batches_count_as_acknowledged():
    ids = [["a", "b"], ["c"], ["d", "e"], ["f"], ["g"]]
    outcomes = [
        [200, 1, 0.010, _answer(2)],                       # stored now
        [200, 3, 0.020, _answer(0, duplicates=1)],         # resent after a lost answer: already stored
        [503, 20, 0.001, b"Request dropped due to backpressure"],  # never admitted
        [200, 1, 0.030, _answer(0, rejected=[{"index": 0, "event_id": "f", "reason": "bad"}])],
        None,                                              # never answered
    ]
    acked, latencies, unacked, problems = acknowledged(outcomes, ids)
    assert acked == ["a", "b", "c"] and latencies == [0.010, 0.020]
    assert unacked == 3 and len(problems) == 3
    assert "HTTP 503" in problems[0] and "rejected" in problems[1] and "no answer" in problems[2]


def test_http_target_checks_its_fields():
    with pytest.raises(ValueError, match="inflight"):
        HttpTarget(inflight=0)
