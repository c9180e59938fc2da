"""The artwork policies' contract: validated parameters, distributions that sum to one, propensities
that are the probability the choice had (against closed forms from scipy and empirical
frequencies), state round trips, versions, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import integrate, stats

from bandits.policies import (
    POLICIES,
    Feedback,
    PageContext,
    make_policy,
    policy_from_state,
)

DIM, CLASSES, WIDTH = 10, 8, 6
SETTINGS = {
    "uniform": {},
    "epsilon_greedy": {"epsilon": 0.2},
    "linucb": {"alpha": 0.5},
    "linucb_shared": {"alpha": 0.5, "arm_model": "shared"},
    "linear_ts": {"scale": 0.5},
    "linear_ts_shared": {"scale": 0.5, "arm_model": "shared"},
    "bernoulli_ts": {"prior_a": 1.0, "prior_b": 3.0},
}


def policy_named(key: str):
    return make_policy(key.removesuffix("_shared"), DIM, **SETTINGS[key])


def random_page(rng: np.random.Generator, titles: int = 12) -> PageContext:
    """Titles with 2..6 arms of distinct classes, padding at the end."""
    counts = rng.integers(2, WIDTH + 1, titles)
    mask = np.arange(WIDTH)[None, :] < counts[:, None]
    classes = np.argsort(rng.random((titles, CLASSES)), axis=1)[:, :WIDTH]
    features = rng.standard_normal((titles, WIDTH, DIM)) * mask[:, :, None]
    features[:, :, 0] = mask  # a bias column
    return PageContext(features, mask, np.where(mask, classes, -1))


def feedback(rng: np.random.Generator, n: int = 400) -> Feedback:
    x = rng.standard_normal((n, DIM))
    x[:, 0] = 1.0
    arm = rng.integers(0, CLASSES, n)
    reward = (rng.random(n) < 0.2 + 0.1 * (arm % 3)).astype(float)
    return Feedback(x, arm, reward)


def trained(key: str):
    policy = policy_named(key)
    policy.update(feedback(np.random.default_rng(1)))
    return policy


@pytest.mark.parametrize("key", SETTINGS)
def test_probabilities_sum_to_one_with_zero_on_padding(key):
    page = random_page(np.random.default_rng(0))
    p = trained(key).probabilities(page, 3)
    assert p.shape == page.mask.shape
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(p[~page.mask] == 0.0) and np.all(p >= 0.0)


@pytest.mark.parametrize("key", SETTINGS)
def test_propensity_is_the_chosen_arms_probability_and_choices_are_real_arms(key):
    page = random_page(np.random.default_rng(0))
    policy = trained(key)
    choices = policy.select_page(page, 11)
    arms = np.array([c.arm for c in choices])
    assert len(choices) == page.n_titles and page.mask[np.arange(page.n_titles), arms].all()
    # probabilities() consumes the generator first, as choose() does: same seed, same draws.
    p = policy.probabilities(page, np.random.default_rng(11))
    np.testing.assert_allclose([c.propensity for c in choices], p[np.arange(page.n_titles), arms])
    assert all(c.version == policy.version == 1 for c in choices)


@pytest.mark.parametrize("key", SETTINGS)
def test_same_seed_same_choices_and_propensities(key):
    page = random_page(np.random.default_rng(0))
    policy = trained(key)
    assert policy.select_page(page, 5) == policy.select_page(page, 5)
    assert policy.select_page(page, np.random.default_rng(5)) == policy.select_page(page, 5)


@pytest.mark.parametrize("key", ["uniform", "epsilon_greedy", "linear_ts", "bernoulli_ts"])
def test_different_seeds_explore_differently(key):
    page = random_page(np.random.default_rng(0), titles=40)
    policy = trained(key)
    assert policy.select_page(page, 1) != policy.select_page(page, 2)


def test_epsilon_greedy_frequencies_match_its_propensities():
    """One title repeated 20,000 times in a page: the chosen arms' frequencies against the
    propensities, by scipy's chi-square goodness of fit; the greedy arm's closed form."""
    policy = make_policy("epsilon_greedy", DIM, epsilon=0.3)
    policy.update(Feedback(np.ones((3, DIM)), np.array([2, 5, 7]), np.array([1.0, 0.0, 0.0])))
    n = 20_000
    classes = np.tile([5, 2, 7, 1], (n, 1))  # class 2 is the best (mean 1), at arm 1
    page = PageContext(np.ones((n, 4, DIM)), np.ones((n, 4), bool), classes)
    arms, propensities = policy.choose(page, 4)
    expected = {0: 0.3 / 4, 1: 0.7 + 0.3 / 4, 2: 0.3 / 4, 3: 0.3 / 4}
    for arm, p in expected.items():
        np.testing.assert_allclose(propensities[arms == arm], p)
    counts = np.bincount(arms, minlength=4)
    assert stats.chisquare(counts, n * np.array(list(expected.values()))).pvalue > 1e-3


def test_epsilon_greedy_splits_ties_evenly():
    """Before any reward every class ties: each arm has probability 1 / arms, whatever epsilon."""
    page = random_page(np.random.default_rng(0))
    p = make_policy("epsilon_greedy", DIM, epsilon=0.1).probabilities(page, 0)
    np.testing.assert_allclose(p, page.mask / page.mask.sum(axis=1, keepdims=True))


def test_linucb_picks_the_upper_confidence_bound_computed_from_its_state():
    page = random_page(np.random.default_rng(0))
    policy = trained("linucb")
    state = policy.to_state()
    choices = policy.select_page(page, 0)
    for t, choice in enumerate(choices):
        ucb = []
        for a in np.flatnonzero(page.mask[t]):
            k, x = page.arm_class[t, a], page.features[t, a]
            theta = np.linalg.solve(state["design"][k], state["response"][k])
            ucb.append((x @ theta + 0.5 * np.sqrt(x @ np.linalg.solve(state["design"][k], x)), a))
        assert choice.arm == max(ucb)[1] and choice.propensity == 1.0


def _two_arm_page(rng: np.random.Generator, titles: int, classes: tuple[int, int]) -> PageContext:
    x = rng.standard_normal((1, 2, DIM))
    x[:, :, 0] = 1.0
    return PageContext(np.repeat(x, titles, axis=0), np.ones((titles, 2), bool), np.tile(classes, (titles, 1)))


@pytest.mark.parametrize("arm_model", ["disjoint", "shared"])
def test_linear_ts_win_probability_matches_the_gaussian_closed_form(arm_model):
    """Two arms: P(arm 0) = Phi((m0 - m1) / sd(s0 - s1)) under the ridge posterior (scores
    independent for disjoint models, correlated under one shared model); the mean of the policy's
    Monte-Carlo propensities over many pages must match scipy's normal CDF."""
    policy = make_policy("linear_ts", DIM, scale=0.7, arm_model=arm_model)
    policy.update(feedback(np.random.default_rng(2), n=60))
    page = _two_arm_page(np.random.default_rng(3), titles=1, classes=(1, 4))
    state = policy.to_state()
    k0, k1 = (1, 4) if arm_model == "disjoint" else (0, 0)
    x0, x1 = page.features[0]
    inv0, inv1 = np.linalg.inv(state["design"][k0]), np.linalg.inv(state["design"][k1])
    m0, m1 = x0 @ inv0 @ state["response"][k0], x1 @ inv1 @ state["response"][k1]
    covariance = 0.0 if k0 != k1 else x0 @ inv0 @ x1
    sd = 0.7 * np.sqrt(x0 @ inv0 @ x0 + x1 @ inv1 @ x1 - 2 * covariance)
    exact = stats.norm.cdf((m0 - m1) / sd)
    estimates = [policy.probabilities(page, seed)[0, 0] for seed in range(400)]
    # 400 pages x 128 draws: standard error ~0.0016; ignoring the shared model's correlation
    # would be off by ~0.015 here.
    assert abs(np.mean(estimates) - exact) < 0.006


def test_bernoulli_ts_win_probability_matches_the_beta_integral():
    policy = make_policy("bernoulli_ts", DIM, prior_a=1.0, prior_b=1.0)
    policy.update(Feedback(np.zeros((30, DIM)), np.r_[np.full(10, 3), np.full(20, 6)],
                           np.r_[np.ones(4), np.zeros(6), np.ones(6), np.zeros(14)]))
    a, b = stats.beta(1 + 4, 1 + 6), stats.beta(1 + 6, 1 + 14)
    exact = integrate.quad(lambda t: a.pdf(t) * b.cdf(t), 0, 1)[0]  # P(rate_3 > rate_6)
    page = _two_arm_page(np.random.default_rng(0), titles=1, classes=(3, 6))
    estimates = [policy.probabilities(page, seed)[0, 0] for seed in range(400)]
    assert abs(np.mean(estimates) - exact) < 0.006


def test_thompson_sampling_on_two_arms_of_one_model_splits_identical_arms():
    """Two arms of one title under the same model with the same context: a singular score
    covariance (no crash in the Cholesky path), and the tie is a fair coin across draws."""
    policy = make_policy("linear_ts", DIM, arm_model="disjoint")
    policy.update(feedback(np.random.default_rng(0)))
    x = np.ones((1, 2, DIM))
    p = policy.probabilities(PageContext(x, np.ones((1, 2), bool), np.array([[3, 3]])), 0)
    np.testing.assert_allclose(p.sum(), 1.0)
    assert 0.3 < p[0, 0] < 0.7  # 128 draws of a fair coin: 0.5 +- 0.044


@pytest.mark.parametrize("key", SETTINGS)
def test_state_round_trips_through_json_values_and_arrays(key):
    policy = trained(key)
    policy.update(feedback(np.random.default_rng(2), n=50))
    state = policy.to_state()
    plain = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    assert json.loads(json.dumps(plain)) == plain
    assert all(isinstance(v, np.ndarray) for k, v in state.items() if k not in plain)
    restored = policy_from_state(state)
    assert type(restored) is type(policy) and restored.version == policy.version == 2
    page = random_page(np.random.default_rng(4))
    assert restored.select_page(page, 9) == policy.select_page(page, 9)
    state_again = restored.to_state()
    for k, v in state.items():
        np.testing.assert_array_equal(state_again[k], v)


def test_every_update_bumps_the_version():
    policy = make_policy("linucb", DIM)
    for version in (1, 2, 3):
        policy.update(feedback(np.random.default_rng(version), n=5))
        assert policy.version == version
    policy.update(Feedback(np.zeros((0, DIM)), np.zeros(0, int), np.zeros(0)))
    assert policy.version == 4


def test_learning_moves_the_linear_model_toward_the_better_class():
    """Class 1 always plays, class 2 never: after learning, LinUCB picks class 1."""
    policy = make_policy("linucb", DIM, alpha=0.1)
    x = np.zeros((200, DIM))
    x[:, 0] = 1.0
    policy.update(Feedback(x, np.r_[np.ones(100, int), np.full(100, 2)], np.r_[np.ones(100), np.zeros(100)]))
    page = PageContext(np.ones((1, 2, DIM)) * x[:1, None, :], np.ones((1, 2), bool), np.array([[2, 1]]))
    assert policy.select_page(page, 0)[0].arm == 1


@pytest.mark.parametrize(("name", "params", "field"), [
    ("epsilon_greedy", {"epsilon": 1.5}, "epsilon"),
    ("epsilon_greedy", {"epsilon": -0.1}, "epsilon"),
    ("linucb", {"alpha": 0.0}, "alpha"),
    ("linucb", {"ridge": -1.0}, "ridge"),
    ("linucb", {"arm_model": "per_artwork"}, "arm_model"),
    ("linear_ts", {"scale": 0}, "scale"),
    ("linear_ts", {"draws": 0}, "draws"),
    ("linear_ts", {"ridge": float("nan")}, "ridge"),
    ("bernoulli_ts", {"prior_a": 0.0}, "prior_a"),
    ("bernoulli_ts", {"prior_b": -2.0}, "prior_b"),
    ("uniform", {"n_classes": 0}, "n_classes"),
    ("linucb", {"temperature": 1.0}, "temperature"),
])
def test_bad_parameters_raise_naming_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        make_policy(name, DIM, **params)


def test_unknown_policy_and_bad_dim_are_refused():
    with pytest.raises(ValueError, match="^name"):
        make_policy("softmax", DIM)
    with pytest.raises(ValueError, match="^dim"):
        make_policy("linucb", 0)


@pytest.mark.parametrize("name", POLICIES)
def test_dimension_mismatch_is_refused_on_select_and_update(name):
    policy = make_policy(name, DIM)
    page = random_page(np.random.default_rng(0))
    wrong = PageContext(page.features[:, :, :-1], page.mask, page.arm_class)
    with pytest.raises(ValueError, match="^features"):
        policy.select_page(wrong, 0)
    with pytest.raises(ValueError, match="^x"):
        policy.update(Feedback(np.zeros((2, DIM + 1)), np.zeros(2, int), np.zeros(2)))
    with pytest.raises(ValueError, match="^arm"):
        policy.update(Feedback(np.zeros((1, DIM)), np.array([CLASSES]), np.zeros(1)))


def test_malformed_pages_feedback_and_states_are_refused():
    with pytest.raises(ValueError, match="^mask"):
        PageContext(np.zeros((2, 3, DIM)), np.zeros((2, 3), bool), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="^arm_class"):
        PageContext(np.zeros((2, 3, DIM)), np.ones((2, 3), bool), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="^x, reward"):
        Feedback(np.zeros((1, DIM)), np.zeros(1, int), np.array([np.nan]))
    with pytest.raises(ValueError, match="^reward"):
        make_policy("bernoulli_ts", DIM).update(Feedback(np.zeros((1, DIM)), np.zeros(1, int), np.array([2.0])))
    state = trained("linucb").to_state()
    with pytest.raises(ValueError, match="^design"):
        policy_from_state(state | {"design": state["design"][:, :-1]})
    with pytest.raises(ValueError, match="^policy"):
        POLICIES["linear_ts"].from_state(state)
    with pytest.raises(ValueError, match="^rng_or_seed"):
        make_policy("uniform", DIM).select_page(random_page(np.random.default_rng(0)), -1)
