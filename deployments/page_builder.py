"""Builds the homepage pipeline from a HomepageConfig, and checks the config once, here.

`check(config)` is the build-time check: every name refers to a real component (sources,
filters, scorer, decorators, artwork policy), every row reads a source the pipeline produces
(and one the config runs), and the decorators fill exactly the fields a homepage item has. A
mistake is a ValueError naming the field, at build time (or at reconfigure, where the old
pipeline keeps serving), never per request. `build_homepage` then assembles the components.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bandits.policies import POLICIES
from deployments.artwork import ArtworkStage, BanditServing
from deployments.candidates import MODEL_SOURCES, ROW_SOURCES
from deployments.catalog import ServingCatalog
from deployments.decorators import ArtworkDecorator, ExplanationDecorator
from deployments.homepage import Homepage, MemberFn, Scoring, Stages
from deployments.page_config import HomepageConfig
from deployments.rows import RowBuilder
from deployments.rules import FILTERS
from deployments.selectors import Diversity, EditorialPins, SeriesCap

# ranker: the model's blended play/completion boosters (ranking.Ranker); popularity: all-time
# plays, no model, over the same candidates (the other side of an interleaving); popular_rows: no
# candidates and no model at all, the catalog's precomputed popular rows (the homepage before
# personalization: `marquee eval`'s popularity peer, the baseline a personalized page must beat)
SCORERS = ("ranker", "popularity", "popular_rows")
INTERLEAVABLE = ("ranker", "popularity")  # scorers of the same candidates: their rows share ids
DECORATORS = ("explanation", "artwork")
ITEM_FIELDS = ("explanation", "artwork")  # the fields of a homepage item the decorators fill
MEMBER_ROWS = ("continue_watching", "my_list")  # row inputs read from member state, not a source
# row input -> the sources that give it (the model's sources or cold titles for "personalized")
ROW_INPUTS: dict[str, tuple[str, ...]] = {
    "personalized": MODEL_SOURCES + ("cold_titles",),
    "top_in_country": ("top_in_country",),
    "trending": ("trending_now",),
    "new_releases": ("new_releases",),
    "because_you_watched": ("because_you_watched",),
    **{name: () for name in MEMBER_ROWS},
}
SEEDED_INPUTS = ("because_you_watched",)  # inputs keyed per seed title: only per_seed rows read them


def check(config: HomepageConfig) -> None:
    """Every name known, every row fed: a ValueError naming the field otherwise."""
    if not isinstance(config, HomepageConfig):
        raise TypeError(f"expected a HomepageConfig, got {type(config).__name__}")
    known_sources = MODEL_SOURCES + ROW_SOURCES
    for name in config.sources:
        if name not in known_sources:
            raise ValueError(f"sources.{name}: unknown source; known: {', '.join(known_sources)}")
    for name in config.filters:
        if name not in FILTERS:
            raise ValueError(f"filters: unknown filter {name!r}; known: {', '.join(FILTERS)}")
    if config.scorer not in SCORERS:
        raise ValueError(f"scorer: unknown scorer {config.scorer!r}; known: {', '.join(SCORERS)}")
    for name in config.interleaving.rankers:
        if name not in INTERLEAVABLE:
            raise ValueError(f"interleaving.rankers: {name!r} cannot be interleaved; "
                             f"interleavable scorers: {', '.join(INTERLEAVABLE)}")
    for name in config.decorators:
        if name not in DECORATORS:
            raise ValueError(f"decorators: unknown decorator {name!r}; known: {', '.join(DECORATORS)}")
    missing = [f for f in ITEM_FIELDS if f not in config.decorators]
    if missing:
        raise ValueError(f"decorators: a homepage item needs {missing} (the response schema); name them")
    if config.artwork.policy not in POLICIES:
        raise ValueError(f"artwork.policy: unknown policy {config.artwork.policy!r}; "
                         f"known: {', '.join(POLICIES)}")
    for spec in config.rows.rows:
        where = f"rows.rows[{spec.row_id}]"
        givers = ROW_INPUTS.get(spec.source)
        if givers is None:
            raise ValueError(f"{where}: source {spec.source!r} is not a row input; known: {', '.join(ROW_INPUTS)}")
        if (spec.source in SEEDED_INPUTS) != (spec.expand == "per_seed"):
            raise ValueError(f"{where}: expand {spec.expand!r} cannot read {spec.source!r} "
                             f"(per_seed rows read {', '.join(SEEDED_INPUTS)}, and only they do)")
        if givers and not any(g in config.sources for g in givers):
            raise ValueError(f"{where}: reads {spec.source!r}, which sources {list(givers)} give, "
                             f"and `sources` names none of them")


def artwork_stage(config: HomepageConfig, serving: BanditServing) -> ArtworkStage:
    """The configured policy and exploration over the replica's shared learned state."""
    art = config.artwork
    return ArtworkStage(serving, art.policy, art.params_for(POLICIES[art.policy]._params), art.seed)


def build_rows(config: HomepageConfig, catalog: ServingCatalog) -> RowBuilder:
    titles = catalog.titles
    selectors = config.selectors
    return RowBuilder(
        config.rows, titles, [FILTERS[name](titles) for name in config.filters],
        EditorialPins(selectors.editorial_pins.slots),
        SeriesCap(titles, selectors.series_cap.max_per_series),
        Diversity(titles, selectors.diversity.mmr_lambda, selectors.diversity.pool_factor))


def scoring(config: HomepageConfig, experiment: str | None = None) -> Scoring:
    """The config's scorer, or its two interleaved ones over the rows the model ranks (source
    `personalized`, single or one per genre: not per seed, whose items another source orders)."""
    rankers = config.interleaving.rankers
    if not rankers:
        return Scoring((config.scorer,))
    rows = frozenset(s.row_id for s in config.rows.rows if s.source == "personalized" and s.expand != "per_seed")
    return Scoring(tuple(rankers), rows, experiment)


def build_homepage(config: HomepageConfig, catalog: ServingCatalog, stages: Stages, member: MemberFn, *,
                   bandit: BanditServing | None = None, record: Callable[[dict], None] | None = None,
                   interleaving_experiment: str | None = None, **timeouts: Any) -> Homepage:
    """The checked pipeline of one config. `bandit`: the replica's learned artwork state (kept
    across rebuilds); `record`: where each page's decision record goes (none: not recorded);
    `interleaving_experiment`: the experiment an interleaving config belongs to (its records
    name it)."""
    check(config)
    serving = bandit or BanditServing(catalog)
    made: Mapping[str, Any] = {"explanation": lambda: ExplanationDecorator(),
                               "artwork": lambda: ArtworkDecorator(artwork_stage(config, serving))}
    decorators = [made[name]() for name in config.decorators]
    fallback = build_rows(HomepageConfig(), catalog)  # the popular rows under the default plan
    return Homepage(catalog, build_rows(config, catalog), decorators, stages, member, fallback,
                    record=record, scoring=scoring(config, interleaving_experiment), **timeouts)
