"""The API models are the answers: real pages, titles and events validate against them, and the
column-wise check of bulk imports follows the same event rules as `Event.parse`."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
from pydantic import ValidationError
from test_homepage import CATALOG, Stages, page_of, snapshot  # the shared homepage fakes

from actors.member_state import MemberSnapshot
from deployments.homepage import HomepageRequest
from marquee.api import AppendAnswer, EventBatch, Homepage, Title
from marquee.schema import (
    EVENT_SCHEMA,
    MAX_ID,
    Event,
    EventError,
    decision_event,
    events_to_table,
    validate_event_table,
)

T0 = 1_700_000_000_000


def _pages() -> dict[str, dict]:
    failing_member = Stages()
    failing_member.member_error = ConnectionError("actor gone")
    failing_retrieval = Stages()
    failing_retrieval.retrieve_error = RuntimeError("no model loaded")
    return {
        "personalized": page_of(Stages()),
        "cold start": page_of(Stages(member=MemberSnapshot.empty(99)), HomepageRequest(99, request_id="r")),
        "member state down": page_of(failing_member),
        "popular fallback": page_of(failing_retrieval),
        "overrides": page_of(Stages(member=snapshot()), HomepageRequest(1, country="FR", device="mobile",
                                                                      maturity="kids", request_id="x")),
    }


@pytest.mark.parametrize("name", ["personalized", "cold start", "member state down", "popular fallback", "overrides"])
def test_real_pages_validate_against_the_homepage_model(name):
    page = _pages()[name]
    model = Homepage.model_validate(page)  # extra="forbid": a field the model does not describe fails
    # ... and the model describes the page exactly: dumping it gives the page back
    assert json.loads(model.model_dump_json()) == json.loads(json.dumps(page))


def test_the_homepage_model_refuses_a_page_that_drifted():
    page = page_of(Stages())
    with pytest.raises(ValidationError, match="surprise"):
        Homepage.model_validate({**page, "surprise": 1})
    broken = json.loads(json.dumps(page))
    del broken["rows"][0]["items"][0]["artwork"]
    with pytest.raises(ValidationError, match="artwork"):
        Homepage.model_validate(broken)


def test_a_catalog_title_validates_against_the_title_model():
    from deployments.service import MarqueeService

    title_id = next(iter(CATALOG.titles))
    service = MarqueeService.__new__(MarqueeService)  # only the catalog is needed to answer a title
    service.catalog = CATALOG
    Title.model_validate(service.title(title_id))


def test_an_event_log_answer_validates_against_the_append_model(tmp_path):
    from actors.events import EventLog, result_as_dict

    with EventLog(tmp_path / "log") as log:
        result = log.append([{"event_id": "a", "member_id": 1, "title_id": 2, "type": "play", "timestamp": T0}])
    AppendAnswer.model_validate(result_as_dict(result))


def test_the_batch_model_is_all_or_nothing_and_bounded():
    good = {"event_id": "a", "member_id": 1, "title_id": 2, "type": "play", "timestamp": T0}
    assert len(EventBatch.model_validate({"events": [good] * 1000}).events) == 1000
    for events in ([], [good] * 1001, [good, {**good, "type": "teleport"}]):
        with pytest.raises(ValidationError):
            EventBatch.model_validate({"events": events})


def test_the_batch_model_refuses_a_decision_the_log_accepts():
    record = GOOD[-1]
    assert record["type"] == "decision" and Event.parse(record).type == "decision"  # the server's path
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        EventBatch.model_validate({"events": [record]})  # the client's path (422 on events[0].type)


# -- one definition of a valid event: the column-wise check agrees with Event.parse ----------------

GOOD = [
    {"event_id": "i1", "member_id": 1, "title_id": 2, "type": "impression", "timestamp": T0, "row": "trending",
     "position": 0, "artwork": "2-0", "propensity": 0.5, "experiments": {"ranker": "b"}},
    {"event_id": "t1", "member_id": 1, "title_id": 2, "type": "thumb", "timestamp": T0, "value": -1},
    {"event_id": "p1", "member_id": 1, "title_id": 2, "type": "progress", "timestamp": T0, "value": 0.4,
     "payload": {"episode": 3}},
    {"event_id": "s1", "member_id": 1, "type": "search", "timestamp": T0, "payload": {"query": "heat"}},
    {"event_id": "g1", "member_id": 1, "type": "preference", "timestamp": T0, "payload": {"genres": ["Drama"]}},
    {"event_id": "r1", "member_id": 1, "title_id": 9, "type": "play", "timestamp": T0, "value": 4.0},  # a rating
    {"event_id": "q1", "member_id": 1, "title_id": 9, "type": "play", "timestamp": T0, "request_id": "req-1"},
    decision_event("req-1", 1, T0, "tv", "US", "linucb", 2, [(2, "2-0", 0.5, "trending", 0)], {"ranker": "b"},
                   {"hour": 3, "member": [0.25]}),
]
DECISION_ROW = {**Event.parse(GOOD[-1]).to_row(), "event_id": "decision-r9", "request_id": "r9"}
GOOD_PAYLOAD = DECISION_ROW["payload"]

# Rows a bulk import may carry that Event.parse refuses: (row in EVENT_SCHEMA columns, field named)
BAD_ROWS = [
    ({"event_id": "  "}, "event_id"),
    ({"event_id": "x" * 129}, "event_id"),
    ({"member_id": -1}, "member_id"),
    ({"member_id": MAX_ID + 1}, "member_id"),
    ({"type": "teleport"}, "type"),
    ({"title_id": None}, "title_id"),
    ({"timestamp": 1_700_000_000}, "timestamp"),  # seconds, not milliseconds
    ({"position": -3}, "position"),
    ({"propensity": 0.0}, "propensity"),
    ({"propensity": float("nan")}, "propensity"),
    ({"value": float("inf")}, "value"),
    ({"type": "thumb", "value": 3.0}, "value"),
    ({"type": "thumb", "value": None}, "value"),
    ({"type": "completion", "value": 1.5}, "value"),
    ({"payload": "[1]"}, "payload"),
    ({"experiments": "{broken"}, "experiments"),
    ({"country": "x" * 257}, "country"),
    ({"type": "preference", "title_id": None, "payload": '{"genres": ["Drama", ""]}'}, "payload.genres[1]"),
    ({"type": "preference", "title_id": None, "payload": '{"genres": ["Drama"], "titles": [1]}'}, "payload"),
    ({"type": "preference", "title_id": None, "payload": None}, "payload"),
    ({"request_id": "x" * 65}, "request_id"),
    ({"request_id": "has space"}, "request_id"),
    ({"request_id": "req\n"}, "request_id"),
    ({"request_id": ""}, "request_id"),
    ({"event_id": "decision-r9"}, "event_id"),  # a decision's id on a play
    # decisions: what only the server writes, checked as strictly in bulk as one by one
    ({**DECISION_ROW, "request_id": None, "event_id": "decision-"}, "request_id"),
    ({**DECISION_ROW, "event_id": "decision-r8"}, "event_id"),
    ({**DECISION_ROW, "payload": None}, "payload"),
    ({**DECISION_ROW, "payload": "[1]"}, "payload"),
    ({**DECISION_ROW, "payload": GOOD_PAYLOAD.replace("0.5", "1.5")}, "payload.items[0].propensity"),
    ({**DECISION_ROW, "payload": GOOD_PAYLOAD.replace('"trending",0', '"trending"')}, "payload.items[0].position"),
    ({**DECISION_ROW, "payload": GOOD_PAYLOAD.replace('"trending",0', '"trending",0,1')}, "payload.items[0]"),
    ({**DECISION_ROW, "payload": GOOD_PAYLOAD.replace('"policy_version":2', '"policy_version":-2')},
     "payload.policy_version"),
]

BASE_ROW = {"event_id": "b", "member_id": 1, "title_id": 2, "type": "play", "timestamp": T0, "country": None,
            "device": None, "row": None, "position": None, "artwork": None, "propensity": None, "value": None,
            "experiments": None, "payload": None, "request_id": None}


def _table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=EVENT_SCHEMA)


def test_valid_events_pass_the_column_check_whole():
    table = events_to_table([Event.parse(e) for e in GOOD])
    checked = validate_event_table(table)
    assert checked.rejected == [] and checked.valid.equals(table)


@pytest.mark.parametrize("change, field", BAD_ROWS)
def test_the_column_check_refuses_what_event_parse_refuses_naming_the_same_field(change, field):
    row = {**BASE_ROW, **change, "event_id": change.get("event_id", "bad")}
    checked = validate_event_table(_table([BASE_ROW, row, {**BASE_ROW, "event_id": "c"}]))
    assert checked.valid.column("event_id").to_pylist() == ["b", "c"]  # the good rows are kept
    ((index, event_id, reason),) = checked.rejected
    assert index == 1 and event_id == row["event_id"]
    assert reason.startswith(f"{field}:"), reason
    as_event = {k: v for k, v in row.items() if v is not None}
    with pytest.raises(EventError) as refused:
        Event.parse(as_event)
    assert f"{field}:" in str(refused.value)


def test_the_column_check_accepts_what_event_parse_accepts():
    rows = [Event.parse(e).to_row() for e in GOOD]
    assert validate_event_table(_table(rows)).rejected == []


def test_blank_means_the_same_to_the_schema_the_api_and_the_log():
    """U+0085 and U+FEFF are whitespace to some regex engines and not to others (ECMA-262, the
    JSON Schema dialect, says U+0085 is not): the published pattern names them, and the API and
    the log refuse exactly what it refuses (schemathesis found "\\u0085" accepted by the schema)."""
    import re

    from marquee.schema import NONBLANK_PATTERN, Event

    for text, ok in (("\x85", False), ("\ufeff", False), ("\u3000", False), (" \t", False), ("\x85a", True)):
        assert bool(re.search(NONBLANK_PATTERN, text)) is ok, repr(text)
        event = {"event_id": text, "member_id": 1, "type": "my_list_add", "title_id": 3,
                 "timestamp": "2026-01-01T00:00:00Z"}
        if ok:
            Event.parse(event)
        else:
            with pytest.raises(Exception, match="event_id"):
                Event.parse(event)
