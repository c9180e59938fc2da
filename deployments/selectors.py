"""The selectors of one row: editorial pins, the series cap, and genre diversity (MMR).

The row builder (rows.py) fills rows top to bottom; for each row it hands a `RowFill` to the
selectors in a fixed order: `EditorialPins` claims its positions, `SeriesCap` adds its limit,
`Diversity` picks the remaining titles under every limit, then the pins go in at their
positions. Each is its own component with its own settings (HomepageConfig.selectors), so a
variant can change one (say, a stronger diversity) without touching the others. Every tie is
broken by title_id, so the same input always gives the same row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from deployments.contracts import Limit, RowFill, ScoredItem, TitleInfo
from marquee.settings import assign, check_int, check_text

EDITORIAL_SOURCE = "editorial"
EDITORIAL_REASON = "Editor's pick"
_NO_GENRES: frozenset[str] = frozenset()
Catalog = Mapping[int, TitleInfo]


def genres_of(catalog: Catalog, title_id: int) -> frozenset[str]:
    info = catalog.get(title_id)
    return info.genre_set if info is not None else _NO_GENRES


def series_of(catalog: Catalog, title_id: int) -> int | None:
    info = catalog.get(title_id)
    return None if info is None else info.series_id


@dataclass(frozen=True, slots=True)
class EditorialSlot:
    """Pin `title_id` at `position` (0-based) of row `row_id`; rules and page dedupe still apply."""

    row_id: str
    position: int
    title_id: int

    def __post_init__(self) -> None:
        check_text("row_id", self.row_id)
        assign(self, "position", check_int(f"{self.row_id}.position", self.position, ge=0))
        assign(self, "title_id", check_int(f"{self.row_id}.title_id", self.title_id))


class EditorialPins:
    """Editorial slots: a title pinned at a position of a row (subject to the filters and to page
    dedupe); a pinned title keeps its sources and gains the editorial one."""

    name = "editorial_pins"

    def __init__(self, slots: Sequence[EditorialSlot] = ()):
        self.slots = tuple(slots)
        self._by_row: dict[str, list[EditorialSlot]] = {}
        for slot in self.slots:
            self._by_row.setdefault(slot.row_id, []).append(slot)

    def titles(self) -> list[ScoredItem]:
        """Every pinned title as a page item, so the filters judge it like any other."""
        return [editorial_item(slot.title_id) for slot in self.slots]

    def for_row(self, row_id: str) -> list[EditorialSlot]:
        return self._by_row.get(row_id, [])

    def extra(self, row_id: str, allowed: set[int], items: Iterable[ScoredItem]) -> int:
        """Pinned titles of this row that pass the filters and are not already in its items."""
        slots = self._by_row.get(row_id)
        if not slots:
            return 0
        present = {i.title_id for i in items}
        return sum(1 for s in slots if s.title_id in allowed and s.title_id not in present)

    def __call__(self, fill: RowFill) -> None:
        slots = self._by_row.get(fill.row_id)
        if not slots:
            return
        by_id = {item.title_id: item for item in fill.items}
        pinned: list[tuple[int, ScoredItem]] = []
        for slot in slots:
            tid = slot.title_id
            if tid in fill.allowed and tid not in fill.on_page and all(tid != p.title_id for _, p in pinned):
                base = by_id.get(tid)
                pinned.append((slot.position, editorial_item(tid) if base is None else _with_editorial(base)))
        fill.pinned = pinned[: fill.size]
        taken = {item.title_id for _, item in fill.pinned}
        if taken:
            fill.pool = [i for i in fill.pool if i.title_id not in taken]


class SeriesCap:
    """At most `max_per_series` seasons of one show per row (the pins count too)."""

    name = "series_cap"

    def __init__(self, catalog: Catalog, max_per_series: int = 2):
        if isinstance(max_per_series, bool) or not isinstance(max_per_series, int) or max_per_series < 1:
            raise ValueError(f"max_per_series must be an int >= 1, got {max_per_series!r}")
        self.catalog, self.max_per_series = catalog, max_per_series

    def _series(self, title_id: int) -> int | None:
        return series_of(self.catalog, title_id)

    def __call__(self, fill: RowFill) -> None:
        counts = Counter(s for s in (self._series(item.title_id) for _, item in fill.pinned) if s is not None)
        fill.limits.append(Limit(self.max_per_series, self._series, counts))


class Diversity:
    """Fills the rest of the row. MMR over genres when `mmr_lambda` < 1 and the row allows it
    (lambda 1.0 = pure score order; lower trades score for genre variety); plain score order
    otherwise. MMR looks at the best `pool_factor` x row-size titles (bounds the cost)."""

    name = "diversity"

    def __init__(self, catalog: Catalog, mmr_lambda: float = 0.7, pool_factor: int = 5):
        if isinstance(mmr_lambda, bool) or not isinstance(mmr_lambda, (int, float)) or not 0.0 <= mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda!r}")
        if isinstance(pool_factor, bool) or not isinstance(pool_factor, int) or pool_factor < 1:
            raise ValueError(f"pool_factor must be an int >= 1, got {pool_factor!r}")
        self.catalog, self.mmr_lambda, self.pool_factor = catalog, float(mmr_lambda), pool_factor
        self._masks = GenreMasks(catalog)

    def __call__(self, fill: RowFill) -> None:
        want = fill.want
        if fill.diversify and self.mmr_lambda < 1.0:
            pool = fill.pool[: max(want * self.pool_factor, want)]
            mask_of = self._masks.of
            fill.chosen = _mmr(pool, want, self.mmr_lambda, fill.limits,
                               [mask_of(item.title_id) for _, item in fill.pinned], mask_of)
        else:
            fill.chosen = _by_score(fill.pool, want, fill.limits)


class GenreMasks:
    """Each title's genres as a bit mask (one bit per genre of the catalog), made on first use
    and kept: MMR compares genre sets for every row of every page, and set algebra on ints is
    several times cheaper than on frozensets. The catalog does not change under a selector."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._bit: dict[str, int] = {}
        self._mask: dict[int, int] = {}

    def of(self, title_id: int) -> int:
        mask = self._mask.get(title_id)
        if mask is None:
            mask = 0
            for genre in sorted(genres_of(self.catalog, title_id)):
                mask |= 1 << self._bit.setdefault(genre, len(self._bit))
            self._mask[title_id] = mask
        return mask


def _by_score(pool: Sequence[ScoredItem], want: int, limits: Sequence[Limit]) -> list[ScoredItem]:
    chosen: list[ScoredItem] = []
    for item in pool:  # already ranked
        if len(chosen) >= want:
            break
        tid = item.title_id
        for limit in limits:
            if not limit.allows(tid):
                break
        else:
            chosen.append(item)
            for limit in limits:
                limit.take(tid)
    return chosen


def _jaccard(a: int, b: int) -> float:
    """Jaccard similarity of two genre sets given as bit masks (one bit per genre)."""
    union = a | b
    return (a & b).bit_count() / union.bit_count() if union else 0.0


def _mmr(pool: Sequence[ScoredItem], want: int, lam: float, limits: Sequence[Limit],
         selected_masks: Sequence[int], mask_of: Callable[[int], int]) -> list[ScoredItem]:
    """Maximal marginal relevance: lam * relevance - (1 - lam) * max genre similarity to the row so far.

    Relevance is the score min-max scaled within the row's pool, so lambda means the same thing
    whatever scale a source scores on. Ties: higher raw score, then lower title_id. (Per-item facts
    are computed once; the similarity to the row so far depends only on an item's genre mask, so
    it is kept per distinct mask; only the items of a just-filled limit key are re-checked: this
    runs for every row of every page.)
    """
    if want <= 0 or not pool:
        return []
    lo = min(i.score for i in pool)
    hi = max(i.score for i in pool)
    span = hi - lo
    genres = [mask_of(i.title_id) for i in pool]
    max_sim = {g: max((_jaccard(g, s) for s in selected_masks), default=0.0) for g in set(genres)}
    keys = [[limit.key(i.title_id) for i in pool] for limit in limits]
    base = [lam * ((i.score - lo) / span if span > 0 else 1.0) for i in pool]
    alive = [True] * len(pool)
    for limit, k in zip(limits, keys):
        counts, cap = limit.counts, limit.cap
        for j, key in enumerate(k):
            if key is not None and counts[key] >= cap:
                alive[j] = False
    penalty = 1 - lam
    chosen: list[ScoredItem] = []
    while len(chosen) < want:
        best_k, best_value = -1, 0.0
        for k, item in enumerate(pool):
            if not alive[k]:
                continue
            value = base[k] - penalty * max_sim[genres[k]]
            if best_k < 0 or value > best_value or (
                    value == best_value and (item.score, -item.title_id) > (pool[best_k].score, -pool[best_k].title_id)):
                best_k, best_value = k, value
        if best_k < 0:
            break
        chosen.append(pool[best_k])
        alive[best_k] = False
        for limit, k in zip(limits, keys):
            picked_key = k[best_k]
            if picked_key is not None:
                limit.counts[picked_key] += 1
                if limit.counts[picked_key] >= limit.cap:
                    for j in range(len(pool)):
                        if k[j] == picked_key:
                            alive[j] = False
        picked = genres[best_k]
        for g, sim in max_sim.items():
            new = _jaccard(g, picked)
            if new > sim:
                max_sim[g] = new
    return chosen


def editorial_item(title_id: int) -> ScoredItem:
    return ScoredItem(title_id, 0.0, (EDITORIAL_SOURCE,), (EDITORIAL_REASON,))


def _with_editorial(item: ScoredItem) -> ScoredItem:
    if EDITORIAL_SOURCE in item.sources:
        return item
    return ScoredItem(item.title_id, item.score, (*item.sources, EDITORIAL_SOURCE),
                      (*item.reasons, EDITORIAL_REASON))
