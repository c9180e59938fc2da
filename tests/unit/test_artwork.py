"""Epsilon-greedy artwork: logged propensities are the policy's true probabilities, choices replay."""

from __future__ import annotations

from collections import Counter

import pytest

from deployments.artwork import EpsilonGreedyArtwork

ARMS = ["poster-a", "poster-b", "poster-c", "poster-d"]


def context(i: int, title_id: int = 11) -> dict:
    return {"request_id": f"req-{i}", "member_id": 3, "title_id": title_id, "device": "tv", "row": "trending"}


def probabilities(policy: EpsilonGreedyArtwork, arms: list[str]) -> dict[str, float]:
    """What the policy does, written out: every arm eps/K, plus 1 - eps on the greedy one."""
    k, best = len(arms), policy.greedy(arms)
    return {arm: policy.epsilon / k + (1.0 - policy.epsilon if arm == best else 0.0) for arm in arms}


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_propensity_is_the_probability_of_the_chosen_arm(epsilon, k):
    policy = EpsilonGreedyArtwork(epsilon, seed=1)
    arms = ARMS[:k]
    policy.update({}, arms[-1], 1.0)  # make a non-first arm greedy
    truth = probabilities(policy, arms)
    assert sum(truth.values()) == pytest.approx(1.0)
    for i in range(200):
        arm, propensity = policy.select(context(i), arms)
        assert arm in arms
        assert propensity == pytest.approx(truth[arm])
        assert propensity > 0.0


def test_greedy_and_exploring_propensities_by_formula():
    eps, k = 0.2, len(ARMS)
    policy = EpsilonGreedyArtwork(eps, seed=5)
    seen = {}
    for i in range(500):
        arm, propensity = policy.select(context(i), ARMS)
        seen[arm] = propensity
    assert seen["poster-a"] == pytest.approx(1 - eps + eps / k)  # untried arms: the first is greedy
    for arm in ARMS[1:]:
        assert seen[arm] == pytest.approx(eps / k)


def test_same_request_and_title_gives_the_same_arm():
    policy = EpsilonGreedyArtwork(0.5, seed=9)
    choices = {policy.select(context(i), ARMS) for i in range(50)}
    assert len({arm for arm, _ in choices}) > 1  # different requests explore differently
    for i in range(50):
        assert policy.select(context(i), ARMS) == policy.select(context(i), ARMS)
        assert EpsilonGreedyArtwork(0.5, seed=9).select(context(i), ARMS) == policy.select(context(i), ARMS)


def test_other_seeds_or_titles_choose_independently():
    a, b = EpsilonGreedyArtwork(0.5, seed=1), EpsilonGreedyArtwork(0.5, seed=2)
    assert [a.select(context(i), ARMS) for i in range(100)] != [b.select(context(i), ARMS) for i in range(100)]
    assert ([a.select(context(i, 1), ARMS) for i in range(100)]
            != [a.select(context(i, 2), ARMS) for i in range(100)])


def test_empirical_frequencies_match_the_propensities():
    eps, k, n = 0.3, len(ARMS), 6000
    policy = EpsilonGreedyArtwork(eps, seed=11)
    policy.update({}, "poster-c", 1.0)
    counts = Counter(policy.select(context(i), ARMS)[0] for i in range(n))
    greedy = 1 - eps + eps / k
    assert abs(counts["poster-c"] / n - greedy) < 0.03  # about 5 standard errors
    for arm in ("poster-a", "poster-b", "poster-d"):
        assert abs(counts[arm] / n - eps / k) < 0.02


def test_update_changes_the_greedy_arm():
    policy = EpsilonGreedyArtwork(0.0)
    assert policy.select(context(0), ARMS) == ("poster-a", 1.0)
    policy.update(context(0), "poster-b", 1.0)
    assert policy.greedy(ARMS) == "poster-b"
    assert policy.select(context(0), ARMS) == ("poster-b", 1.0)
    for _ in range(3):
        policy.update(context(0), "poster-b", 0.0)  # mean 0.25
    policy.update(context(0), "poster-d", 0.5)  # mean 0.5
    assert policy.select(context(1), ARMS) == ("poster-d", 1.0)


@pytest.mark.parametrize("epsilon", [-0.1, 1.01, 2])
def test_epsilon_out_of_range_is_rejected(epsilon):
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonGreedyArtwork(epsilon)


def test_no_arms_is_rejected():
    with pytest.raises(ValueError, match="no artwork"):
        EpsilonGreedyArtwork(0.1).select(context(0), [])
