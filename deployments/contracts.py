"""Typed data passed between the homepage stages, and the contracts of the components.

Every stage (candidate source, scorer, filter, selector, decorator) takes and returns these
frozen records, so a stage can run fused in the orchestrator or behind a DeploymentHandle
without changing shape, and a mismatch between stages fails where it is built rather than deep
inside a request. The component protocols at the end are what HomepageConfig names and
deployments/page_builder.py assembles; the concrete components live beside their stage
(candidates.py, ranking.py, rules.py, selectors.py, decorators.py).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from marquee.names import DAY_MS
from marquee.schema import DEVICES, MATURITY_LABELS, MAX_MATURITY

if TYPE_CHECKING:  # annotations only
    import numpy as np


_EPOCH_ORDINAL_MS = 719_163 * DAY_MS  # date(1970, 1, 1).toordinal() days, in ms


def _check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> None:
    # exact types first: hundreds of records are checked per homepage request
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")


def _check_score(name: str, value: Any) -> None:
    if type(value) is float and math.isfinite(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def _int_tuple(name: str, values: Iterable[Any]) -> tuple[int, ...]:
    out = tuple(values)
    for v in out:
        _check_int(f"{name} item", v)
    return out


@dataclass(frozen=True, slots=True)
class HomepageContext:
    """Everything the stages may know about one homepage request.

    History tuples are ordered most recent first (the row builder picks "because you watched"
    seeds from the front of `recently_watched`). Lists passed in are frozen into tuples/sets.
    """

    member_id: int
    country: str
    device: str
    maturity: int  # highest level the profile may see: index into MATURITY_LABELS
    now_ms: int
    rows_limit: int = 10
    titles_per_row: int = 10
    request_id: str = ""
    watched: frozenset[int] = frozenset()
    continue_watching: tuple[int, ...] = ()
    my_list: tuple[int, ...] = ()
    recently_watched: tuple[int, ...] = ()
    titles_played: int = 0
    first_event_ms: int | None = None
    preferred_genres: tuple[str, ...] = ()  # onboarding tastes (cold start)
    liked: tuple[int, ...] = ()  # thumbs up, including titles picked at onboarding

    def __post_init__(self) -> None:
        _check_int("member_id", self.member_id)
        if not isinstance(self.country, str) or not self.country:
            raise ValueError(f"country must be a non-empty string, got {self.country!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        _check_int("maturity", self.maturity, minimum=0, maximum=MAX_MATURITY)
        _check_int("now_ms", self.now_ms)
        _check_int("rows_limit", self.rows_limit, minimum=1)
        _check_int("titles_per_row", self.titles_per_row, minimum=1)
        if not isinstance(self.request_id, str):
            raise ValueError(f"request_id must be a string, got {type(self.request_id).__name__}")
        object.__setattr__(self, "watched", frozenset(_int_tuple("watched", self.watched)))
        for name in ("continue_watching", "my_list", "recently_watched", "liked"):
            object.__setattr__(self, name, _int_tuple(name, getattr(self, name)))
        _check_int("titles_played", self.titles_played, minimum=0)
        if self.first_event_ms is not None:
            _check_int("first_event_ms", self.first_event_ms)
        if isinstance(self.preferred_genres, str):
            raise ValueError("preferred_genres must be a sequence of strings, not a string")
        object.__setattr__(self, "preferred_genres", tuple(self.preferred_genres))

    @property
    def maturity_label(self) -> str:
        return MATURITY_LABELS[self.maturity]

    @property
    def has_history(self) -> bool:
        return bool(self.watched or self.continue_watching or self.my_list or self.recently_watched)


@dataclass(frozen=True, slots=True)
class TitleInfo:
    """The catalog facts the rules and rows need about one title."""

    title_id: int
    name: str
    genres: tuple[str, ...] = ()
    maturity: int = 0
    countries: frozenset[str] = frozenset()  # where it may be shown; empty means nowhere
    series_id: int | None = None  # seasons of one show share it
    release_date_ms: int | None = None
    # the genres as a set, built once: the row builder tests and compares them for every title
    genre_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_int("title_id", self.title_id)
        if not isinstance(self.name, str):
            raise ValueError(f"TitleInfo {self.title_id}: name must be a string")
        _check_int(f"TitleInfo {self.title_id}: maturity", self.maturity, minimum=0, maximum=MAX_MATURITY)
        if isinstance(self.genres, str):
            raise ValueError(f"TitleInfo {self.title_id}: genres must be a sequence of strings, not a string")
        object.__setattr__(self, "genres", tuple(self.genres))
        object.__setattr__(self, "genre_set", frozenset(self.genres))
        if isinstance(self.countries, str):
            raise ValueError(f"TitleInfo {self.title_id}: countries must be a set of strings, not a string")
        object.__setattr__(self, "countries", frozenset(self.countries))
        if self.series_id is not None:
            _check_int(f"TitleInfo {self.title_id}: series_id", self.series_id)
        if self.release_date_ms is not None:
            _check_int(f"TitleInfo {self.title_id}: release_date_ms", self.release_date_ms)

    def available_in(self, country: str) -> bool:
        return country in self.countries


def catalog_from_rows(rows: Iterable[dict[str, Any]]) -> dict[int, TitleInfo]:
    """Build the catalog from TITLE_SCHEMA records (e.g. `titles_table.to_pylist()`).

    `release_date` may be a datetime.date (Arrow date32) or None.
    """
    catalog: dict[int, TitleInfo] = {}
    for row in rows:
        released = row.get("release_date")
        release_ms = None if released is None else released.toordinal() * DAY_MS - _EPOCH_ORDINAL_MS
        info = TitleInfo(
            title_id=int(row["title_id"]),
            name=row["name"],
            genres=tuple(row.get("genres") or ()),
            maturity=int(row["maturity"]),
            countries=frozenset(row.get("countries") or ()),
            series_id=None if row.get("series_id") is None else int(row["series_id"]),
            release_date_ms=release_ms,
        )
        if info.title_id in catalog:
            raise ValueError(f"duplicate title_id {info.title_id} in catalog")
        catalog[info.title_id] = info
    return catalog



@dataclass(frozen=True, slots=True)
class Candidate:
    """One title proposed by one source, with that source's score and a human reason."""

    title_id: int
    source: str
    score: float
    reason: str = ""  # e.g. "because you watched Heat"

    def __post_init__(self) -> None:
        _check_int("Candidate.title_id", self.title_id)
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"Candidate {self.title_id}: source must be a non-empty string")
        _check_score(f"Candidate {self.title_id} from {self.source}: score", self.score)


@dataclass(frozen=True, slots=True, init=False)
class ScoredItem:
    """A title after merging: every source that proposed it (kept for the explanation)."""

    title_id: int
    score: float
    sources: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    # Written out rather than generated: several hundred are made per homepage, and the
    # generated frozen __init__ plus __post_init__ set every field twice.
    def __init__(self, title_id: int, score: float, sources: Iterable[str] = (), reasons: Iterable[str] = ()):
        if type(title_id) is not int:
            _check_int("ScoredItem.title_id", title_id)
        if type(score) is not float or not math.isfinite(score):
            _check_score(f"ScoredItem {title_id}: score", score)
        setattr_ = object.__setattr__
        setattr_(self, "title_id", title_id)
        setattr_(self, "score", score)
        setattr_(self, "sources", sources if type(sources) is tuple else tuple(sources))
        setattr_(self, "reasons", reasons if type(reasons) is tuple else tuple(reasons))

    def with_score(self, score: float) -> "ScoredItem":
        """The same item re-scored (what the ranker returns)."""
        return ScoredItem(self.title_id, score, self.sources, self.reasons)


@dataclass(frozen=True, slots=True)
class Removal:
    """A title a rule took off the page, and why (so drops are visible and countable)."""

    title_id: int
    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Row:
    """One row of the homepage: an id the events log (`row`), a display title, ranked items."""

    row_id: str
    title: str
    items: tuple[ScoredItem, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "items", tuple(self.items))

    @property
    def title_ids(self) -> tuple[int, ...]:
        return tuple(item.title_id for item in self.items)


# -- component contracts ------------------------------------------------------------------------


@runtime_checkable
class CandidateSource(Protocol):
    """`__call__(request) -> proposals`: a row source gives {row key: [Candidate]}; a model
    source gives one score per model title (its top `depth` become candidates through the
    ranker's rank features). `inline`: an in-memory lookup, run in the request's own thread."""

    name: str
    inline: bool

    def __call__(self, request: Any) -> Any: ...


@runtime_checkable
class Filter(Protocol):
    """Keep or remove each item, with a reason for every removal (Removal.rule = name)."""

    name: str

    def __call__(self, ctx: HomepageContext, items: Any) -> tuple[list[ScoredItem], list[Removal]]: ...


@runtime_checkable
class Scorer(Protocol):
    """`score(version, features) -> scores`: same length and order as the feature rows (asserted)."""

    def score(self, version: str, features: "np.ndarray") -> "np.ndarray": ...


class Limit:
    """At most `cap` titles per key (e.g. per series) in one row; titles without a key are free."""

    __slots__ = ("cap", "key", "counts")

    def __init__(self, cap: int, key: Callable[[int], object | None], counts: Counter | None = None):
        self.cap, self.key, self.counts = cap, key, counts if counts is not None else Counter()

    def allows(self, title_id: int) -> bool:
        k = self.key(title_id)
        return k is None or self.counts[k] < self.cap

    def take(self, title_id: int) -> None:
        k = self.key(title_id)
        if k is not None:
            self.counts[k] += 1


@dataclass(slots=True)
class RowFill:
    """One row while its selectors run: the ranked titles it may show, what is pinned, the
    limits in force, and what was chosen."""

    row_id: str
    size: int
    diversify: bool  # the row's spec lets diversity reorder it
    items: list[ScoredItem]  # ranked, allowed by the filters
    on_page: set[int]  # titles already in a higher row
    allowed: set[int]  # titles every filter kept (pins are checked against it)
    pool: list[ScoredItem] = field(default_factory=list)
    pinned: list[tuple[int, ScoredItem]] = field(default_factory=list)  # (position, item)
    limits: list[Limit] = field(default_factory=list)
    chosen: list[ScoredItem] = field(default_factory=list)

    def __post_init__(self) -> None:
        on_page = self.on_page
        self.pool = [i for i in self.items if i.title_id not in on_page]

    @property
    def want(self) -> int:
        return self.size - len(self.pinned)

    def result(self) -> list[ScoredItem]:
        """The chosen titles with the pins inserted at their positions."""
        chosen = list(self.chosen)
        for position, item in sorted(self.pinned, key=lambda p: (p[0], p[1].title_id)):
            chosen.insert(min(position, len(chosen)), item)
        return chosen


@runtime_checkable
class Selector(Protocol):
    """Takes a turn on one row being filled (pins, limits, the pick of its titles)."""

    name: str

    def __call__(self, fill: RowFill) -> None: ...


@runtime_checkable
class Decorator(Protocol):
    """Adds one field to each item of the rendered rows (explanation, artwork), for the whole page
    at once; `field` names it. May return what the page's decision record keeps."""

    name: str
    field: str

    def __call__(self, ctx: HomepageContext, rows: Sequence[Row], items: Sequence[list[dict]]) -> Any: ...
