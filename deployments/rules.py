"""Business rules: page-level filters that say why they removed each title.

A filter (the Filter contract of contracts.py) is `(ctx, items) -> (kept, removed)`; every
removal carries the filter's name and a reason, and `apply_rules` counts them, so a title never
vanishes from a homepage without a trace. Filters that need catalog facts take the catalog at
construction (it changes with a deploy, not per request). HomepageConfig.filters names them, in
order, from FILTERS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from deployments.contracts import Filter, HomepageContext, Removal, ScoredItem, TitleInfo
from marquee.schema import MATURITY_LABELS

Catalog = Mapping[int, TitleInfo]


class CatalogRule:
    """A rule decided one title at a time: subclasses return a reason to remove, or None to keep."""

    name = "rule"

    def __init__(self, catalog: Catalog):
        if not isinstance(catalog, Mapping):
            raise TypeError(f"{type(self).__name__} needs a catalog mapping title_id -> TitleInfo, "
                            f"got {type(catalog).__name__}")
        self.catalog = catalog

    def why_remove(self, ctx: HomepageContext, item: ScoredItem, info: TitleInfo | None) -> str | None:
        raise NotImplementedError

    def __call__(self, ctx: HomepageContext, items: Sequence[ScoredItem]) -> tuple[list[ScoredItem], list[Removal]]:
        kept: list[ScoredItem] = []
        removed: list[Removal] = []
        for item in items:
            reason = self.why_remove(ctx, item, self.catalog.get(item.title_id))
            if reason is None:
                kept.append(item)
            else:
                removed.append(Removal(item.title_id, self.name, reason))
        return kept, removed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self.catalog)} titles)"


class UnknownTitleFilter(CatalogRule):
    """No catalog entry: nothing to show (name, artwork, availability), so it cannot be shown."""

    name = "unknown_title"

    def why_remove(self, ctx, item, info):
        return None if info is not None else f"title {item.title_id} is not in the catalog"


class WatchedFilter(CatalogRule):
    """Titles the member already watched, except those they are part-way through (Continue Watching)."""

    name = "watched"

    def why_remove(self, ctx, item, info):
        if item.title_id not in ctx.watched or item.title_id in ctx.continue_watching:
            return None
        return f"already watched {_label(item.title_id, info)}"


class AvailabilityFilter(CatalogRule):
    """Titles not licensed in the member's country (an unknown title's availability is unknown: removed)."""

    name = "availability"

    def why_remove(self, ctx, item, info):
        if info is None:
            return f"title {item.title_id} has no catalog entry; availability in {ctx.country} unknown"
        if info.available_in(ctx.country):
            return None
        return f"{_label(item.title_id, info)} is not available in {ctx.country}"


class MaturityFilter(CatalogRule):
    """Titles above the profile's maturity level (unknown titles are removed: fail closed)."""

    name = "maturity"

    def why_remove(self, ctx, item, info):
        if info is None:
            return f"title {item.title_id} has no catalog entry; maturity unknown"
        if info.maturity <= ctx.maturity:
            return None
        return (f"{_label(item.title_id, info)} is rated {MATURITY_LABELS[info.maturity]}, "
                f"above the profile's {MATURITY_LABELS[ctx.maturity]}")


FILTERS: dict[str, type[CatalogRule]] = {
    cls.name: cls for cls in (UnknownTitleFilter, WatchedFilter, AvailabilityFilter, MaturityFilter)}
# The standard order: unknown titles first, so later filters see only catalogued titles.
DEFAULT_FILTERS = ("unknown_title", "watched", "availability", "maturity")


def default_rules(catalog: Catalog) -> list[CatalogRule]:
    """The filters of DEFAULT_FILTERS, in order."""
    return [FILTERS[name](catalog) for name in DEFAULT_FILTERS]


def apply_rules(
    rules: Sequence[Filter], ctx: HomepageContext, items: Sequence[ScoredItem]
) -> tuple[list[ScoredItem], list[Removal], dict[str, int]]:
    """Run the rules in order; each sees what the previous kept.

    Returns (kept, removals, counts_by_rule); counts_by_rule names every rule, zeros included, so
    a dashboard can tell "removed nothing" from "did not run".
    """
    kept = list(items)
    removals: list[Removal] = []
    counts: dict[str, int] = {}
    for rule in rules:
        name = getattr(rule, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"rule {rule!r} has no name")
        if name in counts:
            raise ValueError(f"two rules share the name {name!r}; removal counts would merge")
        before = len(kept)
        kept, removed = rule(ctx, kept)
        if len(kept) + len(removed) != before:
            raise RuntimeError(f"rule {name!r} lost items: {before} in, {len(kept)} kept + {len(removed)} removed")
        removals.extend(removed)
        counts[name] = len(removed)
    return kept, removals, counts


def _label(title_id: int, info: TitleInfo | None) -> str:
    return f"{info.name!r} ({title_id})" if info is not None and info.name else f"title {title_id}"
