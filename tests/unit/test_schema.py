"""Event validation: every malformed field gets a reason naming it; good events round-trip; the
server's decision record is built, validated and read back by one definition."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from marquee.schema import (
    CLIENT_EVENT_TYPES,
    DECISION_ID_PREFIX,
    EVENT_SCHEMA,
    EVENT_TYPES,
    SERVER_EVENT_TYPES,
    STORED_EVENT_SCHEMA,
    TITLE_REQUIRED_TYPES,
    Decision,
    DecisionItem,
    Event,
    EventError,
    decision_event,
    events_to_table,
    exposure_event,
    parse_decision,
    validate_event_table,
)

GOOD = {
    "event_id": "e1",
    "member_id": 7,
    "title_id": 42,
    "type": "impression",
    "timestamp": "2026-01-02T20:15:00Z",
    "country": "US",
    "device": "tv",
    "row": "trending",
    "position": 3,
    "artwork": "42-1",
    "propensity": 0.25,
    "experiments": {"ranker": "b"},
    "payload": '{"x": 1}',
}


def test_good_event_parses_and_normalises():
    event = Event.parse(GOOD)
    assert event.timestamp_ms == 1767384900000
    assert json.loads(event.experiments) == {"ranker": "b"}
    assert event.payload == '{"x":1}'
    row = event.to_row()
    assert set(row) == set(EVENT_SCHEMA.names)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"event_id": ""}, "event_id"),
        ({"event_id": 5}, "event_id"),
        ({"member_id": "7"}, "member_id: expected an integer"),
        ({"member_id": -1}, "member_id: expected an integer >= 0"),
        ({"member_id": True}, "member_id"),
        ({"type": "click"}, "type: expected one of"),
        ({"title_id": None}, "title_id: required"),
        ({"timestamp": None}, "timestamp: required"),
        ({"timestamp": 1767384900}, "outside 1990..2100"),  # seconds, not milliseconds
        ({"timestamp": "yesterday"}, "not an ISO-8601"),
        ({"propensity": 0.0}, "propensity"),
        ({"propensity": 1.5}, "propensity"),
        ({"propensity": float("nan")}, "propensity: expected a finite number"),
        ({"experiments": [1]}, "experiments: expected a JSON object"),
        ({"payload": "{broken"}, "payload: not valid JSON"),
        ({"colour": "red"}, "unknown field(s): colour"),
        ({"position": 1.5}, "position: expected an integer"),
    ],
)
def test_malformed_field_is_named(change, fragment):
    with pytest.raises(EventError) as info:
        Event.parse({**GOOD, **change})
    assert fragment in str(info.value)


def test_type_specific_values():
    assert Event.parse({**GOOD, "type": "thumb", "value": -1}).value == -1.0
    with pytest.raises(EventError, match="thumb must be"):
        Event.parse({**GOOD, "type": "thumb", "value": 3})
    with pytest.raises(EventError, match=r"progress fraction must lie in \[0, 1\]"):
        Event.parse({**GOOD, "type": "progress", "value": 1.2})
    search = Event.parse({**GOOD, "type": "search", "title_id": None, "payload": {"query": "heat"}})
    assert search.title_id is None


def test_not_an_object():
    with pytest.raises(EventError, match="must be an object"):
        Event.parse(["e1"])


def test_events_to_table_schemas():
    events = [Event.parse({**GOOD, "event_id": f"e{i}"}) for i in range(3)]
    plain = events_to_table(events)
    assert plain.schema == EVENT_SCHEMA and plain.num_rows == 3
    stored = events_to_table(events, [10, 11, 12])
    assert stored.schema == STORED_EVENT_SCHEMA
    assert stored.column("seq").to_pylist() == [10, 11, 12]
    assert stored.column("timestamp").type == pa.timestamp("ms", tz="UTC")
    with pytest.raises(ValueError, match="2 sequence numbers for 3 events"):
        events_to_table(events, [1, 2])


PREFERENCE = {
    "event_id": "p1", "member_id": 7, "type": "preference", "timestamp": "2026-01-02T20:15:00Z",
    "payload": {"genres": ["drama", "comedy"]},
}


def test_preference_event_needs_no_title_and_keeps_its_genres():
    event = Event.parse(PREFERENCE)
    assert (event.type, event.title_id) == ("preference", None)
    assert json.loads(event.payload) == {"genres": ["drama", "comedy"]}
    assert Event.parse({**PREFERENCE, "payload": '{"genres": []}'}).payload == '{"genres":[]}'  # clears
    assert "preference" not in TITLE_REQUIRED_TYPES and "preference" in EVENT_TYPES


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (None, "payload: required"),
        ({}, "payload.genres: required"),
        ({"genres": "drama"}, "payload.genres: expected a list"),
        ({"genres": {"drama": 1}}, "payload.genres: expected a list"),
        ({"genres": ["drama", ""]}, "payload.genres[1]: expected a non-empty string"),
        ({"genres": ["  "]}, "payload.genres[0]: expected a non-empty string"),
        ({"genres": [3]}, "payload.genres[0]: expected a non-empty string"),
        ({"genres": ["x" * 65]}, "payload.genres[0]"),
        ({"genres": [f"g{i}" for i in range(21)]}, "payload.genres: at most 20 genres, got 21"),
        ({"genres": ["drama"], "titles": [1]}, "payload: a preference event carries only genres"),
        ("[1]", "payload: expected a JSON object"),
    ],
)
def test_malformed_preference_payload_is_named(payload, fragment):
    with pytest.raises(EventError) as info:
        Event.parse({**PREFERENCE, "payload": payload})
    assert fragment in str(info.value)


def test_twenty_genres_are_accepted():
    genres = [f"g{i}" for i in range(20)]
    assert json.loads(Event.parse({**PREFERENCE, "payload": {"genres": genres}}).payload)["genres"] == genres


# -- request_id and the decision record (Part 6) ----------------------------------------------------

ITEMS = [(42, "42-1", 0.25, "trending", 0), (43, "43-0", 1.0, "trending", 1), (42, "42-0", 0.5, "genre:drama", 0)]


def decision(**overrides) -> dict:
    args = {"request_id": "req-1", "member_id": 7, "timestamp_ms": 1767384900000, "device": "tv", "country": "US",
            "policy": "linucb", "policy_version": 3, "items": ITEMS, "experiments": {"artwork": "b"},
            "context": {"hour": 20, "member": [0.5, -0.125]}}
    return decision_event(**{**args, **overrides})


def test_types_split_into_what_clients_post_and_what_the_server_writes():
    assert SERVER_EVENT_TYPES == ("decision", "exposure") and "decision" in EVENT_TYPES
    assert set(CLIENT_EVENT_TYPES) | set(SERVER_EVENT_TYPES) == set(EVENT_TYPES)
    assert not set(CLIENT_EVENT_TYPES) & set(SERVER_EVENT_TYPES)
    assert EVENT_TYPES[:len(CLIENT_EVENT_TYPES)] == CLIENT_EVENT_TYPES  # codes of older types never move
    assert "decision" not in TITLE_REQUIRED_TYPES and "exposure" not in TITLE_REQUIRED_TYPES


def test_an_exposure_is_one_event_per_member_and_variant_that_no_client_or_page_can_take_first():
    record = exposure_event("diversity", "strong", 42, "req-1", 1767384900000)
    assert record["event_id"] == "decision-exposure/diversity/strong/42"
    assert json.loads(record["experiments"]) == {"diversity": "strong"}
    event = Event.parse(record)  # the event log accepts what the server builds
    assert (event.type, event.title_id, event.request_id) == ("exposure", None, "req-1")
    checked = validate_event_table(events_to_table([event]))
    assert checked.rejected == [] and checked.valid.num_rows == 1
    # a client cannot take its id with another event (posting one: test_gateway_api)
    with pytest.raises(EventError, match="event_id: .*not starting with 'decision-'"):
        Event.parse({**GOOD, "event_id": record["event_id"]})
    # a page's decision id is "decision-" + a request id, which never holds "/"
    with pytest.raises(EventError, match="request_id"):
        Event.parse({**GOOD, "request_id": "exposure/diversity/strong/42"})
    # an exposure with a made-up id, or without its request id or assignment, is refused and named
    for broken, field in (({"event_id": "exposure-x"}, "event_id"), ({"request_id": None}, "request_id"),
                          ({"experiments": None}, "experiments")):
        with pytest.raises(EventError, match=f"{field}: "):
            Event.parse({**record, **broken})
        table = validate_event_table(events_to_table([Event.parse(record)]).set_column(
            EVENT_SCHEMA.get_field_index(field), field,
            pa.array([broken[field]], EVENT_SCHEMA.field(field).type)))
        assert table.valid.num_rows == 0 and field in table.rejected[0][2]
    for name, value in (("experiment", "a b"), ("variant", "")):
        with pytest.raises(ValueError, match=f"{name}: expected a name"):
            exposure_event(**{"experiment": "x", "variant": "y", "member_id": 1, "request_id": "r",
                              "timestamp_ms": 1767384900000, name: value})


def test_a_decision_carries_the_pages_serving_health_and_interleaving_teams():
    interleaving = {"experiment": "rankers", "rankers": {"A": "popularity", "B": "ranker"}, "teams": {"1": "A"}}
    record = decision(latency_ms=12.3456, degraded=["ranker"], interleaving=interleaving)
    payload = json.loads(record["payload"])
    assert (payload["latency_ms"], payload["degraded"], payload["interleaving"]) == (12.346, ["ranker"], interleaving)
    assert Event.parse(record).payload == record["payload"]
    with pytest.raises(EventError, match="latency_ms"):
        Event.parse({**record, "payload": json.dumps({**payload, "latency_ms": -1})})


@pytest.mark.parametrize("event_type, extra", [("impression", {}), ("play", {}), ("progress", {"value": 0.5}),
                                               ("completion", {"value": 1.0}), ("thumb", {"value": 1})])
def test_events_responding_to_a_page_carry_its_request_id(event_type, extra):
    event = Event.parse({**GOOD, "type": event_type, "request_id": "0f3a:b_c.d-9", **extra})
    assert event.request_id == "0f3a:b_c.d-9" and event.to_row()["request_id"] == "0f3a:b_c.d-9"
    assert Event.parse(GOOD).request_id is None  # optional


@pytest.mark.parametrize("request_id", ["x" * 65, "", "a b", "a/b", "é", "req\n", 5])
def test_a_malformed_request_id_is_named(request_id):
    with pytest.raises(EventError, match="request_id: expected a string of at most 64 characters matching"):
        Event.parse({**GOOD, "request_id": request_id})


def test_no_client_event_may_take_a_decisions_id():
    with pytest.raises(EventError, match="event_id: .*not starting with 'decision-'"):
        Event.parse({**GOOD, "event_id": DECISION_ID_PREFIX + "req-1"})
    assert Event.parse({**GOOD, "event_id": "my-decision-1"}).event_id == "my-decision-1"


def test_a_decision_is_stored_as_decision_event_built_it_and_reads_back_whole():
    record = decision()
    assert record["event_id"] == "decision-req-1" and record["request_id"] == "req-1"
    assert json.loads(record["experiments"]) == {"artwork": "b"}
    payload = json.loads(record["payload"])
    assert payload == {"policy": "linucb", "policy_version": 3, "items": [list(i) for i in ITEMS],
                       "context": {"hour": 20, "member": [0.5, -0.125]}}
    assert " " not in record["payload"]  # compact
    event = Event.parse(record)  # the event log's validation accepts it...
    assert (event.type, event.title_id, event.payload, event.experiments) == (
        "decision", None, record["payload"], record["experiments"])  # ...and stores exactly that text
    parsed = parse_decision(event.to_row())
    assert parsed == Decision(request_id="req-1", member_id=7, timestamp_ms=1767384900000, device="tv",
                              country="US", policy="linucb", policy_version=3,
                              items=tuple(DecisionItem(*i) for i in ITEMS), experiments={"artwork": "b"},
                              context={"hour": 20, "member": [0.5, -0.125]})
    assert parsed.item(42) == DecisionItem(42, "42-1", 0.25, "trending", 0)  # first on the page
    assert parsed.item(42, "genre:drama").artwork_id == "42-0" and parsed.item(99) is None
    with pytest.raises(AttributeError):
        parsed.policy = "other"  # frozen


def test_a_decision_reads_back_from_a_row_of_the_log():
    row = events_to_table([Event.parse(decision())], [17]).to_pylist()[0]  # timestamp a datetime, seq
    row["day"] = "2026-01-02"  # the partition column of a dataset read
    parsed = parse_decision(row)
    assert (parsed.seq, parsed.timestamp_ms, parsed.items[2].propensity) == (17, 1767384900000, 0.5)


def test_decision_event_accepts_numpy_numbers_and_an_empty_page():
    items = [(np.int64(5), "5-0", np.float64(0.5), "top10", np.int32(2))]
    record = decision(items=items, policy_version=np.int64(1),
                      context={"hour": np.int64(20), "member": np.array([0.5, 0.25], np.float32)})
    assert json.loads(record["payload"])["items"] == [[5, "5-0", 0.5, "top10", 2]]
    assert parse_decision(record).context == {"hour": 20, "member": [0.5, 0.25]}
    assert parse_decision(decision(items=[])).items == ()


@pytest.mark.parametrize("overrides, message", [
    ({"items": [(1, "1-0", 0.0, "r", 0)]}, r"items\[0\]\.propensity: expected a finite number in \(0, 1\]"),
    ({"items": [(1, "1-0", 1.5, "r", 0)]}, r"items\[0\]\.propensity"),
    ({"items": [(1, "1-0", float("nan"), "r", 0)]}, r"items\[0\]\.propensity"),
    ({"items": [(1, "1-0", True, "r", 0)]}, r"items\[0\]\.propensity"),
    ({"items": [(1, "1-0", "0.5", "r", 0)]}, r"items\[0\]\.propensity"),
    ({"items": [ITEMS[0], (1, "1-0", 0.5, "r")]}, r"items\[1\]: expected \(title_id, artwork_id"),
    ({"items": [(1, None, 0.5, "r", 0)]}, r"items\[0\]\.artwork_id"),
    ({"items": [(1.5, "1-0", 0.5, "r", 0)]}, r"items\[0\]\.title_id: expected an integer"),
    ({"items": [(1, "1-0", 0.5, "r", "0")]}, r"items\[0\]\.position"),
    ({"request_id": "a b"}, "request_id: expected a string of at most 64"),
    ({"request_id": "x" * 65}, "request_id"),
    ({"request_id": "req\n"}, "request_id"),
    ({"policy": ""}, "policy: expected a non-empty string"),
    ({"policy_version": "3"}, "policy_version: expected an integer"),
    ({"context": [1]}, "context: expected a dict"),
    ({"context": {"member": [float("nan")]}}, "context: not JSON-serializable"),
    ({"context": {"member": [0.5, float("inf")]}}, "context: not JSON-serializable"),
    ({"context": {"member": np.array([0.5, np.nan])}}, "context: not JSON-serializable"),
    ({"context": {"member": {"x": np.float32("nan")}}}, "context: not JSON-serializable"),
    ({"context": {"when": object()}}, "context: not JSON-serializable"),
    ({"experiments": {"x": {1, 2}}}, "experiments: not JSON-serializable"),
])
def test_decision_event_refuses_what_the_log_would_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        decision(**overrides)


def _with_payload(change) -> dict:
    record = decision()
    payload = json.loads(record["payload"])
    change(payload)
    return {**record, "payload": json.dumps(payload)}


@pytest.mark.parametrize("record, fragment", [
    (_with_payload(lambda p: p["items"][1].__setitem__(2, 1.5)), "payload.items[1].propensity: expected a finite"),
    (_with_payload(lambda p: p["items"][0].__setitem__(2, 0)), "payload.items[0].propensity"),
    (_with_payload(lambda p: p["items"][0].__setitem__(2, None)), "payload.items[0].propensity: required"),
    (_with_payload(lambda p: p["items"][0].pop()), "payload.items[0].position: required"),
    (_with_payload(lambda p: p["items"][0].append(9)), "payload.items[0]: expected [title_id, artwork_id, propensity"),
    (_with_payload(lambda p: p["items"].__setitem__(0, {"title_id": 1})), "payload.items[0]: expected ["),
    (_with_payload(lambda p: p["items"][2].__setitem__(0, -4)), "payload.items[2].title_id: expected an integer >= 0"),
    (_with_payload(lambda p: p["items"][2].__setitem__(4, 1.5)), "payload.items[2].position"),
    (_with_payload(lambda p: p["items"][2].__setitem__(3, 7)), "payload.items[2].row_id"),
    (_with_payload(lambda p: p.pop("items")), "payload.items: required"),
    (_with_payload(lambda p: p.__setitem__("items", "all")), "payload.items: expected a list"),
    (_with_payload(lambda p: p.pop("policy")), "payload.policy: required"),
    (_with_payload(lambda p: p.__setitem__("policy_version", -1)), "payload.policy_version: expected an integer >= 0"),
    (_with_payload(lambda p: p.__setitem__("context", 3)), "payload.context: expected a JSON object"),
    (_with_payload(lambda p: p.__setitem__("arms", [])), "payload: unknown field(s): arms"),
    ({**decision(), "payload": "{broken"}, "payload: not valid JSON"),
    ({**decision(), "payload": None}, "payload: required"),
    ({**decision(), "request_id": None}, "request_id: required"),
    ({**decision(), "event_id": "decision-req-2"}, "event_id: a decision's event_id is 'decision-' + its request_id"),
    ({**decision(), "request_id": "req 1", "event_id": "decision-req 1"}, "request_id: expected a string"),
])
def test_a_malformed_decision_is_refused_naming_the_field(record, fragment):
    for read in (Event.parse, parse_decision):  # the log's validation and the reader say the same
        with pytest.raises(EventError) as info:
            read(record)
        assert fragment in str(info.value), (read, str(info.value))


def test_parse_decision_reads_only_decisions():
    with pytest.raises(EventError, match="type: expected 'decision', got 'impression'"):
        parse_decision(Event.parse(GOOD).to_row())
    with pytest.raises(EventError, match="decision must be an object"):
        parse_decision(["decision"])
