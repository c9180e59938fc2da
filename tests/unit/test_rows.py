"""RowBuilder and the row selectors: row choice and order, page dedupe, series cap, MMR
diversity, limits, editorial pins."""

from __future__ import annotations

import random

import pytest
from serving_fixtures import context, genre_blocks, scored, title

from deployments.contracts import Candidate, HomepageContext, ScoredItem
from deployments.rows import DEFAULT_ROWS, RowBuilder, RowPlan, RowSpec
from deployments.rules import default_rules
from deployments.selectors import Diversity, EditorialPins, EditorialSlot, SeriesCap

# 1..30 Drama, 31..60 Comedy, 61..90 Action; every title in US, maturity family.
CATALOG = genre_blocks(("Drama", range(1, 31)), ("Comedy", range(31, 61)), ("Action", range(61, 91)))


def ctx(**kw) -> HomepageContext:
    return context(**{"rows_limit": 10, "titles_per_row": 5, **kw})


def ids_of(rows) -> dict[str, tuple[int, ...]]:
    return {r.row_id: r.title_ids for r in rows}


def builder(catalog=None, *, mmr_lambda: float = 0.7, max_per_series: int = 2, editorial=(),
            order: str = "relevance", rows=DEFAULT_ROWS) -> RowBuilder:
    """The row builder with the default filters and the three selectors, set as given."""
    catalog = CATALOG if catalog is None else catalog
    return RowBuilder(RowPlan(rows, order), catalog, default_rules(catalog), EditorialPins(editorial),
                      SeriesCap(catalog, max_per_series), Diversity(catalog, mmr_lambda))


def no_diversity(catalog=None, **kw) -> RowBuilder:
    return builder(catalog, mmr_lambda=1.0, **kw)


def test_no_title_twice_on_the_page_and_it_goes_to_the_highest_row():
    sources = {
        "trending": scored("trending", range(1, 11), top=0.9),
        "top_in_country": scored("top_in_country", range(3, 13), top=0.5),
    }
    rows = no_diversity().build(ctx(), sources)
    assert [r.row_id for r in rows] == ["trending", "top_in_country"]  # higher relevance first
    assert rows[0].title_ids == (1, 2, 3, 4, 5)
    assert rows[1].title_ids == (6, 7, 8, 9, 10)
    everything = [t for r in rows for t in r.title_ids]
    assert len(everything) == len(set(everything))


def test_rows_ordered_by_relevance_with_continue_watching_first():
    sources = {
        "continue_watching": scored("continue_watching", [61, 62], top=0.01),
        "trending": scored("trending", range(1, 8), top=0.4),
        "new_releases": scored("new_releases", range(31, 38), top=0.8),
    }
    rows = no_diversity().build(ctx(continue_watching=(61, 62)), sources)
    assert [r.row_id for r in rows] == ["continue_watching", "new_releases", "trending"]
    plan_order = no_diversity(order="plan").build(ctx(continue_watching=(61, 62)), sources)
    assert [r.row_id for r in plan_order] == ["continue_watching", "trending", "new_releases"]


def test_at_most_two_titles_of_one_series_per_row():
    catalog = dict(CATALOG)
    for t in range(1, 6):  # five seasons of one show, scored highest
        catalog[t] = title(t, series=500)
    rows = no_diversity(catalog).build(ctx(), {"trending": scored("trending", range(1, 20))})
    assert rows[0].title_ids == (1, 2, 6, 7, 8)
    capped = builder(catalog, mmr_lambda=0.5, max_per_series=1).build(
        ctx(), {"trending": scored("trending", range(1, 20))})
    assert sum(1 for t in capped[0].title_ids if catalog[t].series_id == 500) == 1


def test_mmr_diversifies_genres_when_lambda_below_one_and_not_at_one():
    # ten Drama titles scored high, then lower-scored Comedy and Action titles
    pool = scored("trending", range(1, 11), top=1.0) + scored("trending", [31, 32, 61, 62], top=0.5)
    sources = {"trending": pool}
    genres = lambda row: {CATALOG[t].genres[0] for t in row.title_ids}  # noqa: E731

    pure = builder(mmr_lambda=1.0).build(ctx(titles_per_row=6), sources)[0]
    assert pure.title_ids == (1, 2, 3, 4, 5, 6) and genres(pure) == {"Drama"}

    mixed = builder(mmr_lambda=0.5).build(ctx(titles_per_row=6), sources)[0]
    assert mixed.title_ids[0] == 1  # the best title still leads
    assert genres(mixed) == {"Drama", "Comedy", "Action"}
    assert len(mixed.title_ids) == 6


def test_rows_with_order_meaning_are_not_diversified():
    sources = {"top_in_country": scored("top_in_country", [1, 2, 3, 31, 61])}
    rows = builder(mmr_lambda=0.0).build(ctx(), sources)
    assert rows[0].title_ids == (1, 2, 3, 31, 61)


def test_limits_titles_per_row_rows_limit_and_top_10():
    sources = {
        "trending": scored("trending", range(1, 31), top=0.9),
        "new_releases": scored("new_releases", range(31, 61), top=0.8),
        "top_in_country": scored("top_in_country", range(61, 91), top=0.7),
    }
    rows = no_diversity().build(ctx(titles_per_row=20, rows_limit=2), sources)
    assert [r.row_id for r in rows] == ["trending", "new_releases"]
    assert all(len(r.items) == 20 for r in rows)
    page = no_diversity().build_page(ctx(titles_per_row=20, rows_limit=3), sources)
    assert len(page.rows[2].items) == 10  # "Top 10 in US" caps at 10
    assert page.rows[2].title == "Top 10 in US"


def test_a_row_with_too_few_titles_is_dropped_and_the_drop_is_recorded():
    sources = {"trending": scored("trending", [1, 2]), "new_releases": scored("new_releases", range(31, 40))}
    page = no_diversity().build_page(ctx(), sources)
    assert [r.row_id for r in page.rows] == ["new_releases"]
    assert ("trending", "2 eligible titles, needs 3") in page.dropped_rows


def test_rules_apply_and_removals_are_counted_once_per_title():
    catalog = dict(CATALOG)
    catalog[2] = title(2, countries=("DE",))
    catalog[3] = title(3, maturity=3)
    sources = {
        "trending": scored("trending", range(1, 10)),
        "new_releases": scored("new_releases", [1, 2, 3, 4, 99], top=0.5),
    }
    page = no_diversity(catalog).build_page(ctx(maturity=1, watched={1}), sources)
    on_page = {t for r in page.rows for t in r.title_ids}
    assert not on_page & {1, 2, 3, 99}
    assert page.removal_counts == {"unknown_title": 1, "watched": 1, "availability": 1, "maturity": 1}
    assert sorted(r.title_id for r in page.removals) == [1, 2, 3, 99]


def test_continue_watching_survives_the_watched_filter():
    sources = {"continue_watching": scored("continue_watching", [5, 6])}
    rows = builder().build(ctx(watched={5, 6}, continue_watching=(5, 6)), sources)
    assert ids_of(rows) == {"continue_watching": (5, 6)}


def test_editorial_pins_at_position_subject_to_rules_and_page_dedupe():
    catalog = dict(CATALOG)
    catalog[70] = title(70, ("Action",), maturity=3)  # too mature for the profile below
    rows_with_pins = no_diversity(
        catalog,
        editorial=(
            EditorialSlot("new_releases", 1, 40),  # not in any source: pinned anyway
            EditorialSlot("new_releases", 0, 70),  # removed by the maturity rule
            EditorialSlot("new_releases", 2, 2),  # already in the higher Trending row
        ),
    )
    sources = {
        "trending": scored("trending", range(1, 10), top=0.9),
        "new_releases": scored("new_releases", range(31, 39), top=0.5),
    }
    page = rows_with_pins.build_page(ctx(maturity=1), sources)
    rows = ids_of(page.rows)
    assert rows["trending"] == (1, 2, 3, 4, 5)
    assert rows["new_releases"] == (31, 40, 32, 33, 34)
    pinned = page.rows[1].items[1]
    assert pinned.sources == ("editorial",) and pinned.reasons == ("Editor's pick",)
    assert page.removal_counts["maturity"] == 1 and 70 not in {t for r in page.rows for t in r.title_ids}


def test_editorial_pin_of_a_title_already_in_the_row_moves_it_and_keeps_its_sources():
    rows = no_diversity(editorial=(EditorialSlot("trending", 0, 5),)).build(
        ctx(), {"trending": scored("trending", range(1, 10))})
    assert rows[0].title_ids == (5, 1, 2, 3, 4)
    assert rows[0].items[0].sources == ("trending", "editorial")


def test_empty_sources_give_an_empty_page_not_an_error():
    page = builder().build_page(ctx(), {})
    assert page.rows == () and page.removals == ()
    assert builder().build(ctx(), {"trending": []}) == []


def test_cold_start_member_gets_popular_rows_but_no_history_rows():
    sources = {
        "continue_watching": [],
        "my_list": [],
        "top_in_country": scored("top_in_country", range(1, 12), top=0.9),
        "trending": scored("trending", range(31, 45), top=0.8),
        "personalized": scored("personalized", list(range(61, 75)) + list(range(45, 50)), top=0.7),
    }
    rows = builder().build(ctx(), sources)
    row_ids = [r.row_id for r in rows]
    assert "top_in_country" in row_ids and "trending" in row_ids
    assert "genre:action" in row_ids  # cold start: genre rows from what is strong in the pool
    assert not any(r.startswith(("continue_watching", "my_list", "because_you_watched")) for r in row_ids)


def test_because_you_watched_one_row_per_recent_seed_at_most_three():
    seeds = (1, 2, 3, 4)
    sources = {f"because_you_watched:{s}": scored("because_you_watched", range(10 * s, 10 * s + 6), top=0.9 - s / 10)
               for s in seeds}
    catalog = dict(CATALOG)
    catalog[1] = title(1, name="Heat")
    rows = no_diversity(catalog).build(ctx(recently_watched=seeds), sources)
    byw = [r for r in rows if r.row_id.startswith("because_you_watched:")]
    assert [r.row_id for r in byw] == ["because_you_watched:1", "because_you_watched:2", "because_you_watched:3"]
    assert byw[0].title == "Because you watched Heat"


def test_genre_rows_follow_the_members_history():
    sources = {"personalized": scored("personalized", list(range(1, 10)) + list(range(31, 40)) + list(range(61, 70)))}
    member = ctx(recently_watched=(31, 32, 61), watched={33, 31, 32, 61})
    rows = no_diversity().build(member, sources)
    assert [r.row_id for r in rows] == ["genre:comedy", "genre:action"]
    assert rows[0].title == "Comedy"
    assert all(CATALOG[t].genres == ("Comedy",) for t in rows[0].title_ids)


def test_same_input_in_any_order_gives_the_same_page():
    def sources(seed: int) -> dict[str, list[ScoredItem]]:
        rng = random.Random(seed)
        out = {
            # ties on purpose: equal scores must break by title_id
            "trending": [ScoredItem(t, 0.5, ("trending",)) for t in range(1, 40, 2)],
            "personalized": scored("personalized", range(1, 91), step=0.003),
            "new_releases": scored("new_releases", range(50, 70)),
        }
        for items in out.values():
            rng.shuffle(items)
        return out

    member = ctx(recently_watched=(3,), watched={3})
    first = builder().build_page(member, sources(0))
    for seed in (1, 2, 3):
        assert builder().build_page(member, sources(seed)) == first
    assert len(first.rows) >= 3


def test_equal_scores_break_ties_by_title_id():
    tied = [ScoredItem(t, 0.5, ("trending",)) for t in (9, 3, 7, 1, 5, 11)]
    for lam in (1.0, 0.5):
        assert builder(mmr_lambda=lam).build(ctx(), {"trending": tied})[0].title_ids == (1, 3, 5, 7, 9)


def test_bad_plans_and_sources_fail_loudly():
    assert not RowPlan().produces("nonexistent")
    assert not RowPlan().produces("because_you_watched")  # needs a seed id
    assert RowPlan().produces("because_you_watched:12") and RowPlan().produces("trending")
    with pytest.raises(ValueError, match="mmr_lambda"):
        Diversity(CATALOG, mmr_lambda=1.5)
    with pytest.raises(ValueError, match="max_per_series"):
        SeriesCap(CATALOG, 0)
    with pytest.raises(ValueError, match="duplicate"):
        RowPlan(rows=DEFAULT_ROWS + (DEFAULT_ROWS[0],))
    with pytest.raises(ValueError, match="template"):
        RowSpec("x", "x", "Because you watched {movie}")
    with pytest.raises(TypeError, match="ScoredItem"):
        builder().build(ctx(), {"trending": [Candidate(1, "trending", 1.0)]})
