"""Contracts (validation) and the business rules (filters): what each removes and why."""

from __future__ import annotations

import dataclasses
from datetime import date

import pytest
from serving_fixtures import context

from deployments.contracts import (
    Candidate,
    Filter,
    HomepageContext,
    ScoredItem,
    TitleInfo,
    catalog_from_rows,
)
from deployments.rules import (
    AvailabilityFilter,
    MaturityFilter,
    UnknownTitleFilter,
    WatchedFilter,
    apply_rules,
    default_rules,
)

CATALOG = {
    1: TitleInfo(1, "Heat", ("Crime", "Drama"), 3, {"US", "DE"}),
    2: TitleInfo(2, "Toy Story", ("Animation",), 0, {"US"}),
    3: TitleInfo(3, "Alien", ("Horror",), 3, {"DE"}),
    4: TitleInfo(4, "Paddington", ("Family",), 1, {"US", "DE"}),
}


def ctx(**kw) -> HomepageContext:
    return context(**{"member_id": 7, "maturity": 1, **kw})


def items(*ids: int) -> list[ScoredItem]:
    return [ScoredItem(t, 1.0 - t / 100, ("test",)) for t in ids]


# -- contracts ------------------------------------------------------------------------------------


def test_contracts_reject_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="maturity"):
        ctx(maturity=9)
    with pytest.raises(ValueError, match="device"):
        ctx(device="toaster")
    with pytest.raises(ValueError, match="titles_per_row"):
        ctx(titles_per_row=0)
    with pytest.raises(ValueError, match="score"):
        Candidate(1, "trending", float("nan"))
    with pytest.raises(ValueError, match="source"):
        Candidate(1, "", 1.0)
    with pytest.raises(ValueError, match="genres"):
        TitleInfo(1, "Heat", "Crime")


def test_context_freezes_history_and_is_immutable():
    c = ctx(watched=[1, 2], continue_watching=[3], my_list=[4], recently_watched=[5, 6])
    assert c.watched == frozenset({1, 2}) and c.recently_watched == (5, 6)
    assert c.has_history and not ctx().has_history
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.country = "DE"


def test_catalog_from_title_rows():
    catalog = catalog_from_rows([
        {"title_id": 1, "name": "Heat", "genres": ["Crime"], "maturity": 3, "countries": ["US"],
         "series_id": None, "release_date": date(1970, 1, 2)},
    ])
    assert catalog[1] == TitleInfo(1, "Heat", ("Crime",), 3, frozenset({"US"}), None, 86_400_000)


# -- rules ----------------------------------------------------------------------------------------


def test_rules_satisfy_the_rule_contract():
    for rule in default_rules(CATALOG):
        assert isinstance(rule, Filter)


def test_watched_filter_removes_watched_but_not_continue_watching():
    rule = WatchedFilter(CATALOG)
    kept, removed = rule(ctx(watched={1, 2}, continue_watching=(2,)), items(1, 2, 4))
    assert [k.title_id for k in kept] == [2, 4]
    assert [(r.title_id, r.rule) for r in removed] == [(1, "watched")]
    assert "already watched 'Heat'" in removed[0].reason


def test_availability_filter_names_the_country():
    kept, removed = AvailabilityFilter(CATALOG)(ctx(country="US"), items(1, 3, 99))
    assert [k.title_id for k in kept] == [1]
    assert [r.title_id for r in removed] == [3, 99]
    assert "'Alien' (3) is not available in US" in removed[0].reason
    assert "no catalog entry" in removed[1].reason  # fail closed


def test_maturity_filter_names_both_levels():
    kept, removed = MaturityFilter(CATALOG)(ctx(maturity=1), items(1, 2, 4))
    assert [k.title_id for k in kept] == [2, 4]
    assert removed[0].title_id == 1
    assert "rated mature, above the profile's family" in removed[0].reason


def test_unknown_title_filter():
    kept, removed = UnknownTitleFilter(CATALOG)(ctx(), items(2, 42))
    assert [k.title_id for k in kept] == [2]
    assert removed[0].rule == "unknown_title" and "42" in removed[0].reason


def test_apply_rules_counts_every_removal_by_rule_with_zeros():
    c = ctx(country="US", maturity=1, watched={4})
    kept, removals, counts = apply_rules(default_rules(CATALOG), c, items(1, 2, 3, 4, 50, 51))
    assert [k.title_id for k in kept] == [2]
    # each title is removed once, by the first rule that objects
    assert counts == {"unknown_title": 2, "watched": 1, "availability": 1, "maturity": 1}
    assert sum(counts.values()) == len(removals) == 4 + 1
    assert sorted(r.title_id for r in removals) == [1, 3, 4, 50, 51]
    assert [r.reason for r in removals if r.rule == "availability"] == ["'Alien' (3) is not available in US"]


def test_apply_rules_keeps_order_and_reports_zero_counts_when_nothing_removed():
    kept, removals, counts = apply_rules(default_rules(CATALOG), ctx(maturity=3), items(4, 1, 2))
    assert [k.title_id for k in kept] == [4, 1, 2]
    assert removals == [] and set(counts.values()) == {0}


def test_apply_rules_rejects_a_rule_that_loses_items_and_duplicate_names():
    class Lossy:
        name = "lossy"

        def __call__(self, ctx, items):
            return list(items)[1:], []

    with pytest.raises(RuntimeError, match="lossy"):
        apply_rules([Lossy()], ctx(), items(1, 2))
    with pytest.raises(ValueError, match="watched"):
        apply_rules([WatchedFilter(CATALOG), WatchedFilter(CATALOG)], ctx(), items(1))
    with pytest.raises(TypeError, match="catalog"):
        WatchedFilter([1, 2])
