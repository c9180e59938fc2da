"""Shared serving-test fixtures: titles, catalogs, request contexts and scored items, defined once
for every test of the homepage stages (rows, rules, selectors, the pipeline)."""

from __future__ import annotations

from collections.abc import Iterable

from deployments.contracts import HomepageContext, ScoredItem, TitleInfo

CONTEXT_DEFAULTS = dict(member_id=1, country="US", device="tv", maturity=3, now_ms=0)


def title(tid: int, genres: Iterable[str] = ("Drama",), maturity: int = 1, countries: Iterable[str] = ("US",),
          series: int | None = None, name: str | None = None) -> TitleInfo:
    return TitleInfo(tid, name or f"Title {tid}", tuple(genres), maturity, frozenset(countries), series)


def catalog_of(*infos: TitleInfo) -> dict[int, TitleInfo]:
    return {i.title_id: i for i in infos}


def genre_blocks(*blocks: tuple[str, range], countries: Iterable[str] = ("US",)) -> dict[int, TitleInfo]:
    """A catalog of one-genre blocks, e.g. genre_blocks(("Drama", range(1, 31)), ("Comedy", range(31, 61)))."""
    return catalog_of(*(title(t, (genre,), countries=countries) for genre, ids in blocks for t in ids))


def context(**overrides) -> HomepageContext:
    """A request context: member 1 in the US on a TV, mature profile, at time 0, unless overridden."""
    return HomepageContext(**{**CONTEXT_DEFAULTS, **overrides})


def scored(source: str, ids: Iterable[int], top: float = 1.0, step: float = 0.01,
           reason: str | None = None) -> list[ScoredItem]:
    """Items from `source` in the given order, scores falling by `step` from `top`."""
    return [ScoredItem(t, top - k * step, (source,), (reason or f"from {source}",)) for k, t in enumerate(ids)]
