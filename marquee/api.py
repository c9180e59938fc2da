"""The HTTP API's requests and answers as pydantic models: FastAPI validates requests with them and
publishes them as the OpenAPI schema (/docs), so a client author learns every shape from there.

The event models come from marquee.schema (one definition of a valid event). Answers are
declared here for the schema and checked against real answers in tests; serving does not
validate the homepage per request (it is serialized with orjson as built, see gateway.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from marquee.schema import DEVICES, MATURITY_LABELS, MAX_ID, EventIn, json_int

MAX_EVENTS_PER_BATCH = 1000
MAX_PREFERENCE_GENRES = 20
MAX_PREFERENCE_TITLES = 50


class Exact(BaseModel):
    """A shape described field by field: anything else is refused (requests) or a test failure
    (answers), so the schema cannot drift from what is sent."""

    model_config = ConfigDict(extra="forbid")


class Body(Exact):
    """A request body: exact, and strict about types (a "1" is no integer, a 0 no boolean)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Open(BaseModel):
    """An answer whose listed fields are always there; other helpers' records may add more."""

    model_config = ConfigDict(extra="allow")


# -- errors ------------------------------------------------------------------------------------


class ErrorBody(Exact):
    """Every answer other than 2xx: what was wrong, and which fields."""

    error: str = Field(..., description="what was wrong, naming the field (e.g. 'events[2].type: ...')")
    fields: list[str] | None = Field(None, description="the fields named in `error` (422)")
    accepted: int | None = Field(None, description="events of the batch stored (0: a batch is all or nothing)")
    rejected: int | None = Field(None, description="events of the batch that were malformed")


# -- events --------------------------------------------------------------------------------------


class EventBatch(Body):
    """A batch of events, stored all or nothing: one malformed event refuses the batch (422
    naming `events[i].field`); resending a batch is safe, events are deduplicated by event_id.
    Events that respond to a homepage carry its `request_id`. A `decision` (what a page showed,
    with which propensities) is written by the server alone: posting one is refused (422 on
    `events[i].type`), as is an event_id starting with 'decision-'."""

    events: list[EventIn] = Field(..., min_length=1, max_length=MAX_EVENTS_PER_BATCH,  # type: ignore[valid-type]
                                  description=f"1 to {MAX_EVENTS_PER_BATCH} events (more: 413)")


class RejectedEvent(Exact):
    index: int
    event_id: str | None
    reason: str


class AppendAnswer(Exact):
    """What the event log did with a batch."""

    accepted: int = Field(..., description="events stored now")
    duplicates: int = Field(..., description="events already stored (same event_id): nothing changed")
    rejected: list[RejectedEvent] = Field(..., description="empty: the gateway refuses a batch with a bad event")
    last_seq: int = Field(..., description="the log's newest sequence number after this batch")


# -- preferences ---------------------------------------------------------------------------------


def preferences_model(genres: tuple[str, ...]) -> type[BaseModel]:
    """The onboarding body, with the catalog's genres as its vocabulary (so /docs lists them)."""
    genre = Literal[tuple(genres)] if genres else str  # type: ignore[valid-type]
    return create_model(
        "Preferences", __base__=Body, __doc__="Onboarding tastes of a member: genres they like, titles they pick.",
        genres=(list[genre], Field(default_factory=list, max_length=MAX_PREFERENCE_GENRES,
                                   description="genres of the catalog")),
        titles=(list[json_int(ge=0, le=MAX_ID)], Field(default_factory=list, max_length=MAX_PREFERENCE_TITLES,
                                 description="title ids of the catalog (an unknown one: 404)")))


class PreferencesAnswer(AppendAnswer):
    member_id: int
    genres: list[str]
    titles: list[int]


# -- homepage ------------------------------------------------------------------------------------


class Explanation(Exact):
    sources: list[str] = Field(..., description="candidate sources that proposed the title")
    reasons: list[str] = Field(..., description="why it is shown, in words")


class ArtworkChoice(Exact):
    artwork_id: str | None = Field(..., description="the artwork variant shown; null when the title has none")
    propensity: float = Field(..., description="probability the policy had of choosing it (for off-policy learning)")


class PageItem(Exact):
    title_id: int
    name: str
    position: int = Field(..., description="position in the row, from 0")
    score: float
    genres: list[str]
    explanation: Explanation
    artwork: ArtworkChoice


class PageRow(Exact):
    row_id: str = Field(..., description="e.g. top_in_country, because_you_watched:42, genre:drama")
    title: str
    items: list[PageItem]


class Removals(Exact):
    counts: dict[str, int] = Field(..., description="titles the rules removed, by rule (watched, maturity, ...)")
    total: int


class Homepage(Exact):
    """One member's homepage."""

    request_id: str
    member_id: int
    country: str
    device: Literal[DEVICES]  # type: ignore[valid-type]
    maturity: Literal[MATURITY_LABELS]  # type: ignore[valid-type]
    cold_start: bool | None = Field(..., description="no history yet; null when member state could not be read")
    fallback: bool = Field(..., description="the precomputed popular rows were served")
    model_versions: dict[str, str] = Field(..., description="{stage: model version} (retrieval, ranker; artwork: policy@learned version)")
    experiments: dict[str, str] = Field(..., description="{experiment: variant} this page was built under")
    degraded: list[str] = Field(..., description="stages that failed and were worked around")
    rows: list[PageRow]
    removed: Removals
    timings_ms: dict[str, float] = Field(..., description="milliseconds per stage (also in Server-Timing)")


# -- titles, health, admin -------------------------------------------------------------------------


class Title(Exact):
    title_id: int
    name: str
    genres: list[str]
    maturity: int = Field(..., description=f"index into {list(MATURITY_LABELS)}")
    countries: list[str]
    series_id: int | None
    release_date_ms: int | None
    artwork: list[str] = Field(..., description="artwork variant ids")


class ModelStatus(Open):
    version: str | None = Field(..., description="the model version served; null until one is loaded")


class Health(Open):
    status: Literal["ok"]
    placement: Literal["fused", "split"]
    model: ModelStatus
    pid: int
    titles: int
    dataset: str


class ModelVersionInfo(Open):
    version: str
    status: str
    created: str


class ModelList(Open):
    promoted: str | None
    versions: list[ModelVersionInfo]


class Promoted(Open):
    promoted: str = Field(..., description="the version now promoted")


class RetrainOptions(Body):
    """What a retrain job may change: pipeline settings (as `marquee retrain --set`) and whether
    to recompute features first."""

    set: dict[str, Any] = Field(default_factory=dict, description="pipeline settings, e.g. {\"rounds\": 50}")
    skip_features: bool = False


class RetrainStarted(Open):
    job_id: str
    dashboard: str
    status: str
    argv: list[str]
