"""Rows of the homepage: which rows, in what order, and which titles in each.

The row plan is data (HomepageConfig.rows); the RowBuilder applies it to one member's scored
sources: the filters first (so removals are counted once per title), then rows are ordered by
relevance (Continue Watching pinned first), then filled top to bottom so a title lands in the
highest row that has it, each row by the selectors of selectors.py (editorial pins, series cap,
diversity). Every tie is broken by title_id, so the same input always gives the same page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deployments.contracts import (
    Filter,
    HomepageContext,
    Removal,
    Row,
    RowFill,
    ScoredItem,
    TitleInfo,
)
from deployments.rules import apply_rules
from deployments.selectors import Diversity, EditorialPins, SeriesCap, genres_of

ROW_EXPANSIONS = ("single", "per_seed", "per_genre")
ROW_ORDERS = ("relevance", "plan")
_TEMPLATE_KEYS = {"country": "US", "seed": "Heat", "genre": "Drama"}


@dataclass(frozen=True, slots=True)
class RowSpec:
    """One kind of row.

    expand:
      "single"    one row from `sources[source]`
      "per_seed"  up to `count` rows "Because you watched X", one per seed title taken from
                  ctx.recently_watched (most recent first), items from `sources[f"{source}:{seed_id}"]`
      "per_genre" up to `count` rows for the member's top genres (from their history; a member
                  without history gets the genres strongest in the pool), items = `sources[source]`
                  filtered to the genre
    Expanded rows get the id f"{row_id}:{seed_id}" / f"{row_id}:{genre.lower()}".
    `title` may use {country}, {seed} (the seed title's name) and {genre}.
    """

    row_id: str
    source: str
    title: str
    expand: str = "single"
    count: int = 1
    min_items: int = 3  # a row with fewer titles (after rules and page dedupe) is dropped
    max_items: int | None = None  # caps titles_per_row for this row (e.g. a Top 10)
    diversify: bool = True  # MMR over genres; off for rows whose order means something
    pin_top: bool = False  # always first when present (Continue Watching)
    weight: float = 1.0  # multiplies the row's relevance when rows are ordered

    def __post_init__(self) -> None:
        if not self.row_id or ":" in self.row_id:
            raise ValueError(f"RowSpec row_id must be non-empty without ':', got {self.row_id!r}")
        if not self.source:
            raise ValueError(f"RowSpec {self.row_id}: source must be non-empty")
        if self.expand not in ROW_EXPANSIONS:
            raise ValueError(f"RowSpec {self.row_id}: expand must be one of {ROW_EXPANSIONS}, got {self.expand!r}")
        if self.count < 1:
            raise ValueError(f"RowSpec {self.row_id}: count must be >= 1, got {self.count}")
        if self.expand == "single" and self.count != 1:
            raise ValueError(f"RowSpec {self.row_id}: count applies to expanded rows only")
        if self.min_items < 1:
            raise ValueError(f"RowSpec {self.row_id}: min_items must be >= 1, got {self.min_items}")
        if self.max_items is not None and self.max_items < self.min_items:
            raise ValueError(f"RowSpec {self.row_id}: max_items {self.max_items} < min_items {self.min_items}")
        if not self.weight > 0:
            raise ValueError(f"RowSpec {self.row_id}: weight must be > 0, got {self.weight}")
        try:
            self.title.format_map(_TEMPLATE_KEYS)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"RowSpec {self.row_id}: bad title template {self.title!r} "
                             f"(may use {{country}}, {{seed}}, {{genre}}): {exc}") from None


DEFAULT_ROWS: tuple[RowSpec, ...] = (
    RowSpec("continue_watching", "continue_watching", "Continue Watching",
            min_items=1, diversify=False, pin_top=True),
    RowSpec("my_list", "my_list", "My List", min_items=1, diversify=False),
    RowSpec("because_you_watched", "because_you_watched", "Because you watched {seed}",
            expand="per_seed", count=3),
    RowSpec("top_in_country", "top_in_country", "Top 10 in {country}", max_items=10, diversify=False),
    RowSpec("trending", "trending", "Trending Now"),
    RowSpec("genre", "personalized", "{genre}", expand="per_genre", count=3),
    RowSpec("new_releases", "new_releases", "New Releases"),
)


@dataclass(frozen=True, slots=True)
class RowPlan:
    """Which rows, and their order: by relevance (plan order breaks ties) or the plan's own."""

    rows: tuple[RowSpec, ...] = DEFAULT_ROWS
    order: str = "relevance"  # or "plan": keep the plan's order (pinned rows still first)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        for spec in self.rows:
            if not isinstance(spec, RowSpec):
                raise ValueError(f"rows: expected RowSpec entries, got {type(spec).__name__}")
        ids = [spec.row_id for spec in self.rows]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rows: duplicate row_id(s) {dupes}")
        if self.order not in ROW_ORDERS:
            raise ValueError(f"order: must be one of {ROW_ORDERS}, got {self.order!r}")

    def produces(self, row_id: str) -> bool:
        """Whether some spec of the plan can give a row of this id (an expanded row's id has a suffix)."""
        base, _, suffix = row_id.partition(":")
        spec = next((s for s in self.rows if s.row_id == base), None)
        return spec is not None and (spec.expand == "single") == (suffix == "")


@dataclass(frozen=True, slots=True)
class Page:
    """The built rows plus what was left out and why (nothing disappears silently)."""

    rows: tuple[Row, ...]
    removals: tuple[Removal, ...]
    removal_counts: dict[str, int]
    dropped_rows: tuple[tuple[str, str], ...]  # (row_id, why)


@dataclass(slots=True)
class _Draft:
    row_id: str
    title: str
    spec: RowSpec
    plan_index: int
    sub_index: int
    items: list[ScoredItem] = field(default_factory=list)
    relevance: float = 0.0


class RowBuilder:
    """The row selector: turns scored sources into ordered, deduplicated rows per the RowPlan.

    The filters run once per title across the page (so each removal is counted once); rows are
    then ordered and filled top to bottom, each by the per-row selectors (selectors.py): a title
    lands in the highest row that has it.
    """

    def __init__(self, plan: RowPlan, catalog: Mapping[int, TitleInfo], filters: Sequence[Filter],
                 editorial: EditorialPins, series_cap: SeriesCap, diversity: Diversity):
        if not isinstance(plan, RowPlan):
            raise TypeError(f"plan must be a RowPlan, got {type(plan).__name__}")
        self.plan, self.catalog, self.filters = plan, catalog, list(filters)
        self.editorial, self.series_cap, self.diversity = editorial, series_cap, diversity

    def build(self, ctx: HomepageContext, sources: Mapping[str, Sequence[ScoredItem]]) -> list[Row]:
        return list(self.build_page(ctx, sources).rows)

    def build_page(self, ctx: HomepageContext, sources: Mapping[str, Sequence[ScoredItem]]) -> Page:
        _check_sources(sources)
        plan, editorial = self.plan, self.editorial
        drafts = self._expand(ctx, sources)

        # Filters once per title across the page, so each removal is counted once.
        unique: dict[int, ScoredItem] = {}
        for draft in drafts:
            for item in draft.items:
                unique.setdefault(item.title_id, item)
        for item in editorial.titles():
            unique.setdefault(item.title_id, item)
        kept, removals, counts = apply_rules(self.filters, ctx, sorted(unique.values(), key=lambda i: i.title_id))
        allowed = {item.title_id for item in kept}

        dropped: list[tuple[str, str]] = []
        ready: list[_Draft] = []
        for draft in drafts:
            draft.items = [item for item in draft.items if item.title_id in allowed]
            size = _row_size(draft.spec, ctx)
            eligible = len(draft.items) + editorial.extra(draft.row_id, allowed, draft.items)
            if eligible < draft.spec.min_items:
                dropped.append((draft.row_id, f"{eligible} eligible titles, needs {draft.spec.min_items}"))
                continue
            top = draft.items[:size]
            draft.relevance = draft.spec.weight * (sum(i.score for i in top) / len(top) if top else 0.0)
            ready.append(draft)

        by_relevance = plan.order == "relevance"
        ready.sort(key=lambda d: (not d.spec.pin_top, -d.relevance if by_relevance else 0.0,
                                  d.plan_index, d.sub_index))

        rows: list[Row] = []
        on_page: set[int] = set()
        rows_per_spec: Counter[str] = Counter()
        for draft in ready:
            if len(rows) >= ctx.rows_limit:
                dropped.append((draft.row_id, f"rows_limit {ctx.rows_limit} reached"))
                continue
            if rows_per_spec[draft.spec.row_id] >= draft.spec.count:
                dropped.append((draft.row_id, f"{draft.spec.row_id} already has {draft.spec.count} rows"))
                continue
            items = self._fill(draft, ctx, on_page, allowed)
            if len(items) < draft.spec.min_items:
                dropped.append((draft.row_id, f"{len(items)} titles left after page dedupe, "
                                              f"needs {draft.spec.min_items}"))
                continue
            on_page.update(item.title_id for item in items)
            rows_per_spec[draft.spec.row_id] += 1
            rows.append(Row(draft.row_id, draft.title, tuple(items)))
        return Page(tuple(rows), tuple(removals), counts, tuple(dropped))

    def _fill(self, draft: _Draft, ctx: HomepageContext, on_page: set[int], allowed: set[int]) -> list[ScoredItem]:
        """One row: the selectors take their turns (pins, series cap, diversity), then the pins
        go in at their positions."""
        fill = RowFill(draft.row_id, _row_size(draft.spec, ctx), draft.spec.diversify, draft.items, on_page, allowed)
        self.editorial(fill)
        self.series_cap(fill)
        self.diversity(fill)
        return fill.result()

    # -- expansion ---------------------------------------------------------------------------

    def _expand(self, ctx: HomepageContext, sources: Mapping[str, Sequence[ScoredItem]]) -> list[_Draft]:
        catalog = self.catalog
        drafts: list[_Draft] = []
        for plan_index, spec in enumerate(self.plan.rows):
            fmt = {"country": ctx.country, "seed": "", "genre": ""}
            if spec.expand == "single":
                items = _ranked(sources.get(spec.source, ()))
                drafts.append(_Draft(spec.row_id, spec.title.format_map(fmt), spec, plan_index, 0, items))
            elif spec.expand == "per_seed":
                seeds = [s for s in dict.fromkeys(ctx.recently_watched) if s in catalog]
                for sub_index, seed in enumerate(seeds):
                    items = _ranked(sources.get(f"{spec.source}:{seed}", ()))
                    if not items:
                        continue
                    title = spec.title.format_map({**fmt, "seed": catalog[seed].name})
                    drafts.append(_Draft(f"{spec.row_id}:{seed}", title, spec, plan_index, sub_index, items))
            else:  # per_genre
                pool = _ranked(sources.get(spec.source, ()))
                in_genre: dict[str, list[ScoredItem]] = {}  # one pass over the pool, not one per genre
                for item in pool:
                    for genre in genres_of(catalog, item.title_id):
                        in_genre.setdefault(genre, []).append(item)
                for sub_index, genre in enumerate(_top_genres(ctx, pool, catalog)):
                    items = in_genre.get(genre, [])
                    title = spec.title.format_map({**fmt, "genre": genre})
                    drafts.append(_Draft(f"{spec.row_id}:{genre.lower()}", title, spec, plan_index,
                                         sub_index, items))
        return drafts


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _check_sources(sources: Any) -> None:
    if not isinstance(sources, Mapping):
        raise TypeError(f"sources must be a mapping name -> list[ScoredItem], got {type(sources).__name__}")
    for name, items in sources.items():
        for item in items:
            if not isinstance(item, ScoredItem):
                raise TypeError(f"source {name!r} holds {type(item).__name__}, expected ScoredItem")


def _ranked(items: Sequence[ScoredItem]) -> list[ScoredItem]:
    """Best score first, ties by title_id; a title listed twice keeps its best entry."""
    out: dict[int, ScoredItem] = {}
    for item in sorted(items, key=lambda i: (-i.score, i.title_id)):
        out.setdefault(item.title_id, item)
    return list(out.values())


def _row_size(spec: RowSpec, ctx: HomepageContext) -> int:
    return ctx.titles_per_row if spec.max_items is None else min(ctx.titles_per_row, spec.max_items)


def _top_genres(ctx: HomepageContext, pool: Sequence[ScoredItem], catalog: Mapping[int, TitleInfo]) -> list[str]:
    """The member's genres by how often they appear in their history and onboarding tastes;
    without either, the genres carrying the most score in the pool (so a new member still gets
    genre rows). Ties by name."""
    history = dict.fromkeys((*ctx.recently_watched, *ctx.continue_watching, *ctx.my_list, *sorted(ctx.watched)))
    weight: Counter[str] = Counter()
    for tid in history:
        weight.update(genres_of(catalog, tid))
    for genre in ctx.preferred_genres:  # onboarding tastes count like one title each
        weight[genre] += 1
    if not weight:
        for item in pool:
            for genre in genres_of(catalog, item.title_id):
                weight[genre] += max(item.score, 0.0)
    return [g for g, w in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0])) if w > 0]
