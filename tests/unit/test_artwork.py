"""The serving artwork stage: one policy call per page, propensities that are the policy's,
choices that replay for a request, learned state picked up, hot parameters applied to a copy."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from bandits.context import FEATURE_DIM, N_THEMES
from bandits.policies import Feedback, make_policy
from bandits.arms import ArmTable
from deployments.artwork import ArtworkStage, BanditServing
from deployments.catalog import ServingCatalog
from marquee.schema import ARTWORK_THEMES
from serving_fixtures import catalog_of, context, title

THEMES = ARTWORK_THEMES


def catalog() -> ServingCatalog:
    titles = catalog_of(*(title(t, ("Drama",) if t % 2 else ("Comedy",)) for t in range(1, 41)))
    artwork = {t: tuple(f"art-{t}-{k}" for k in range(6 if t <= 30 else 2)) for t in range(1, 39)}  # 39, 40: none
    theme = {art: THEMES[k % len(THEMES)] for arts in artwork.values() for k, art in enumerate(arts)}
    return ServingCatalog(titles=titles, artwork=artwork, members={}, top_in_country={}, popular=[], trending=[],
                          new_releases=[], as_of_ms=0, artwork_theme=theme)


CATALOG = catalog()
PAGE = list(range(1, 41))


def test_arm_table_pads_titles_to_the_widest_and_knows_each_arms_theme():
    arms = BanditServing(CATALOG).arms
    assert arms.arm_themes.shape == (38, 6)
    row = arms.row_of[31]
    assert list(arms.arm_themes[row]) == [0, 1, -1, -1, -1, -1] and arms.arm_ids[row] == ("art-31-0", "art-31-1")
    assert 39 not in arms.row_of


def test_one_choice_per_title_from_its_own_artwork_titles_without_artwork_get_none():
    stage = ArtworkStage(BanditServing(CATALOG), "uniform", {}, seed=1)
    decision = stage.choose(context(request_id="r1"), PAGE)
    assert set(decision.choices) == set(PAGE)
    for t in range(1, 39):
        arm, p = decision.choices[t]
        assert arm in CATALOG.artwork[t] and p == pytest.approx(1 / len(CATALOG.artwork[t]))
    assert decision.choices[39] == (None, 1.0) and decision.choices[40] == (None, 1.0)
    assert decision.policy == "uniform" and decision.version == 0
    assert len(decision.context["member"]) > 0 and decision.context["device"] == "tv"


def test_same_request_same_artwork_other_requests_explore():
    stage = ArtworkStage(BanditServing(CATALOG), "epsilon_greedy", {"epsilon": 0.5}, seed=3)
    first = stage.choose(context(request_id="same"), PAGE).choices
    assert stage.choose(context(request_id="same"), PAGE).choices == first
    others = {stage.choose(context(request_id=f"r{i}"), PAGE).choices[1][0] for i in range(30)}
    assert len(others) > 1


def test_epsilon_greedy_propensities_match_how_often_each_arm_is_shown():
    serving = BanditServing(CATALOG)
    learned = make_policy("epsilon_greedy", FEATURE_DIM, n_classes=N_THEMES, epsilon=0.3)
    x = np.zeros((1, FEATURE_DIM))
    learned.update(Feedback(x, np.array([2]), np.array([1.0])))  # theme 2 is now the greedy class
    serving.publish(learned.to_state())
    stage = ArtworkStage(serving, "epsilon_greedy", {"epsilon": 0.3}, seed=5)
    shown, logged = Counter(), {}
    n = 3000
    for i in range(n):
        arm, p = stage.choose(context(request_id=f"q{i}"), [1]).choices[1]
        shown[arm] += 1
        logged[arm] = p
    for arm, count in shown.items():
        assert count / n == pytest.approx(logged[arm], abs=0.03)
    assert max(shown, key=shown.get) == "art-1-2"


def test_a_published_state_is_picked_up_and_hot_parameters_apply_to_this_stage_only():
    serving = BanditServing(CATALOG)
    low = ArtworkStage(serving, "epsilon_greedy", {"epsilon": 0.0}, seed=1)
    high = ArtworkStage(serving, "epsilon_greedy", {"epsilon": 1.0}, seed=1)
    learned = make_policy("epsilon_greedy", FEATURE_DIM, n_classes=N_THEMES, epsilon=0.1)
    learned.update(Feedback(np.zeros((1, FEATURE_DIM)), np.array([4]), np.array([1.0])))
    serving.publish(learned.to_state())
    assert low.choose(context(request_id="a"), [2]).choices[2] == ("art-2-4", 1.0)
    assert low.choose(context(request_id="a"), [2]).version == 1
    assert high.choose(context(request_id="a"), [2]).choices[2][1] == pytest.approx(1 / 6)
    assert serving.state("epsilon_greedy")["epsilon"] == 0.1  # the shared state is not mutated


def test_published_member_theme_counts_reach_the_context():
    counts = {1: (np.full(N_THEMES, 10.0), np.eye(N_THEMES)[3] * 5)}
    serving = BanditServing(CATALOG, member_counts=counts.get)
    with_history = serving.member_vector(context(member_id=1))
    without = serving.member_vector(context(member_id=2))
    assert not np.array_equal(with_history, without)


@pytest.mark.parametrize("policy, params, field", [("magic", {}, "artwork.policy"),
                                                   ("linucb", {"alpha": -1.0}, "alpha"),
                                                   ("epsilon_greedy", {"epsilon": 2.0}, "epsilon")])
def test_a_bad_policy_or_parameter_is_refused_naming_it(policy, params, field):
    with pytest.raises(ValueError, match=field):
        ArtworkStage(BanditServing(CATALOG), policy, params, seed=1)


@pytest.mark.parametrize("name", ["uniform", "epsilon_greedy", "linucb", "linear_ts", "bernoulli_ts"])
def test_every_policy_serves_a_page(name):
    decision = ArtworkStage(BanditServing(CATALOG), name, {}, seed=2).choose(context(request_id="p"), PAGE)
    probabilities = [p for arm, p in decision.choices.values() if arm is not None]
    assert len(probabilities) == 38 and all(0 < p <= 1 for p in probabilities)


def test_the_learners_context_row_of_a_shown_arm_is_the_one_serving_scored():
    """The learner rebuilds x from the decision record's member vector: it must equal the row
    of the same arm in the page serving built."""
    from bandits.context import page_features

    serving = BanditServing(CATALOG)
    ctx = context(request_id="x", recently_watched=(3, 4))
    member = serving.member_vector(ctx)
    arms = serving.arms
    row = arms.row_of[5]
    page, _ = page_features(member, arms.arm_themes[[row]], arms.genres[[row]])
    x, classes, known = arms.shown_rows(np.array([member]), [5], ["art-5-3"])
    assert known.all() and classes[0] == arms.arm_themes[row, 3]
    np.testing.assert_array_equal(x[0], page[0, 3])
    _, _, unknown = arms.shown_rows(np.array([member]), [5], ["art-9-0"])
    assert not unknown.any()
