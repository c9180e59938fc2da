"""Event validation: every malformed field gets a reason naming it; good events round-trip."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from marquee.schema import (
    EVENT_SCHEMA,
    EVENT_TYPES,
    STORED_EVENT_SCHEMA,
    TITLE_REQUIRED_TYPES,
    Event,
    EventError,
    events_to_table,
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
