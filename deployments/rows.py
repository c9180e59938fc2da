"""Rows of the homepage: which rows, in what order, and which titles in each.

The row plan is data (a typed config); the RowBuilder applies it to one member's scored sources:
rules first (so removals are counted once per title), then rows are ordered by relevance
(Continue Watching pinned first), then filled top to bottom so a title lands in the highest row
that has it, with a per-series cap, MMR genre diversity and editorial pins. Every tie is broken by
title_id, so the same input always gives the same page.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deployments.contracts import HomepageContext, Removal, Row, ScoredItem, TitleInfo
from deployments.rules import Rule, apply_rules, default_rules

ROW_EXPANSIONS = ("single", "per_seed", "per_genre")
ROW_ORDERS = ("relevance", "plan")
EDITORIAL_SOURCE = "editorial"
EDITORIAL_REASON = "Editor's pick"
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


@dataclass(frozen=True, slots=True)
class EditorialSlot:
    """Pin `title_id` at `position` (0-based) of row `row_id`; rules and page dedupe still apply."""

    row_id: str
    position: int
    title_id: int

    def __post_init__(self) -> None:
        if not isinstance(self.row_id, str) or not self.row_id:
            raise ValueError(f"EditorialSlot: row_id must be a non-empty string, got {self.row_id!r}")
        for name in ("position", "title_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"EditorialSlot {self.row_id}: {name} must be an int, got {value!r}")
        if self.position < 0:
            raise ValueError(f"EditorialSlot {self.row_id}/{self.title_id}: position must be >= 0")


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
    """Which rows, their default order (plan order breaks relevance ties), limits and pins."""

    rows: tuple[RowSpec, ...] = DEFAULT_ROWS
    editorial: tuple[EditorialSlot, ...] = ()
    mmr_lambda: float = 0.7  # 1.0 = pure score order; lower trades score for genre variety
    max_per_series: int = 2
    order: str = "relevance"  # or "plan": keep the plan's order (pinned rows still first)
    mmr_pool_factor: int = 5  # MMR looks at the best factor * row-size titles (bounds the cost)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(self.rows))
        object.__setattr__(self, "editorial", tuple(self.editorial))
        ids = [spec.row_id for spec in self.rows]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"RowPlan: duplicate row_id(s) {dupes}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"RowPlan: mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.max_per_series < 1:
            raise ValueError(f"RowPlan: max_per_series must be >= 1, got {self.max_per_series}")
        if self.order not in ROW_ORDERS:
            raise ValueError(f"RowPlan: order must be one of {ROW_ORDERS}, got {self.order!r}")
        if self.mmr_pool_factor < 1:
            raise ValueError(f"RowPlan: mmr_pool_factor must be >= 1, got {self.mmr_pool_factor}")
        by_id = {spec.row_id: spec for spec in self.rows}
        for slot in self.editorial:
            base, _, suffix = slot.row_id.partition(":")
            spec = by_id.get(base)
            if spec is None or (spec.expand == "single") != (suffix == ""):
                raise ValueError(f"RowPlan: editorial slot names row {slot.row_id!r}, which the plan "
                                 f"cannot produce (rows: {', '.join(ids)})")


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
    """Turns scored sources into ordered, deduplicated, diversified rows per the RowPlan."""

    def __init__(self, plan: RowPlan | None = None, rules: Sequence[Rule] | None = None):
        self.plan = plan if plan is not None else RowPlan()
        if not isinstance(self.plan, RowPlan):
            raise TypeError(f"plan must be a RowPlan, got {type(self.plan).__name__}")
        self.rules = None if rules is None else list(rules)  # None: default_rules(catalog) per build

    def build(self, ctx: HomepageContext, sources: Mapping[str, Sequence[ScoredItem]],
              catalog: Mapping[int, TitleInfo]) -> list[Row]:
        return list(self.build_page(ctx, sources, catalog).rows)

    def build_page(self, ctx: HomepageContext, sources: Mapping[str, Sequence[ScoredItem]],
                   catalog: Mapping[int, TitleInfo]) -> Page:
        _check_sources(sources)
        plan = self.plan
        drafts = self._expand(ctx, sources, catalog)
        pins = _pins_by_row(plan.editorial)

        # Rules once per title across the page, so each removal is counted once.
        unique: dict[int, ScoredItem] = {}
        for draft in drafts:
            for item in draft.items:
                unique.setdefault(item.title_id, item)
        for slot in plan.editorial:
            unique.setdefault(slot.title_id, _editorial_item(slot.title_id))
        rules = self.rules if self.rules is not None else default_rules(catalog)
        kept, removals, counts = apply_rules(rules, ctx, sorted(unique.values(), key=lambda i: i.title_id))
        allowed = {item.title_id for item in kept}

        dropped: list[tuple[str, str]] = []
        ready: list[_Draft] = []
        for draft in drafts:
            draft.items = [item for item in draft.items if item.title_id in allowed]
            size = _row_size(draft.spec, ctx)
            eligible = len(draft.items) + sum(
                1 for s in pins.get(draft.row_id, ()) if s.title_id in allowed
                and all(s.title_id != i.title_id for i in draft.items))
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
            items = self._fill(draft, ctx, catalog, on_page, allowed, pins.get(draft.row_id, ()))
            if len(items) < draft.spec.min_items:
                dropped.append((draft.row_id, f"{len(items)} titles left after page dedupe, "
                                              f"needs {draft.spec.min_items}"))
                continue
            on_page.update(item.title_id for item in items)
            rows_per_spec[draft.spec.row_id] += 1
            rows.append(Row(draft.row_id, draft.title, tuple(items)))
        return Page(tuple(rows), tuple(removals), counts, tuple(dropped))

    # -- expansion ---------------------------------------------------------------------------

    def _expand(self, ctx: HomepageContext, sources: Mapping[str, Sequence[ScoredItem]],
                catalog: Mapping[int, TitleInfo]) -> list[_Draft]:
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
                    for genre in _genres(catalog, item.title_id):
                        in_genre.setdefault(genre, []).append(item)
                for sub_index, genre in enumerate(_top_genres(ctx, pool, catalog)):
                    items = in_genre.get(genre, [])
                    title = spec.title.format_map({**fmt, "genre": genre})
                    drafts.append(_Draft(f"{spec.row_id}:{genre.lower()}", title, spec, plan_index,
                                         sub_index, items))
        return drafts

    # -- filling one row ---------------------------------------------------------------------

    def _fill(self, draft: _Draft, ctx: HomepageContext, catalog: Mapping[int, TitleInfo],
              on_page: set[int], allowed: set[int], slots: Sequence[EditorialSlot]) -> list[ScoredItem]:
        plan = self.plan
        size = _row_size(draft.spec, ctx)
        by_id = {item.title_id: item for item in draft.items}

        pinned: list[tuple[int, ScoredItem]] = []
        for slot in slots:
            tid = slot.title_id
            if tid in allowed and tid not in on_page and all(tid != p.title_id for _, p in pinned):
                base = by_id.get(tid)
                item = _editorial_item(tid) if base is None else _with_editorial(base)
                pinned.append((slot.position, item))
        pinned = pinned[:size]
        pinned_ids = {item.title_id for _, item in pinned}

        series = Counter(s for s in (_series(catalog, item.title_id) for _, item in pinned) if s is not None)
        pool = [i for i in draft.items if i.title_id not in on_page and i.title_id not in pinned_ids]
        want = size - len(pinned)
        if draft.spec.diversify and plan.mmr_lambda < 1.0:
            pool = pool[: max(want * plan.mmr_pool_factor, want)]
            chosen = _mmr(pool, want, plan.mmr_lambda, plan.max_per_series, series,
                          [_genres(catalog, item.title_id) for _, item in pinned], catalog)
        else:
            chosen = _by_score(pool, want, plan.max_per_series, series, catalog)

        for position, item in sorted(pinned, key=lambda p: (p[0], p[1].title_id)):
            chosen.insert(min(position, len(chosen)), item)
        return chosen


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


_NO_GENRES: frozenset[str] = frozenset()


def _check_sources(sources: Any) -> None:
    if not isinstance(sources, Mapping):
        raise TypeError(f"sources must be a mapping name -> list[ScoredItem], got {type(sources).__name__}")
    for name, items in sources.items():
        for item in items:
            if not isinstance(item, ScoredItem):
                raise TypeError(f"source {name!r} holds {type(item).__name__}, expected ScoredItem "
                                f"(merge candidates with merge_candidates first)")


def _ranked(items: Sequence[ScoredItem]) -> list[ScoredItem]:
    """Best score first, ties by title_id; a title listed twice keeps its best entry."""
    out: dict[int, ScoredItem] = {}
    for item in sorted(items, key=lambda i: (-i.score, i.title_id)):
        out.setdefault(item.title_id, item)
    return list(out.values())


def _row_size(spec: RowSpec, ctx: HomepageContext) -> int:
    return ctx.titles_per_row if spec.max_items is None else min(ctx.titles_per_row, spec.max_items)


def _genres(catalog: Mapping[int, TitleInfo], title_id: int) -> frozenset[str]:
    info = catalog.get(title_id)
    return info.genre_set if info is not None else _NO_GENRES


def _series(catalog: Mapping[int, TitleInfo], title_id: int) -> int | None:
    info = catalog.get(title_id)
    return None if info is None else info.series_id


def _top_genres(ctx: HomepageContext, pool: Sequence[ScoredItem], catalog: Mapping[int, TitleInfo]) -> list[str]:
    """The member's genres by how often they appear in their history and onboarding tastes;
    without either, the genres
    carrying the most score in the pool (so a new member still gets genre rows). Ties by name."""
    history = dict.fromkeys((*ctx.recently_watched, *ctx.continue_watching, *ctx.my_list, *sorted(ctx.watched)))
    weight: Counter[str] = Counter()
    for tid in history:
        weight.update(_genres(catalog, tid))
    for genre in ctx.preferred_genres:  # onboarding tastes count like one title each
        weight[genre] += 1
    if not weight:
        for item in pool:
            for genre in _genres(catalog, item.title_id):
                weight[genre] += max(item.score, 0.0)
    return [g for g, w in sorted(weight.items(), key=lambda kv: (-kv[1], kv[0])) if w > 0]


def _series_ok(tid: int, series: Counter, cap: int, catalog: Mapping[int, TitleInfo]) -> bool:
    s = _series(catalog, tid)
    return s is None or series[s] < cap


def _take(item: ScoredItem, series: Counter, catalog: Mapping[int, TitleInfo]) -> None:
    s = _series(catalog, item.title_id)
    if s is not None:
        series[s] += 1


def _by_score(pool: Sequence[ScoredItem], want: int, cap: int, series: Counter,
              catalog: Mapping[int, TitleInfo]) -> list[ScoredItem]:
    chosen: list[ScoredItem] = []
    for item in pool:  # already ranked
        if len(chosen) >= want:
            break
        if _series_ok(item.title_id, series, cap, catalog):
            chosen.append(item)
            _take(item, series, catalog)
    return chosen


def _jaccard(a: int, b: int) -> float:
    """Jaccard similarity of two genre sets given as bit masks (one bit per genre)."""
    union = a | b
    return (a & b).bit_count() / union.bit_count() if union else 0.0


def _genre_masks(genre_sets: Sequence[frozenset[str]]) -> list[int]:
    """The sets as bit masks over the genres they use: set algebra on ints, not on frozensets."""
    bit: dict[str, int] = {}
    masks = []
    for genres in genre_sets:
        mask = 0
        for genre in genres:
            mask |= 1 << bit.setdefault(genre, len(bit))
        masks.append(mask)
    return masks


def _mmr(pool: Sequence[ScoredItem], want: int, lam: float, cap: int, series: Counter,
         selected_genres: list[frozenset[str]], catalog: Mapping[int, TitleInfo]) -> list[ScoredItem]:
    """Maximal marginal relevance: lam * relevance - (1 - lam) * max genre similarity to the row so far.

    Relevance is the score min-max scaled within the row's pool, so lambda means the same thing
    whatever scale a source scores on. Ties: higher raw score, then lower title_id. (Per-item facts
    are computed once and only the items of a just-capped series are re-checked: this runs for
    every row of every page.)
    """
    if want <= 0 or not pool:
        return []
    lo = min(i.score for i in pool)
    hi = max(i.score for i in pool)
    span = hi - lo
    masks = _genre_masks([_genres(catalog, i.title_id) for i in pool] + list(selected_genres))
    genres, selected = masks[:len(pool)], masks[len(pool):]
    series_of = [_series(catalog, i.title_id) for i in pool]
    base = [lam * ((i.score - lo) / span if span > 0 else 1.0) for i in pool]
    max_sim = [max((_jaccard(g, s) for s in selected), default=0.0) for g in genres]
    alive = [series_of[k] is None or series[series_of[k]] < cap for k in range(len(pool))]
    penalty = 1 - lam
    chosen: list[ScoredItem] = []
    while len(chosen) < want:
        best_k, best_key = -1, None
        for k, item in enumerate(pool):
            if not alive[k]:
                continue
            key = (base[k] - penalty * max_sim[k], item.score, -item.title_id)
            if best_key is None or key > best_key:
                best_k, best_key = k, key
        if best_k < 0:
            break
        best = pool[best_k]
        chosen.append(best)
        alive[best_k] = False
        picked_series = series_of[best_k]
        if picked_series is not None:
            series[picked_series] += 1
            if series[picked_series] >= cap:
                for k in range(len(pool)):
                    if series_of[k] == picked_series:
                        alive[k] = False
        picked = genres[best_k]
        for k in range(len(pool)):
            if alive[k]:
                sim = _jaccard(genres[k], picked)
                if sim > max_sim[k]:
                    max_sim[k] = sim
    return chosen


def _pins_by_row(slots: Sequence[EditorialSlot]) -> dict[str, list[EditorialSlot]]:
    out: dict[str, list[EditorialSlot]] = {}
    for slot in slots:
        out.setdefault(slot.row_id, []).append(slot)
    return out


def _editorial_item(title_id: int) -> ScoredItem:
    return ScoredItem(title_id, 0.0, (EDITORIAL_SOURCE,), (EDITORIAL_REASON,))


def _with_editorial(item: ScoredItem) -> ScoredItem:
    if EDITORIAL_SOURCE in item.sources:
        return item
    return ScoredItem(item.title_id, item.score, (*item.sources, EDITORIAL_SOURCE),
                      (*item.reasons, EDITORIAL_REASON))
