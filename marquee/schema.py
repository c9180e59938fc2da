"""Arrow schemas and validated records shared by every layer.

One definition of an event, a title, a member and an artwork variant, so the world generator, the
MovieLens importer, the event log, the feature jobs and the HTTP API cannot drift apart. What a
valid event is lives in one table of rules (EVENT_FIELD_RULES and the typed rules after it): the
pydantic event models and the column-wise check of bulk imports are both built from it.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Annotated, Any, Literal, NamedTuple, Union

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field,
                      PlainValidator, TypeAdapter, ValidationError, WithJsonSchema, create_model,
                      model_validator)
from pydantic_core import PydanticCustomError

# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------

EVENT_TYPES: tuple[str, ...] = (
    "impression",  # a title was shown (row, position, artwork, propensity)
    "play",  # playback started
    "progress",  # value = fraction watched so far (0..1]; payload may carry {"episode": n}
    "completion",  # value = 1.0; title (or episode) finished
    "thumb",  # value = +1 (up), -1 (down) or 0 (cleared)
    "my_list_add",
    "my_list_remove",
    "search",  # title_id may be null; payload {"query": "..."}
    "preference",  # onboarding tastes; title_id may be null; payload {"genres": ["...", ...]}
    "decision",  # the server's record of a homepage it served (decision_event below); never posted
    "exposure",  # the server's record of a member's first page in an experiment's variant; never posted
)
# Types only the server writes (straight to the event log). The public API refuses them, so a
# client cannot forge the artwork arms and propensities the reward join reads from decisions;
# member state and the feature jobs skip them (a record of what was shown is no member behaviour).
SERVER_EVENT_TYPES: tuple[str, ...] = ("decision", "exposure")
CLIENT_EVENT_TYPES: tuple[str, ...] = tuple(t for t in EVENT_TYPES if t not in SERVER_EVENT_TYPES)

# A homepage request id (GET /v1/homepage?request_id=, X-Marquee-Request-Id): events that respond
# to a page carry it, and its decision record is the event f"{DECISION_ID_PREFIX}{request_id}", so
# the log's dedup by event_id keeps one decision per request. Clients may not use the prefix.
MAX_REQUEST_ID_LENGTH = 64
REQUEST_ID_PATTERN = r"^[A-Za-z0-9_.:-]+$"
DECISION_ID_PREFIX = "decision-"
# An exposure's event id (exposure_event below): one per member and variant, so the log's dedup
# keeps the first page's. It carries the decision prefix, which clients may not use, and "/",
# which no request id holds, so neither a client event nor a page's decision can take it first.
EXPOSURE_ID_PREFIX = DECISION_ID_PREFIX + "exposure/"

# Maturity levels, ordered: a profile with level L may see titles with level <= L.
MATURITY_LABELS: tuple[str, ...] = ("kids", "family", "teen", "mature")
MAX_MATURITY = len(MATURITY_LABELS) - 1

ARTWORK_THEMES: tuple[str, ...] = (
    "action", "character", "romance", "comedy", "dark", "family", "scenic", "ensemble",
)
DEVICES: tuple[str, ...] = ("tv", "mobile", "web", "tablet")

# ---------------------------------------------------------------------------------------------
# Arrow schemas (what lands in Parquet)
# ---------------------------------------------------------------------------------------------

TIMESTAMP = pa.timestamp("ms", tz="UTC")

EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("member_id", pa.int64(), nullable=False),
        pa.field("title_id", pa.int64()),
        pa.field("type", pa.string(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("country", pa.string()),
        pa.field("device", pa.string()),
        pa.field("row", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("artwork", pa.string()),
        pa.field("propensity", pa.float64()),
        pa.field("value", pa.float64()),  # progress fraction, thumb +1/-1/0, MovieLens rating
        pa.field("experiments", pa.string()),  # JSON object {experiment: variant}
        pa.field("payload", pa.string()),  # JSON object, type-specific extras
        pa.field("request_id", pa.string()),  # the homepage request the event responds to (Part 6)
    ]
)

# Columns added after event files were first written (WAL segments, compacted and dataset Parquet):
# every reader fills them with nulls for a file that lacks them (marquee.dataset.conform_events),
# so they must be nullable.
ADDED_EVENT_COLUMNS: tuple[str, ...] = ("request_id",)
if any(not EVENT_SCHEMA.field(name).nullable for name in ADDED_EVENT_COLUMNS):
    raise AssertionError("a column added to EVENT_SCHEMA later must be nullable: old files lack it")

# What the event log and the world store on disk: the event plus the log's sequence number.
# Parquet datasets are hive-partitioned by `day=YYYY-MM-DD` (UTC day of `timestamp`).
STORED_EVENT_SCHEMA = EVENT_SCHEMA.append(pa.field("seq", pa.int64(), nullable=False))

TITLE_SCHEMA = pa.schema(
    [
        pa.field("title_id", pa.int64(), nullable=False),
        pa.field("name", pa.string(), nullable=False),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
        pa.field("release_year", pa.int32()),
        pa.field("release_date", pa.date32()),
        pa.field("maturity", pa.int8(), nullable=False),  # index into MATURITY_LABELS
        pa.field("runtime_min", pa.int32()),
        pa.field("countries", pa.list_(pa.string()), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # "movie" or "series"
        pa.field("series_id", pa.int64()),  # seasons of one show share it; null for movies
        pa.field("season", pa.int32()),
        pa.field("episodes", pa.int32(), nullable=False),  # 1 for a movie
    ]
)

ARTWORK_SCHEMA = pa.schema(
    [
        pa.field("artwork_id", pa.string(), nullable=False),  # f"{title_id}-{k}"
        pa.field("title_id", pa.int64(), nullable=False),
        pa.field("theme", pa.string(), nullable=False),
    ]
)

MEMBER_SCHEMA = pa.schema(
    [
        pa.field("member_id", pa.int64(), nullable=False),
        pa.field("country", pa.string(), nullable=False),
        pa.field("maturity", pa.int8(), nullable=False),  # highest level the profile may see
        pa.field("language", pa.string(), nullable=False),
        pa.field("devices", pa.list_(pa.string()), nullable=False),
        # Ground truth of the synthetic world; models and feature jobs must never read it.
        pa.field("taste", pa.list_(pa.float32())),
        pa.field("activity", pa.float32()),  # expected sessions per day
        pa.field("join_date", pa.date32()),
    ]
)

# A dataset directory (world or imported MovieLens) always has this layout:
#   titles.parquet, artwork.parquet, members.parquet, events/day=YYYY-MM-DD/*.parquet,
#   manifest.json ({"source": ..., "seed": ..., counts, "start": iso, "end": iso, "genres": [...]})
DATASET_FILES = ("titles.parquet", "artwork.parquet", "members.parquet", "manifest.json")
EVENTS_DIR = "events"

# ---------------------------------------------------------------------------------------------
# What a valid event is: the rules, written once. The pydantic event models (JSON batches of the
# HTTP API, its OpenAPI schema, `Event.parse` of the event log) and `validate_event_table` (Arrow
# batches of bulk imports, checked a column at a time) are both derived from these tables.
# ---------------------------------------------------------------------------------------------

# Timestamps between 1990-01-01 and 2100-01-01 are accepted (MovieLens starts in 1995); anything
# else is a unit mistake (seconds sent as milliseconds land in 1970).
# Member and title ids: 0..2**53-1, the integers a JSON number holds exactly in every client (a
# JavaScript client, or a fuzzer computing in doubles, rounds larger ones)
MAX_ID = 2**53 - 1
MIN_TIMESTAMP_MS = 631_152_000_000
MAX_TIMESTAMP_MS = 4_102_444_800_000  # exclusive


class EventError(ValueError):
    """A single event is malformed; the message names the field and what was expected."""


@dataclass(frozen=True)
class FieldRule:
    """What one event field may hold; `reason` is the message a violation gets."""

    kind: str  # "text" | "integer" | "number" | "timestamp" | "object" | "type" | "list"
    expect: str = ""  # "<field>: expected <expect>, got <value>"
    required: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    max_length: int | None = None
    nonblank: bool = False
    pattern: str | None = None  # a text must match it (anchored with ^...$ to match it whole)
    forbidden_prefix: str = ""  # a text may not start with it
    choices: tuple[float, ...] = ()
    message: str = ""  # replaces "expected <expect>" (the type-specific rules)
    noun: str = "items"  # a list's items, in "at most N <noun>"
    description: str = ""

    def reason(self, value: Any) -> str:
        return f"{self.message or 'expected ' + self.expect}, got {value!r}"


def _text(max_length: int = 256, description: str = "", expect: str = "", **kw: Any) -> FieldRule:
    return FieldRule("text", expect or f"a string of at most {max_length} characters", max_length=max_length,
                     description=description, **kw)


EVENT_FIELD_RULES: dict[str, FieldRule] = {
    "event_id": FieldRule("text", "a non-empty string of at most 128 characters", required=True, max_length=128,
                          nonblank=True, description="unique per event: a resent batch is deduplicated by it"),
    "member_id": FieldRule("integer", f"an integer >= 0 and <= {MAX_ID}", required=True, ge=0, le=MAX_ID),
    "title_id": FieldRule("integer", f"an integer >= 0 and <= {MAX_ID}", ge=0, le=MAX_ID,
                          description="the title; required except for search, preference and decision events"),
    "type": FieldRule("type", "one of " + ", ".join(CLIENT_EVENT_TYPES), required=True),
    "timestamp": FieldRule("timestamp", "epoch milliseconds or an ISO-8601 time in 1990..2100", required=True,
                           ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS,
                           description="epoch milliseconds, or an ISO-8601 time (UTC when it has no offset)"),
    "country": _text(description="ISO country code of the session"),
    "device": _text(description="one of " + ", ".join(DEVICES) + " for traffic of the gateway"),
    "row": _text(description="row id the title was shown in"),
    "position": FieldRule("integer", "an integer in 0..2147483647", ge=0, lt=2**31,
                          description="position in the row, from 0"),
    "artwork": _text(description="artwork id shown (impressions)"),
    "propensity": FieldRule("number", "a finite number in (0, 1]", gt=0.0, le=1.0,
                            description="probability the shown artwork had of being chosen"),
    "value": FieldRule("number", "a finite number",
                       description="progress/completion: fraction watched in [0, 1]; thumb: +1, -1 or 0"),
    "experiments": FieldRule("object", "a JSON object", description="{experiment: variant}"),
    "payload": FieldRule("object", "a JSON object", description="type-specific extras"),
    "request_id": _text(MAX_REQUEST_ID_LENGTH, pattern=REQUEST_ID_PATTERN,
                        expect=f"a string of at most {MAX_REQUEST_ID_LENGTH} characters matching "
                               f"{REQUEST_ID_PATTERN}",
                        description="the homepage request this event responds to: the X-Marquee-Request-Id / "
                                    "request_id of the page (impressions, plays, progress, completions, thumbs)"),
}
if tuple(EVENT_FIELD_RULES) != tuple(EVENT_SCHEMA.names):  # one list of fields, in one order
    raise AssertionError("EVENT_FIELD_RULES and EVENT_SCHEMA name different fields")

# Rules that depend on the event's type.
TITLE_REQUIRED_TYPES = frozenset(EVENT_TYPES) - {"search", "preference", "decision", "exposure"}
VALUE_RULES: dict[str, FieldRule] = {
    "progress": FieldRule("number", ge=0.0, le=1.0, message="a progress fraction must lie in [0, 1]",
                          description="fraction watched so far"),
    "completion": FieldRule("number", ge=0.0, le=1.0, message="a completion fraction must lie in [0, 1]",
                            description="1.0, or the fraction watched of the finished episode"),
    "thumb": FieldRule("number", required=True, choices=(-1.0, 0.0, 1.0), message="a thumb must be +1, -1 or 0",
                       description="+1 up, -1 down, 0 cleared"),
}
# A preference event replaces the member's preferred genres (an empty list clears them): its
# payload is exactly {"genres": [names]}, so readers of the log can rely on it.
MAX_PREFERRED_GENRES = 20
MAX_GENRE_NAME = 64
PREFERENCE_PAYLOAD_RULE = FieldRule("object", 'a JSON object {"genres": [...]}', required=True,
                                    message="", description='{"genres": [names]}: replaces the preferred genres')
PREFERENCE_GENRES_RULE = FieldRule("list", "a list of genre names", required=True,
                                   max_length=MAX_PREFERRED_GENRES, noun="genres")
GENRE_NAME_RULE = FieldRule("text", f"a non-empty string of at most {MAX_GENRE_NAME} characters", required=True,
                            max_length=MAX_GENRE_NAME, nonblank=True)


_REQUIRED_TITLE_RULE = replace(EVENT_FIELD_RULES["title_id"], required=True, description="the title")

# Every event but a decision: its id may not take a decision's (which would make the log drop the
# server's record of that page as a duplicate).
MEMBER_EVENT_ID_RULE = replace(EVENT_FIELD_RULES["event_id"], forbidden_prefix=DECISION_ID_PREFIX,
                               expect=f"{EVENT_FIELD_RULES['event_id'].expect}, not starting with "
                                      f"{DECISION_ID_PREFIX!r} (the server's decision records)")

# A decision event (decision_event below): request_id required, event_id f"decision-{request_id}",
# payload {"policy", "policy_version", "items": [[title_id, artwork_id, propensity, row_id,
# position], ...], "context": {...}}; each item follows the rules of the impression field it is.
DECISION_ITEM_FIELDS: tuple[str, ...] = ("title_id", "artwork_id", "propensity", "row_id", "position")
_DECISION_ITEM_RULES: dict[str, FieldRule] = {
    "title_id": _REQUIRED_TITLE_RULE,
    "artwork_id": replace(EVENT_FIELD_RULES["artwork"], required=True, description="the artwork arm shown"),
    "propensity": replace(EVENT_FIELD_RULES["propensity"], required=True),
    "row_id": replace(EVENT_FIELD_RULES["row"], required=True),
    "position": replace(EVENT_FIELD_RULES["position"], required=True),
}
MAX_POLICY_NAME = 64
DECISION_ID_RULE = FieldRule("text", required=True,
                             message=f"a decision's event_id is {DECISION_ID_PREFIX!r} + its request_id")
DECISION_RULES: dict[str, FieldRule] = {
    "request_id": replace(EVENT_FIELD_RULES["request_id"], required=True),
    "payload": FieldRule("object", 'a JSON object {"policy", "policy_version", "items", "context"}', required=True),
    "payload.policy": FieldRule("text", f"a non-empty string of at most {MAX_POLICY_NAME} characters",
                                required=True, max_length=MAX_POLICY_NAME, nonblank=True),
    "payload.policy_version": FieldRule("integer", f"an integer >= 0 and <= {MAX_ID}", required=True, ge=0,
                                        le=MAX_ID),
    "payload.items": FieldRule("list", "a list of [" + ", ".join(DECISION_ITEM_FIELDS) + "]", required=True),
    "payload.items[]": FieldRule("list", "[" + ", ".join(DECISION_ITEM_FIELDS) + "]", required=True),
    **{f"payload.items[].{name}": rule for name, rule in _DECISION_ITEM_RULES.items()},
    "payload.context": FieldRule("object", "a JSON object", required=True),
}


EXPERIMENT_NAME_PATTERN = r"[A-Za-z0-9_-]+"  # experiment and variant names (experiments/spec.py NAME_RE)
EXPOSURE_RULES: dict[str, FieldRule] = {
    "event_id": FieldRule("text", required=True, pattern=rf"^{re.escape(EXPOSURE_ID_PREFIX)}{EXPERIMENT_NAME_PATTERN}"
                                                         rf"/{EXPERIMENT_NAME_PATTERN}/[0-9]+$",
                          message=f"an exposure's event_id is {EXPOSURE_ID_PREFIX!r} + experiment/variant/member_id"),
    "request_id": replace(EVENT_FIELD_RULES["request_id"], required=True),
    "experiments": replace(EVENT_FIELD_RULES["experiments"], required=True),
}


def rule_for(event_type: str | None, path: str) -> FieldRule | None:
    """The rule behind a field path of an event ("value", "payload.genres[]")."""
    if path == "value" and event_type in VALUE_RULES:
        return VALUE_RULES[event_type]
    if path == "title_id" and event_type in TITLE_REQUIRED_TYPES:
        return _REQUIRED_TITLE_RULE
    if event_type == "preference" and path.startswith("payload"):
        return {"payload": PREFERENCE_PAYLOAD_RULE, "payload.genres": PREFERENCE_GENRES_RULE,
                "payload.genres[]": GENRE_NAME_RULE}.get(path)
    if event_type == "decision":
        if path in DECISION_RULES or path.startswith("payload"):
            return DECISION_RULES.get(path)
    elif event_type == "exposure" and path in EXPOSURE_RULES:
        return EXPOSURE_RULES[path]
    elif path == "event_id":
        return MEMBER_EVENT_ID_RULE
    return EVENT_FIELD_RULES.get(path)


# -- (a) the pydantic models, from the rules ---------------------------------------------------

_OWN_MESSAGE = "event_field"  # a custom error whose message is already the reason


def _timestamp_ms(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, datetime)):
        raise PydanticCustomError(_OWN_MESSAGE, "expected epoch milliseconds or an ISO-8601 string")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise PydanticCustomError(_OWN_MESSAGE, "expected whole epoch milliseconds, got {value}",
                                      {"value": value})
        ms = int(value)
    elif isinstance(value, int):
        ms = value
    else:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise PydanticCustomError(_OWN_MESSAGE, "not an ISO-8601 time: {value!r}",
                                          {"value!r": repr(value)}) from None
        stamp = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        ms = int(stamp.timestamp() * 1000)
    if not MIN_TIMESTAMP_MS <= ms < MAX_TIMESTAMP_MS:
        raise PydanticCustomError(_OWN_MESSAGE, "{value} is outside 1990..2100 (epoch milliseconds?)",
                                  {"value": repr(value) if not isinstance(value, datetime) else value.isoformat()})
    return ms


def _json_object_text(value: Any) -> Any:
    """JSON text of an object (the form the log stores) is read as that object."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise PydanticCustomError(_OWN_MESSAGE, "not valid JSON ({msg})", {"msg": exc.msg}) from None
    return value


_TIMESTAMP_JSON_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": MIN_TIMESTAMP_MS, "exclusiveMaximum": MAX_TIMESTAMP_MS},
        # RFC 3339 in 1991..2098 (days 01..28 of every month, so each string it allows is a real
        # time inside the accepted range whatever its offset); the log accepts any ISO-8601 time
        # in 1990..2100, which JSON Schema cannot say in a form a client or a fuzzer can use
        {"type": "string", "pattern": r"^(199[1-9]|20[0-8]\d|209[0-8])-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])"
                                      r"T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|[+-](0\d|1[0-3]):[0-5]\d)$"},
    ],
}


def _whole_number(value: Any) -> Any:
    """JSON has one number type: 35.0 is the integer 35 (as JSON Schema's "integer" says); 35.5
    and "35" stay what they are, and are refused by the strict integer check after this."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# "Not blank": one character outside every whitespace set the validators and clients use (Python,
# Rust's regex in pydantic, RE2 in Arrow, ECMA-262 in JSON Schema clients disagree on U+0085 and
# U+FEFF, so `\S` meant different things to each). Literal characters: every engine reads them.
_SPACES = [0x9, 0xA, 0xB, 0xC, 0xD, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029,
           0x202F, 0x205F, 0x3000, 0xFEFF]
NONBLANK_PATTERN = "[^" + "".join(map(chr, _SPACES)) + "]"


def json_int(**limits: Any) -> Any:
    """An integer as JSON means it: whole numbers only, never a string or a boolean. (The limits
    sit on the int itself, before the validator wraps it, so the JSON schema shows them.)"""
    return Annotated[int, Field(strict=True, **limits), BeforeValidator(_whole_number)]


def _annotation(rule: FieldRule) -> Any:
    limits = {key: getattr(rule, key) for key in ("ge", "gt", "le", "lt") if getattr(rule, key) is not None}
    if rule.kind == "text":
        text = Annotated[str, Field(strict=True, min_length=1 if rule.nonblank else None, max_length=rule.max_length,
                                    pattern=rule.pattern or (NONBLANK_PATTERN if rule.nonblank else None))]
        if not rule.forbidden_prefix:
            return text
        prefix = rule.forbidden_prefix

        def not_prefixed(value: str) -> str:
            if value.startswith(prefix):
                raise ValueError(f"starts with {prefix!r}")
            return value
        return Annotated[text, AfterValidator(not_prefixed)]
    if rule.kind == "integer":
        return json_int(**limits)
    if rule.kind == "number":
        number = Annotated[float, Field(strict=True, allow_inf_nan=False, **limits)]
        if not rule.choices:
            return number
        choices = rule.choices

        def one_of(value: float) -> float:
            if value not in choices:
                raise ValueError("not one of the choices")
            return value
        return Annotated[number, AfterValidator(one_of),
                         WithJsonSchema({"type": "number", "enum": [int(c) for c in choices]})]
    if rule.kind == "timestamp":
        return Annotated[int, PlainValidator(_timestamp_ms), WithJsonSchema(_TIMESTAMP_JSON_SCHEMA)]
    if rule.kind == "object":
        return Annotated[dict[str, Any], BeforeValidator(_json_object_text)]
    raise ValueError(f"no annotation for a rule of kind {rule.kind!r}")


def _field(annotation: Any, rule: FieldRule) -> tuple[Any, Any]:
    extra = {"description": rule.description} if rule.description else {}
    if rule.required:
        return annotation, Field(..., **extra)
    return annotation | None, Field(None, **extra)


class PreferencePayload(BaseModel):
    """The payload of a preference event."""

    model_config = ConfigDict(extra="forbid")

    genres: Annotated[list[_annotation(GENRE_NAME_RULE)], Field(max_length=MAX_PREFERRED_GENRES)] = Field(
        ..., description="the member's preferred genres; an empty list clears them")


# An item as stored, [title_id, artwork_id, propensity, row_id, position], validated inside
# pydantic-core as a fixed tuple (no Python call per item: a page holds up to hundreds of them);
# event_problems names a failing position by DECISION_ITEM_FIELDS.
_DECISION_ITEM = tuple[tuple(_annotation(_DECISION_ITEM_RULES[name]) for name in DECISION_ITEM_FIELDS)]  # type: ignore[misc]


class DecisionPayload(BaseModel):
    """The payload of a decision event: what the artwork policy chose on one page, and what it saw."""

    model_config = ConfigDict(extra="forbid")

    policy: _annotation(DECISION_RULES["payload.policy"]) = Field(..., description="the artwork policy's name")
    policy_version: _annotation(DECISION_RULES["payload.policy_version"]) = Field(
        ..., description="version of the learned state the policy chose with")
    items: list[_DECISION_ITEM] = Field(  # type: ignore[valid-type]
        ..., description="[" + ", ".join(DECISION_ITEM_FIELDS) + "] per title shown")
    context: dict[str, Any] = Field(..., description="what the policy saw, e.g. {\"hour\": 20, \"member\": [...]}")
    # the serving path's health per page (experiment guardrails), and an interleaved page's teams
    latency_ms: Annotated[float, Field(ge=0.0, allow_inf_nan=False)] | None = Field(
        None, description="server time to build the page")
    degraded: list[str] = Field(default_factory=list, description="what the page lost (empty: nothing)")
    interleaving: dict[str, Any] | None = Field(
        None, description='{"experiment", "rankers": {"A", "B"}, "teams": {title_id: "A" | "B"}}')


class _DecisionEventBase(BaseModel):
    """A decision is the one record of its page: its event_id is fixed by its request_id, so the
    log's dedup by event_id keeps exactly one per request."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _one_record_per_request(self) -> _DecisionEventBase:
        if self.event_id != DECISION_ID_PREFIX + self.request_id:  # type: ignore[attr-defined]
            raise PydanticCustomError(_OWN_MESSAGE, "{reason}", {
                "reason": DECISION_ID_RULE.reason(self.event_id), "field": "event_id"})  # type: ignore[attr-defined]
        return self


def _event_model(event_type: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for name, rule in EVENT_FIELD_RULES.items():
        if name == "type":
            fields[name] = (Literal[event_type], Field(...))
            continue
        rule = rule_for(event_type, name) or rule
        if rule is PREFERENCE_PAYLOAD_RULE:
            annotation = Annotated[PreferencePayload, BeforeValidator(_json_object_text)]
        elif rule is DECISION_RULES["payload"]:
            annotation = Annotated[DecisionPayload, BeforeValidator(_json_object_text)]
        else:
            annotation = _annotation(rule)
        fields[name] = _field(annotation, rule)
    title = "".join(part.title() for part in event_type.split("_")) + "Event"
    doc = f"A {event_type.replace('_', ' ')} event."
    if event_type == "decision":
        return create_model(title, __base__=_DecisionEventBase, __doc__=doc, **fields)
    return create_model(title, __config__=ConfigDict(extra="forbid", title=title), __doc__=doc, **fields)


EVENT_MODELS: dict[str, type[BaseModel]] = {t: _event_model(t) for t in EVENT_TYPES}
# One event a client may post, told apart by `type` (a discriminated union: OpenAPI's oneOf +
# discriminator). A `decision` is no member of it: POST /v1/events answers 422 on events[i].type.
EventIn = Annotated[Union[tuple(EVENT_MODELS[t] for t in CLIENT_EVENT_TYPES)],  # type: ignore[valid-type]
                    Discriminator("type")]
# Any event, decisions included: what the event log accepts from the server (Event.parse).
_ANY_EVENT = Annotated[Union[tuple(EVENT_MODELS.values())], Discriminator("type")]  # type: ignore[valid-type]
_EVENT_ADAPTER: TypeAdapter = TypeAdapter(_ANY_EVENT)
SERVER_WRITTEN_REASON = ("{type} events are written by the server, never posted: send impressions and plays "
                         "with the page's request_id")


def event_problems(errors: list[dict], raw: Any, prefix: str = "") -> list[tuple[str, str]]:
    """(field, reason) per problem of one event from pydantic's errors, worded by the rules;
    `prefix` is where the event sits ("events[3]")."""
    event_type = raw.get("type") if isinstance(raw, dict) else None
    out: list[tuple[str, str]] = []
    unknown: dict[str, list[str]] = {}
    for error in errors:
        loc = [part for part in error["loc"] if part not in EVENT_MODELS]  # the union's tag is no field
        if event_type == "decision" and loc[:2] == ["payload", "items"] and len(loc) == 4 \
                and isinstance(loc[3], int) and loc[3] < len(DECISION_ITEM_FIELDS):
            loc[3] = DECISION_ITEM_FIELDS[loc[3]]  # an item is an array: its positions have names
        path = field_path(loc)
        kind = error["type"]
        where = f"{prefix}.{path}" if prefix and path else (prefix or path)
        if kind == "extra_forbidden":
            parent = field_path(loc[:-1])
            unknown.setdefault(parent, []).append(str(loc[-1]))
            continue
        if kind in ("union_tag_invalid", "union_tag_not_found"):
            where = f"{prefix}.type" if prefix else "type"
            given = raw.get("type") if isinstance(raw, dict) else None
            if given in SERVER_EVENT_TYPES:
                out.append((where, SERVER_WRITTEN_REASON.format(type=given)))
            else:
                out.append((where, "required" if given is None else EVENT_FIELD_RULES["type"].reason(given)))
            continue
        if kind == _OWN_MESSAGE and (error.get("ctx") or {}).get("field"):  # a check across fields
            path = error["ctx"]["field"]
            where = f"{prefix}.{path}" if prefix else path
        if kind in ("model_attributes_type", "dict_type", "model_type") and not path:
            out.append((prefix or "event", f"must be an object, got {type(error['input']).__name__}"))
            continue
        rule = rule_for(event_type, re.sub(r"\[\d+\]", "[]", path))
        if kind == "missing" or (error.get("input") is None and rule is not None and rule.required):
            reason = "required"
        elif kind == _OWN_MESSAGE:
            reason = error["msg"]
        elif kind == "too_long" and rule is not None and rule.kind == "list" and rule.max_length is not None:
            reason = f"at most {error['ctx']['max_length']} {rule.noun}, got {error['ctx']['actual_length']}"
        elif rule is not None:
            reason = rule.reason(error.get("input"))
        else:
            reason = error["msg"]
        out.append((where, reason))
    for parent, names in unknown.items():
        where = ".".join(p for p in (prefix, parent) if p)
        if parent == "payload" and event_type == "preference":
            out.insert(0, (where, f"a preference event carries only genres, got {', '.join(sorted(names))}"))
        else:
            out.insert(0, (where, f"unknown field(s): {', '.join(sorted(names))}"))
    return out


def field_path(loc: Any) -> str:
    """("payload", "genres", 1) -> "payload.genres[1]"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _problem_text(problems: list[tuple[str, str]]) -> str:
    return "; ".join(f"{where}: {reason}" if where else reason for where, reason in problems)


@dataclass(frozen=True, slots=True)
class Event:
    """A validated interaction. Build with `Event.parse(dict)`; never construct unchecked."""

    event_id: str
    member_id: int
    title_id: int | None
    type: str
    timestamp_ms: int
    country: str | None = None
    device: str | None = None
    row: str | None = None
    position: int | None = None
    artwork: str | None = None
    propensity: float | None = None
    value: float | None = None
    experiments: str | None = None
    payload: str | None = None
    request_id: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> "Event":
        """Validate one event (a dict as JSON decodes it) by the event models; EventError names
        every bad field."""
        if not isinstance(raw, dict):
            raise EventError(f"event must be an object, got {type(raw).__name__}")
        try:
            model = _EVENT_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            raise EventError(_problem_text(event_problems(exc.errors(), raw))) from None
        return cls.from_model(model)

    @classmethod
    def from_model(cls, model: BaseModel) -> "Event":
        """The record of an event the models validated (e.g. one of an HTTP batch)."""
        f = model.__dict__
        payload, experiments = f["payload"], f["experiments"]
        if payload is not None:
            payload = _canonical_json(payload.model_dump(exclude_unset=True) if isinstance(payload, BaseModel) else payload)
        if experiments is not None:
            experiments = _canonical_json(experiments)
        return cls(f["event_id"], f["member_id"], f["title_id"], f["type"], f["timestamp"], f["country"],
                   f["device"], f["row"], f["position"], f["artwork"], f["propensity"], f["value"],
                   experiments, payload, f["request_id"])

    def to_row(self) -> dict[str, Any]:
        """A dict keyed like EVENT_SCHEMA (timestamp as epoch milliseconds)."""
        row = {name: getattr(self, name) for name in _EVENT_FIELDS if name != "timestamp"}
        row["timestamp"] = self.timestamp_ms
        return row


_EVENT_FIELDS = frozenset(EVENT_SCHEMA.names)


def _canonical_json(value: dict) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# -- the decision record: the server's account of one homepage ----------------------------------


class DecisionItem(NamedTuple):
    """One title of a page as the policy decided it (the order of DECISION_ITEM_FIELDS)."""

    title_id: int
    artwork_id: str
    propensity: float  # probability the policy had of choosing this artwork, in (0, 1]
    row_id: str
    position: int


@dataclass(frozen=True)
class Decision:
    """A decision event read back (parse_decision): what the server showed on one page and with
    which probabilities. The reward join credits arms from this, never from a client's event."""

    request_id: str
    member_id: int
    timestamp_ms: int
    device: str | None
    country: str | None
    policy: str
    policy_version: int
    items: tuple[DecisionItem, ...]
    experiments: dict[str, Any]
    context: dict[str, Any]
    seq: int | None = None  # the log's sequence number, when the row came from the log

    def item(self, title_id: int, row_id: str | None = None) -> DecisionItem | None:
        """The title's item (in `row_id` when given; else its first on the page), or None."""
        for item in self.items:
            if item.title_id == title_id and (row_id is None or item.row_id == row_id):
                return item
        return None


def _propensity(value: Any, where: str) -> float:
    rule = _DECISION_ITEM_RULES["propensity"]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not rule.gt < value <= rule.le:
        raise ValueError(f"{where}: {rule.reason(value)}")
    return float(value)


def _whole(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    try:
        return operator.index(value)  # numpy integers too (they are not JSON-serializable as such)
    except TypeError:
        raise ValueError(f"{where}: expected an integer, got {value!r}") from None


_REQUEST_ID = re.compile(REQUEST_ID_PATTERN.removesuffix("$") + r"\Z")  # "$" in Python also matches before "\n"


def decision_event(request_id: str, member_id: int, timestamp_ms: int, device: str | None, country: str | None,
                   policy: str, policy_version: int, items: Iterable[Sequence[Any]],
                   experiments: dict[str, str], context: dict[str, Any], *, latency_ms: float | None = None,
                   degraded: Sequence[str] = (), interleaving: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `decision` event of one served page, in the form the event log stores: event_id
    f"decision-{request_id}" (one per request: the log deduplicates by it), the request id in its
    column, `items` ((title_id, artwork_id, propensity, row_id, position) per title shown) with
    `policy`, `policy_version` and `context` (what the policy saw, e.g. {"hour": 20, "member":
    [floats]}) as compact JSON in `payload`, `experiments` as JSON in its column. The page's
    serving health goes in the payload too (`latency_ms`, `degraded`: the experiments'
    guardrails read them), and on an interleaved page which ranker contributed each title.

    Checks what a page could get wrong cheaply (the request id, each item's shape and
    propensity in (0, 1], JSON-serializable context), raising ValueError naming the field; the
    event log validates the whole record by the same rules when it is appended."""
    if not isinstance(request_id, str) or len(request_id) > MAX_REQUEST_ID_LENGTH \
            or _REQUEST_ID.match(request_id) is None:
        raise ValueError(f"request_id: {EVENT_FIELD_RULES['request_id'].reason(request_id)}")
    policy_rule = DECISION_RULES["payload.policy"]
    if not isinstance(policy, str) or not policy.strip() or len(policy) > policy_rule.max_length:
        raise ValueError(f"policy: {policy_rule.reason(policy)}")
    rows = []
    low, high = _DECISION_ITEM_RULES["propensity"].gt, _DECISION_ITEM_RULES["propensity"].le
    for i, item in enumerate(items):
        if len(item) != len(DECISION_ITEM_FIELDS):
            raise ValueError(f"items[{i}]: expected ({', '.join(DECISION_ITEM_FIELDS)}), got {item!r}")
        title_id, artwork_id, propensity, row_id, position = item
        if type(title_id) is int and type(position) is int and type(propensity) is float \
                and low < propensity <= high and type(artwork_id) is str and type(row_id) is str:
            rows.append(item)  # what a page holds (a NaN fails the comparison); a tuple is a JSON array
            continue
        for name, text in (("artwork_id", artwork_id), ("row_id", row_id)):
            if not isinstance(text, str):
                raise ValueError(f"items[{i}].{name}: {_DECISION_ITEM_RULES[name].reason(text)}")
        rows.append([_whole(title_id, f"items[{i}].title_id"), artwork_id,
                     _propensity(propensity, f"items[{i}].propensity"), row_id, _whole(position, f"items[{i}].position")])
    payload = {"policy": policy, "policy_version": _whole(policy_version, "policy_version"), "items": rows,
               "context": context}
    if latency_ms is not None:
        payload["latency_ms"] = round(float(latency_ms), 3)
    if degraded:
        payload["degraded"] = list(degraded)
    if interleaving is not None:
        payload["interleaving"] = interleaving
    return {"event_id": DECISION_ID_PREFIX + request_id, "member_id": member_id, "type": "decision",
            "timestamp": timestamp_ms, "device": device, "country": country, "request_id": request_id,
            "experiments": _record_json(experiments, "experiments", experiments),
            "payload": _record_json(payload, "context", context)}


def exposure_event(experiment: str, variant: str, member_id: int, request_id: str, timestamp_ms: int) -> dict[str, Any]:
    """The `exposure` event of a member's first page in `variant` of `experiment`: event_id
    EXPOSURE_ID_PREFIX + "experiment/variant/member_id" (the log keeps the first: a replica may
    send it again after a restart), the page's request id, and {experiment: variant}. Analysis
    counts a member from this moment on, and only members with one (Kohavi et al. 2020, ch. 20:
    members assigned but never exposed dilute the effect)."""
    name = re.compile(EXPERIMENT_NAME_PATTERN + r"\Z")
    for field, value in (("experiment", experiment), ("variant", variant)):
        if not isinstance(value, str) or name.match(value) is None:
            raise ValueError(f"{field}: expected a name matching {EXPERIMENT_NAME_PATTERN}, got {value!r}")
    return {"event_id": f"{EXPOSURE_ID_PREFIX}{experiment}/{variant}/{_whole(member_id, 'member_id')}",
            "member_id": member_id, "type": "exposure", "timestamp": timestamp_ms, "request_id": request_id,
            "experiments": orjson.dumps({experiment: variant}).decode()}


def _record_json(value: dict, where: str, free_form: Any) -> str:
    """Compact JSON with sorted keys of what a record holds (orjson: a tenth of json.dumps' time
    on a page's record, measured). The items are checked already, so a failure is the named
    free-form part's; orjson writes NaN as null, so non-finite numbers in it are refused first."""
    if not isinstance(free_form, dict):
        raise ValueError(f"{where}: expected a dict, got {type(free_form).__name__}")
    _refuse_non_finite(free_form, where)
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError as exc:  # orjson.JSONEncodeError: a value JSON cannot hold
        raise ValueError(f"{where}: not JSON-serializable ({exc})") from None


def _refuse_non_finite(value: Any, where: str) -> None:
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"{where}: not JSON-serializable (non-finite number {value!r})")
    elif isinstance(value, np.ndarray):
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            raise ValueError(f"{where}: not JSON-serializable (non-finite numbers in an array)")
    elif isinstance(value, dict):
        for item in value.values():
            _refuse_non_finite(item, where)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refuse_non_finite(item, where)



def parse_decision(row: dict[str, Any]) -> Decision:
    """A decision event (a row of the log, `Event.to_row()`, or `decision_event`'s dict) as a
    Decision, validated by the event rules; EventError names each bad field, e.g.
    "payload.items[3].propensity: expected a finite number in (0, 1], got 1.5". Other columns
    (seq, day) are ignored, nulls are absent values."""
    if not isinstance(row, dict):
        raise EventError(f"decision must be an object, got {type(row).__name__}")
    if row.get("type") != "decision":
        raise EventError(f"type: expected 'decision', got {row.get('type')!r}")
    raw = {name: value for name, value in row.items() if name in _EVENT_FIELDS and value is not None}
    try:
        model = _EVENT_ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise EventError(_problem_text(event_problems(exc.errors(), raw))) from None
    f, payload = model.__dict__, model.payload  # type: ignore[attr-defined]
    return Decision(
        request_id=f["request_id"], member_id=f["member_id"], timestamp_ms=f["timestamp"], device=f["device"],
        country=f["country"], policy=payload.policy, policy_version=payload.policy_version,
        items=tuple(DecisionItem(*item) for item in payload.items),
        experiments=dict(f["experiments"] or {}), context=payload.context, seq=row.get("seq"))


# -- (b) the column-wise check of Arrow tables, from the same rules -----------------------------


@dataclass
class TableCheck:
    """The rows of a table that follow the event rules, and why each other row does not."""

    valid: pa.Table
    rejected: list[tuple[int, str | None, str]]  # (row index in the input, event_id, reason)


def validate_event_table(table: pa.Table) -> TableCheck:
    """Bulk imports (a world's or MovieLens' million events): the rules of `Event.parse`, applied a
    column at a time to a table already in EVENT_SCHEMA's types. Bad rows are left out and named."""
    n = table.num_rows
    types = table.column("type")
    problems: list[tuple[np.ndarray, str, FieldRule]] = []
    for name, rule in EVENT_FIELD_RULES.items():
        if name in ("value", "payload", "event_id", "request_id"):
            continue  # typed rules below
        problems.append((_violations(table.column(name), rule), name, rule))
    needs_title = _mask(pc.is_in(types, value_set=pa.array(sorted(TITLE_REQUIRED_TYPES))))
    problems.append((needs_title & _mask(pc.is_null(table.column("title_id"))), "title_id", _REQUIRED_TITLE_RULE))
    typed = {t: _mask(pc.equal(types, t)) for t in [*VALUE_RULES, "preference", *SERVER_EVENT_TYPES]}
    decision, exposure = typed["decision"], typed["exposure"]
    member = ~decision & ~exposure
    event_id, request_id = table.column("event_id"), table.column("request_id")
    for rows, name, rule in ((member, "event_id", MEMBER_EVENT_ID_RULE),
                             (decision, "event_id", EVENT_FIELD_RULES["event_id"]),
                             (exposure, "event_id", EXPOSURE_RULES["event_id"]),
                             (member, "request_id", EVENT_FIELD_RULES["request_id"]),
                             (decision, "request_id", DECISION_RULES["request_id"]),
                             (exposure, "request_id", EXPOSURE_RULES["request_id"]),
                             (exposure, "experiments", EXPOSURE_RULES["experiments"])):
        problems.append((rows & _violations(table.column(name), rule), name, rule))
    if decision.any():  # one record per request: event_id is the prefix + request_id
        expected = pc.binary_join_element_wise(DECISION_ID_PREFIX, request_id, "")
        problems.append((decision & _mask(pc.not_equal(event_id, expected)), "event_id", DECISION_ID_RULE))
    untyped_value = ~np.logical_or.reduce([typed[t] for t in VALUE_RULES])
    problems.append((untyped_value & _violations(table.column("value"), EVENT_FIELD_RULES["value"]),
                     "value", EVENT_FIELD_RULES["value"]))
    for event_type, rule in VALUE_RULES.items():
        problems.append((typed[event_type] & _violations(table.column("value"), rule), "value", rule))
    payload = table.column("payload")
    problems.append((~typed["preference"] & ~decision & _violations(payload, EVENT_FIELD_RULES["payload"]),
                     "payload", EVENT_FIELD_RULES["payload"]))
    payload_reasons = {**_typed_payload_reasons(payload, typed["preference"], "preference"),
                       **_typed_payload_reasons(payload, decision, "decision")}

    bad = np.zeros(n, dtype=bool)
    for mask, _, _ in problems:
        bad |= mask
    bad[list(payload_reasons)] = True
    if not bad.any():
        return TableCheck(table, [])
    reasons: dict[int, list[str]] = {}
    for mask, name, rule in problems:
        rows = np.flatnonzero(mask)
        if rows.size:
            values = table.column(name).take(pa.array(rows)).to_pylist()
            for row, value in zip(rows.tolist(), values):
                reasons.setdefault(row, []).append(f"{name}: " + ("required" if value is None else rule.reason(value)))
    for row, text in payload_reasons.items():
        reasons.setdefault(row, []).append(text)
    bad_rows = sorted(reasons)
    ids = table.column("event_id").take(pa.array(bad_rows)).to_pylist()
    rejected = [(row, event_id, "; ".join(reasons[row])) for row, event_id in zip(bad_rows, ids)]
    return TableCheck(table.filter(pa.array(~bad)), rejected)


def _mask(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def _violations(column: pa.ChunkedArray, rule: FieldRule) -> np.ndarray:
    """Rows of `column` that break `rule` (a null only when the rule requires a value)."""
    present = column
    if rule.kind == "timestamp":
        present = pc.cast(column, pa.int64())
    bad = _mask(pc.is_null(present)) if rule.required else np.zeros(len(column), dtype=bool)
    if rule.kind in ("integer", "number", "timestamp"):
        if rule.kind == "number":
            bad |= ~_mask(pc.is_finite(present)) & ~_mask(pc.is_null(present))
        for key, op in (("ge", pc.less), ("gt", pc.less_equal), ("le", pc.greater), ("lt", pc.greater_equal)):
            bound = getattr(rule, key)
            if bound is None:
                continue
            try:
                limit = pa.scalar(bound, present.type)
            except (pa.ArrowInvalid, OverflowError):  # the column's type cannot hold a value past it
                continue
            bad |= _mask(op(present, limit))
        if rule.choices:
            bad |= ~_mask(pc.is_in(present, value_set=pa.array(rule.choices, present.type))) & \
                ~_mask(pc.is_null(present))
    elif rule.kind == "text":
        if rule.max_length is not None:
            bad |= _mask(pc.greater(pc.utf8_length(present), rule.max_length))
        for pattern in (rule.pattern, NONBLANK_PATTERN if rule.nonblank else None):
            if pattern is not None:
                bad |= ~_mask(pc.match_substring_regex(present, pattern)) & ~_mask(pc.is_null(present))
        if rule.forbidden_prefix:
            bad |= _mask(pc.starts_with(present, rule.forbidden_prefix))
    elif rule.kind == "type":
        bad |= ~_mask(pc.is_in(present, value_set=pa.array(EVENT_TYPES)))
    elif rule.kind == "object":  # JSON text; repeated payloads are parsed once
        texts = pc.unique(present.drop_null() if hasattr(present, "drop_null") else present).to_pylist()
        wrong = [t for t in texts if t is not None and not _is_json_object(t)]
        if wrong:
            bad |= _mask(pc.is_in(present, value_set=pa.array(wrong, pa.string())))
    return bad


def _is_json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _typed_payload_reasons(payload: pa.ChunkedArray, rows: np.ndarray, event_type: str) -> dict[int, str]:
    """Row -> reason for the `rows` (preference or decision events) whose payload does not have
    their type's shape (by the payload model of their event model)."""
    out: dict[int, str] = {}
    indices = np.flatnonzero(rows)
    if not indices.size:
        return out
    adapter = _PAYLOAD_ADAPTERS[event_type]
    for row, text in zip(indices.tolist(), payload.take(pa.array(indices)).to_pylist()):
        if text is None:
            out[row] = "payload: required"
            continue
        try:
            adapter.validate_python(_json_object_text(text))
        except PydanticCustomError as exc:
            out[row] = f"payload: {exc}"
        except ValidationError as exc:
            errors = [{**e, "loc": ("payload", *e["loc"])} for e in exc.errors()]
            out[row] = _problem_text(event_problems(errors, {"type": event_type}))
    return out


_PAYLOAD_ADAPTERS: dict[str, TypeAdapter] = {"preference": TypeAdapter(PreferencePayload),
                                             "decision": TypeAdapter(DecisionPayload)}


def events_to_table(events: list[Event], seqs: list[int] | None = None) -> pa.Table:
    """Columnar form of validated events; with `seqs`, in STORED_EVENT_SCHEMA."""
    columns: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}
    for event in events:
        for name in EVENT_SCHEMA.names:
            columns[name].append(event.timestamp_ms if name == "timestamp" else getattr(event, name))
    arrays = [pa.array(columns[f.name], type=f.type) for f in EVENT_SCHEMA]
    if seqs is None:
        return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
    if len(seqs) != len(events):
        raise ValueError(f"{len(seqs)} sequence numbers for {len(events)} events")
    arrays.append(pa.array(seqs, type=pa.int64()))
    return pa.Table.from_arrays(arrays, schema=STORED_EVENT_SCHEMA)
