"""Hot values (user_config): the model pin plus an override of the page config, parsed whole or
refused whole (naming the bad field), so a bad value keeps the old ones serving; editorial slots
and boosts reach the page; a reconfigure swaps the whole pipeline or nothing."""

from __future__ import annotations

import numpy as np
import pytest

from deployments.candidates import Retrieved, SourcePolicy
from deployments.contracts import Candidate, HomepageContext
from deployments.page_config import HomepageConfig, HotValues
from deployments.selectors import EditorialSlot


def test_defaults_follow_the_promoted_model_with_the_default_page():
    hot = HotValues.parse({})
    assert hot.model_version == "promoted" and hot.page == HomepageConfig()
    assert hot.page.selectors.editorial_pins.slots == () and hot.page.artwork.epsilon == 0.1


def test_editorial_slots_and_source_policies_are_parsed_into_the_page_config():
    hot = HotValues.parse({"model_version": "v0012",
                           "selectors": {"editorial_pins": {"slots": [{"row_id": "trending", "position": 0,
                                                                       "title_id": 42}], "boosts": {"7": 0.5}}},
                           "sources": {"embedding": {"timeout_ms": 40, "fail_open": False, "fault": "slow"}}})
    assert hot.model_version == "v0012"
    assert hot.page.selectors.editorial_pins.slots == (EditorialSlot("trending", 0, 42),)
    retrieval = hot.page.retrieval()
    assert retrieval.policy("embedding") == SourcePolicy(40, False)
    assert retrieval.policy("sequence") == SourcePolicy()  # the others keep their defaults
    assert retrieval.faults == {"embedding": "slow"} and retrieval.editorial_boost == {7: 0.5}


@pytest.mark.parametrize("raw, words", [
    ({"selectors": {"editorial_pins": {"slots": [{"row_id": "no_such_row", "position": 0, "title_id": 1}]}}},
     "editorial_pins.slots: slot names row 'no_such_row'"),
    ({"selectors": {"editorial_pins": {"slots": [{"row_id": "trending", "position": -1, "title_id": 1}]}}},
     "slots\\[0\\].*position"),
    ({"selectors": {"editorial_pins": {"slots": {"row_id": "trending"}}}}, "editorial_pins.slots"),
    ({"model_version": "latest"}, "model_version"),
    ({"artwork": {"epsilon": 2}}, "artwork.epsilon"),
    ({"sources": {"sequence": {"fault": "explode"}}}, "sources.sequence.fault"),
    ({"sources": {"sequence": {"timeout_ms": 0}}}, "sources.sequence.timeout_ms"),
    ({"sources": {"sequence": {"timeout": 5}}}, "sources.sequence: unknown key"),
    ({"selectors": {"diversity": {"mmr_lambda": 1.5}}}, "selectors.diversity.mmr_lambda"),
    ({"colour": "red"}, "unknown key"),
])
def test_a_bad_value_is_refused_with_its_name(raw, words):
    with pytest.raises(ValueError, match=words):
        HotValues.parse(raw)


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
