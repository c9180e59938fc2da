"""Each row selector on its own, on one RowFill: the pins claim positions and leave the pool,
the series cap adds a limit counting the pins, diversity picks under every limit."""

from __future__ import annotations

from serving_fixtures import catalog_of, title

from deployments.contracts import ScoredItem
from deployments.selectors import (
    Diversity,
    EditorialPins,
    EditorialSlot,
    RowFill,
    SeriesCap,
)

CATALOG = catalog_of(*(title(t, ("Drama",) if t < 10 else ("Comedy",), series=500 if t in (1, 2, 3) else None)
                       for t in range(1, 20)))


def fill(ids, size=4, on_page=(), allowed=None) -> RowFill:
    items = [ScoredItem(t, 1.0 - t / 100, ("trending",), ("r",)) for t in ids]
    return RowFill("trending", size, True, items, set(on_page), set(allowed if allowed is not None else ids))


def test_pins_claim_their_position_and_leave_the_pool():
    row = fill([1, 4, 5, 6], allowed=[1, 4, 5, 6, 12])
    EditorialPins([EditorialSlot("trending", 0, 12), EditorialSlot("other", 0, 4)])(row)
    assert [(p, i.title_id) for p, i in row.pinned] == [(0, 12)] and row.pinned[0][1].sources == ("editorial",)
    assert [i.title_id for i in row.pool] == [1, 4, 5, 6] and row.want == 3
    row.chosen = row.pool[:3]
    assert [i.title_id for i in row.result()] == [12, 1, 4, 5]


def test_a_pin_the_filters_removed_or_already_on_the_page_is_skipped():
    row = fill([4, 5], on_page=[6], allowed=[4, 5, 6])
    EditorialPins([EditorialSlot("trending", 0, 13), EditorialSlot("trending", 1, 6)])(row)
    assert row.pinned == []


def test_the_series_cap_counts_the_pins_and_diversity_obeys_it():
    row = fill([2, 3, 4, 5, 6], size=4)
    row.pinned = [(0, ScoredItem(1, 0.0, ("editorial",)))]  # one season of series 500 pinned
    SeriesCap(CATALOG, max_per_series=2)(row)
    assert row.limits[0].counts == {500: 1}
    Diversity(CATALOG, mmr_lambda=1.0)(row)  # score order under the cap: only one more of 500
    assert [i.title_id for i in row.chosen] == [2, 4, 5]


def test_diversity_trades_score_for_genres_only_below_lambda_one():
    ids = [1, 4, 5, 6, 7, 11]  # Drama scored above the one Comedy title
    strong, none = fill(ids, size=3), fill(ids, size=3)
    Diversity(CATALOG, mmr_lambda=0.3)(strong)
    Diversity(CATALOG, mmr_lambda=1.0)(none)
    assert [i.title_id for i in none.chosen] == [1, 4, 5]
    assert 11 in [i.title_id for i in strong.chosen] and strong.chosen[0].title_id == 1
