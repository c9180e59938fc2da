"""Hot values (user_config): parsed whole or refused whole, so a bad value keeps the old ones
serving; editorial slots and boosts reach the page."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.candidates import Retrieved
from deployments.contracts import Candidate, HomepageContext
from deployments.rows import EditorialSlot
from deployments.service import HotConfig


def test_defaults_follow_the_promoted_model_with_no_editorial_slots():
    hot = HotConfig({})
    assert hot.model_version == "promoted" and hot.row_plan.editorial == () and hot.artwork_epsilon == 0.1


def test_editorial_slots_are_parsed_into_the_row_plan():
    hot = HotConfig({"editorial": [{"row_id": "trending", "position": 0, "title_id": 42}]})
    assert hot.row_plan.editorial == (EditorialSlot("trending", 0, 42),)


@pytest.mark.parametrize("raw, words", [
    ({"editorial": [{"row_id": "no_such_row", "position": 0, "title_id": 1}]}, "editorial"),
    ({"editorial": [{"row_id": "trending", "position": -1, "title_id": 1}]}, "position"),
    ({"editorial": {"row_id": "trending"}}, "editorial"),
    ({"model_version": "latest"}, "model_version"),
    ({"artwork_epsilon": 2}, "artwork_epsilon"),
    ({"retrieval": {"faults": {"sequence": "explode"}}}, "faults"),
    ({"colour": "red"}, "unknown key"),
])
def test_a_bad_value_is_refused_with_its_name(raw, words):
    with pytest.raises(ValueError, match=words):
        HotConfig(raw)


def test_a_title_nobody_played_reaches_the_page_through_its_editorial_boost():
    """cold_titles candidates compete at the median ranker score times their genre match; an
    editorial boost lifts one above every ranked title."""
    from deployments.homepage import Homepage

    retrieved = Retrieved(
        model_version="v0001", title_ids=np.array([1, 2, 3]), features=np.zeros((3, 1)),
        proposed_by={1: ("sequence",), 2: ("sequence",), 3: ("embedding",)}, reasons={},
        rows={"cold_titles": [Candidate(9, "cold_titles", 0.5), Candidate(8, "cold_titles", 0.5)]},
        degraded=[], failed_closed=[], timings_ms={}, boost={9: 1.0})
    ctx = HomepageContext(member_id=1, country="US", device="tv", maturity=3, now_ms=0)
    sources = Homepage.sources(None, ctx, retrieved, np.array([0.3, 0.2, 0.1]))
    scores = {item.title_id: item.score for item in sources["personalized"]}
    assert scores[9] > max(scores[1], scores[2], scores[3]) > scores[8]
    assert scores[8] == pytest.approx(0.2 * 0.5)  # median ranker score x genre match
