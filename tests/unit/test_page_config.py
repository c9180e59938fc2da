"""HomepageConfig: overrides merge and validate (naming the field), the build refuses unknown
components and rows nothing feeds, and a variant is an override and nothing else: two pipelines
built from one base config and a small override give the pages the override says."""

from __future__ import annotations

import asyncio

import pytest

from deployments.homepage import HomepageRequest
from deployments.page_builder import build_homepage, check
from deployments.page_config import HomepageConfig, apply_override
from test_homepage import CATALOG, GENRE_OF, Stages

FOR_YOU = {"row_id": "for_you", "source": "personalized", "title": "For you"}


def test_an_override_merges_nested_values_and_leaves_the_base_alone():
    base = HomepageConfig()
    variant = apply_override(base, {"selectors": {"diversity": {"mmr_lambda": 0.4}},
                                    "sources": {"sequence": {"timeout_ms": 80}, "embedding": None}})
    assert variant.selectors.diversity.mmr_lambda == 0.4
    assert variant.selectors.diversity.pool_factor == base.selectors.diversity.pool_factor  # merged, not replaced
    assert variant.sources["sequence"].timeout_ms == 80 and "embedding" not in variant.sources
    assert base == HomepageConfig() and base.selectors.diversity.mmr_lambda == 0.7
    assert HomepageConfig.from_dict(variant.to_dict()) == variant  # the config round-trips as data
    assert apply_override(base, {}) is base


@pytest.mark.parametrize("override, named", [
    ({"rows": {"rows": [{"row_id": "x", "source": "trending", "title": "{movie}"}]}}, r"rows\.rows\[0\].*template"),
    ({"rows": {"order": "random"}}, "rows.order"),
    ({"selectors": {"series_cap": {"max_per_series": 0}}}, "selectors.series_cap.max_per_series"),
    ({"selectors": {"mmr": {}}}, "selectors: unknown key"),
    ({"candidates": {"row_depth": -1}}, "candidates.row_depth"),
    ({"filters": "watched"}, "filters"),
])
def test_a_bad_override_is_refused_naming_the_field(override, named):
    with pytest.raises(ValueError, match=named):
        apply_override(HomepageConfig(), override)


@pytest.mark.parametrize("override, named", [
    ({"filters": ["watched", "profanity"]}, "filters: unknown filter 'profanity'"),
    ({"scorer": "coin_flip"}, "scorer: unknown scorer"),
    ({"decorators": ["explanation"]}, r"decorators: a homepage item needs \['artwork'\]"),
    ({"artwork": {"policy": "ucb1000"}}, "artwork.policy: unknown policy"),
    ({"sources": {"wikipedia": {}}}, "sources.wikipedia: unknown source"),
    ({"rows": {"rows": [{"row_id": "x", "source": "nowhere", "title": "X"}]}}, r"rows\.rows\[x\]: source 'nowhere'"),
    ({"rows": {"rows": [{"row_id": "x", "source": "because_you_watched", "title": "X"}]}}, "per_seed"),
    ({"sources": {"trending_now": None}}, r"rows\.rows\[trending\]: reads 'trending'"),
])
def test_the_build_refuses_what_no_component_is(override, named):
    config = apply_override(HomepageConfig(), override)  # valid as data...
    with pytest.raises(ValueError, match=named):  # ...but not a pipeline: refused at build, not per request
        build_homepage(config, CATALOG, Stages(), Stages().member)
    check(HomepageConfig())  # the default config builds


def page(config: HomepageConfig) -> dict:
    stages = Stages()
    homepage = build_homepage(config, CATALOG, stages, stages.member)
    return asyncio.run(homepage(HomepageRequest(1, request_id="variant", titles_per_row=5)))


CONTINUE_WATCHING = {"row_id": "continue_watching", "source": "continue_watching", "title": "Continue Watching",
                     "min_items": 1, "diversify": False, "pin_top": True}


def for_you(p: dict) -> list[int]:
    return [i["title_id"] for r in p["rows"] if r["row_id"] == "for_you" for i in r["items"]]


def test_a_variant_is_an_override_of_the_base_config_and_nothing_else():
    base = HomepageConfig()
    variant = apply_override(base, {"rows": {"rows": [CONTINUE_WATCHING, FOR_YOU]},  # another row plan
                                    "selectors": {"diversity": {"mmr_lambda": 0.0}}})  # the strongest diversity
    plain = apply_override(variant, {"selectors": {"diversity": {"mmr_lambda": 1.0}}})  # control: same rows

    base_page, variant_page, plain_page = page(base), page(variant), page(plain)
    assert [r["row_id"] for r in variant_page["rows"]] == ["continue_watching", "for_you"]
    assert "because_you_watched:2" in [r["row_id"] for r in base_page["rows"]]  # the base plan's rows
    assert "for_you" not in [r["row_id"] for r in base_page["rows"]]
    # ranked scores fall with the title id, so score order is all Drama (1..10); full diversity
    # takes the best title of each genre first, then (every genre now shown) score order again
    # (watched 2 and continue-watching 7 are not there)
    assert for_you(plain_page) == [1, 3, 4, 5, 6]
    assert for_you(variant_page) == [1, 11, 21, 3, 4]
    assert {GENRE_OF[t] for t in for_you(variant_page)} == {"Drama", "Comedy", "Action"}
    assert base_page["rows"] == page(base)["rows"]  # building the variants changed nothing in the base
