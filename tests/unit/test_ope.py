"""Off-policy estimators: textbook values on a hand-computed fixture, the bootstrap against
scipy.stats.bootstrap, coverage on a simulated bandit whose true value is known, the reward model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy import sparse, stats
from scipy.special import expit

from bandits.ope import (
    BEST_RULES,
    CONSISTENT_ESTIMATORS,
    ESTIMATORS,
    Estimate,
    L2Logistic,
    LoggedBandit,
    best_estimator,
    bootstrap_refit,
    bootstrap_replicates,
    cross_fitted,
    estimate_all,
    estimated_mse,
    estimator_terms,
    fold_ids,
    percentile_interval,
)


def hand_fixture() -> LoggedBandit:
    """Four rounds, two actions; every number below is worked out by hand in test_textbook_values."""
    return LoggedBandit(
        reward=np.array([1.0, 0.0, 1.0, 0.0]),
        action=np.array([0, 1, 1, 0]),
        behavior_prob=np.array([0.5, 0.5, 0.25, 0.8]),
        target_prob=np.array([0.8, 0.2, 0.6, 0.4]),
        target_dist=np.array([[0.8, 0.2], [0.8, 0.2], [0.4, 0.6], [0.4, 0.6]]),
        reward_hat=np.array([[0.5, 0.3], [0.5, 0.3], [0.2, 0.6], [0.2, 0.6]]),
    )


def test_textbook_values():
    # w = pi_e / pi_b = [1.6, 0.4, 2.4, 0.5]; w r = [1.6, 0, 2.4, 0] (sum 4.0, sum w 4.9)
    # dm_i = sum_a pi_e q = [0.46, 0.46, 0.44, 0.44] (mean 0.45)
    # r - q(a_i) = [0.5, -0.3, 0.4, -0.2]; w (r - q) = [0.8, -0.12, 0.96, -0.1] (sum 1.54)
    expected = {"ips": 4.0 / 4, "snips": 4.0 / 4.9, "dm": 0.45, "dr": 0.45 + 1.54 / 4,
                "sndr": 0.45 + 1.54 / 4.9}
    data = hand_fixture()
    for name, value in expected.items():
        assert estimator_terms(name, data).value() == pytest.approx(value, rel=1e-12), name
    estimates = estimate_all(data, n_resamples=200, seed=1)
    assert set(estimates) == set(ESTIMATORS)
    for name, value in expected.items():
        assert estimates[name].estimate == pytest.approx(value, rel=1e-12)


def test_without_a_reward_model_only_weighting_estimators_run():
    data = hand_fixture()
    bare = LoggedBandit(data.reward, data.action, data.behavior_prob, data.target_prob)
    assert set(estimate_all(bare, n_resamples=50, seed=0)) == {"ips", "snips"}
    with pytest.raises(ValueError, match="dr needs target_dist"):
        estimator_terms("dr", bare)
    with pytest.raises(ValueError, match="estimator"):
        estimator_terms("magic", bare)


@pytest.mark.parametrize("field,change,message", [
    ("behavior_prob", np.array([0.5, 0.0, 0.25, 0.8]), "behavior_prob"),
    ("reward", np.array([1.0, 0.0, 1.0]), "length"),
    ("target_prob", np.array([0.8, 0.2, 0.6, 0.5]), "target_prob: must equal"),
    ("target_dist", np.array([[0.8, 0.3], [0.8, 0.2], [0.4, 0.6], [0.4, 0.6]]), "sum to 1"),
    ("action", np.array([0, 1, 2, 0]), "action"),
    ("reward_hat", None, "give both"),
])
def test_invalid_inputs_name_the_field(field, change, message):
    values = {k: getattr(hand_fixture(), k) for k in
              ("reward", "action", "behavior_prob", "target_prob", "target_dist", "reward_hat")}
    values[field] = change
    with pytest.raises(ValueError, match=message):
        LoggedBandit(**values)


def test_bootstrap_matches_scipy_percentile_for_a_mean_and_a_ratio():
    """Skewed on purpose (rare rewards, heavy-tailed weights): there the percentile interval is
    ~14% of its width away from the 'basic' one, so a 4% tolerance tells the methods apart."""
    rng = np.random.default_rng(3)
    n = 150
    behavior = np.full(n, 0.05)
    weight = np.minimum(rng.lognormal(0.0, 1.0, n), 1 / 0.05)
    reward = (rng.random(n) < 0.1).astype(float)
    data = LoggedBandit(reward, np.zeros(n, dtype=int), behavior, weight * behavior)
    w = data.weight
    ours = estimate_all(data, ("ips", "snips"), n_resamples=20_000, seed=11)
    scipy_ips = stats.bootstrap((w * reward,), np.mean, method="percentile", n_resamples=20_000,
                                random_state=np.random.default_rng(12)).confidence_interval
    scipy_snips = stats.bootstrap(
        (w * reward, w), lambda num, den, axis: num.sum(axis=axis) / den.sum(axis=axis), paired=True,
        vectorized=True, method="percentile", n_resamples=20_000,
        random_state=np.random.default_rng(13)).confidence_interval
    for mine, theirs in ((ours["ips"], scipy_ips), (ours["snips"], scipy_snips)):
        width = theirs.high - theirs.low
        assert abs(mine.ci_low - theirs.low) < 0.04 * width
        assert abs(mine.ci_high - theirs.high) < 0.04 * width


def test_bootstrap_is_seeded_and_shared_across_estimators():
    data = hand_fixture()
    terms = [estimator_terms(name, data) for name in ("ips", "dr")]
    a = bootstrap_replicates(terms, n_resamples=500, seed=5)
    assert np.array_equal(a, bootstrap_replicates(terms, n_resamples=500, seed=5))
    assert not np.array_equal(a, bootstrap_replicates(terms, n_resamples=500, seed=6))
    # Chunking must not change the draws' meaning: one resample = the estimator on resampled rows.
    single = bootstrap_replicates([estimator_terms("snips", data)], n_resamples=1, seed=9)[0, 0]
    idx = np.random.default_rng(9).integers(0, data.n, size=(1, data.n))[0]
    w, r = data.weight[idx], data.reward[idx]
    assert single == pytest.approx((w * r).sum() / w.sum())
    low, high = percentile_interval(np.arange(101.0))
    assert (low, high) == (pytest.approx(2.5), pytest.approx(97.5))
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_replicates(terms, n_resamples=0, seed=1)


def test_consistent_estimators_cover_the_true_value_of_a_simulated_bandit():
    """Three actions, a context that shifts click rates, a uniform logger, a known target policy:
    the true value is computed exactly; the DR/IPS intervals must cover it and DM with the right
    model must be close."""
    rng = np.random.default_rng(21)
    n, n_actions = 20_000, 3
    context = rng.integers(0, 2, n)
    rates = np.array([[0.1, 0.3, 0.5], [0.4, 0.2, 0.1]])  # [context, action]
    target = np.array([[0.1, 0.2, 0.7], [0.7, 0.2, 0.1]])
    truth = float(np.mean([target[c] @ rates[c] for c in (0, 1)]))  # contexts equally likely
    action = rng.integers(0, n_actions, n)
    reward = (rng.random(n) < rates[context, action]).astype(float)
    data = LoggedBandit(reward, action, np.full(n, 1 / n_actions), target[context, action],
                        target_dist=target[context], reward_hat=rates[context])
    estimates = estimate_all(data, n_resamples=1000, seed=2)
    for name in CONSISTENT_ESTIMATORS:
        assert estimates[name].ci_low <= truth <= estimates[name].ci_high, name
    assert estimates["dm"].estimate == pytest.approx(truth, abs=0.01)
    assert estimates["dr"].width < estimates["ips"].width  # the right model is a control variate


def test_fold_ids_are_balanced_and_cross_fitting_never_predicts_a_row_from_itself():
    folds = fold_ids(10, 3, np.random.default_rng(0))
    assert sorted(np.bincount(folds)) == [3, 3, 4]
    seen = {}

    def fit(train):
        return set(train.tolist())

    def predict(model, rows):
        seen.update({int(r): model for r in rows})
        return np.array([float(r in model) for r in rows])

    assert not cross_fitted(folds, fit, predict).any()
    assert all(len(train) == 10 - np.sum(folds == folds[row]) for row, train in seen.items())
    with pytest.raises(ValueError, match="n_folds"):
        fold_ids(10, 1, np.random.default_rng(0))


def test_l2_logistic_solves_its_optimality_conditions_dense_and_sparse():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(400, 5))
    y = (rng.random(400) < expit(X @ np.array([1.0, -0.5, 0.0, 0.3, 2.0]) - 1)).astype(float)
    for design in (X, sparse.csr_matrix(X)):
        model = L2Logistic(penalty=2.0).fit(design, y)
        residual = model.predict_proba(design) - y
        assert abs(residual.sum()) < 1e-6                       # intercept: unpenalised
        assert np.allclose(X.T @ residual + 2.0 * model.coef_, 0, atol=1e-6)
    assert np.abs(L2Logistic(penalty=1e6).fit(X, y).coef_).max() < 1e-2  # heavy penalty -> constant
    with pytest.raises(ValueError, match="penalty"):
        L2Logistic(penalty=0.0)


def test_weighted_fit_equals_the_fit_on_repeated_rows_and_a_warm_start_lands_on_the_same_optimum():
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 4))
    y = (rng.random(300) < expit(X @ np.array([0.5, -1.0, 0.2, 0.0]))).astype(float)
    counts = rng.integers(0, 3, 300).astype(float)
    repeated = np.repeat(np.arange(300), counts.astype(int))
    weighted = L2Logistic(penalty=3.0).fit(X, y, sample_weight=counts)
    plain = L2Logistic(penalty=3.0).fit(X[repeated], y[repeated])
    assert np.allclose(weighted.coef_, plain.coef_, atol=1e-8) and weighted.intercept_ == pytest.approx(plain.intercept_)
    warm = L2Logistic(penalty=3.0).fit(X, y, sample_weight=counts, init=L2Logistic(penalty=3.0).fit(X, y))
    assert np.allclose(warm.coef_, weighted.coef_, atol=1e-7)
    with pytest.raises(ValueError, match="sample_weight"):
        L2Logistic(penalty=1.0).fit(X, y, sample_weight=-counts)
    with pytest.raises(ValueError, match="init"):
        L2Logistic(penalty=1.0).fit(X[:, :2], y, init=plain)


def _dm_world(seed: int, n: int = 3000):
    """A uniform logger over 2 actions, a target that plays action 1, a constant-plus-action model."""
    rng = np.random.default_rng(seed)
    action = rng.integers(0, 2, n)
    reward = (rng.random(n) < np.where(action == 1, 0.3, 0.1)).astype(float)
    design = np.eye(2)[action]
    target = np.tile([0.0, 1.0], (n, 1))
    model = L2Logistic(penalty=1e-3).fit(design, reward)
    predict = lambda m: np.tile(m.predict_proba(np.eye(2)), (n, 1))  # noqa: E731  (every row: the same 2 contexts)
    data = LoggedBandit(reward, action, np.full(n, 0.5), target[np.arange(n), action], target_dist=target,
                        reward_hat=predict(model))
    return data, bootstrap_refit(design, reward, 1e-3, predict)


def test_refitting_the_reward_model_gives_dm_an_interval_that_carries_the_models_noise():
    """Held fixed, the model leaves DM a zero-width interval; refitted per resample, DM's interval
    is that of the mean reward under action 1 (its binomial standard error) and covers 0.3 at
    about the nominal rate."""
    data, refit = _dm_world(1)
    fixed = estimate_all(data, ("ips", "dm"), n_resamples=300, seed=2)
    refitted = estimate_all(data, ("ips", "dm"), n_resamples=300, seed=2,
                            resample=lambda counts: replace(data, reward_hat=refit(counts)))
    assert fixed["dm"].width == pytest.approx(0.0, abs=1e-9)
    assert refitted["ips"].ci_low == fixed["ips"].ci_low  # the same resamples for the fixed terms
    p1, n1 = 0.3, np.sum(data.action == 1)
    assert refitted["dm"].width == pytest.approx(2 * 1.96 * np.sqrt(p1 * (1 - p1) / n1), rel=0.25)
    covered = 0
    for seed in range(40):
        world, world_refit = _dm_world(100 + seed, n=1500)
        e = estimate_all(world, ("dm",), n_resamples=150, seed=seed,
                         resample=lambda counts, w=world, r=world_refit: replace(w, reward_hat=r(counts)))["dm"]
        covered += e.ci_low <= 0.3 <= e.ci_high
    assert 33 <= covered <= 40  # nominal 38 of 40


def _estimate(name, value, low, high, replicates):
    return Estimate(name, value, low, high, np.asarray(replicates, float))


def test_best_rules_on_hand_made_intervals():
    r = np.array([0.0, 1.0, 2.0, 3.0])
    estimates = {
        "ips": _estimate("ips", 1.0, 0.0, 2.0, 1.0 + r),
        "dr": _estimate("dr", 1.1, 0.2, 1.9, 1.1 + 0.8 * r),
        "dm": _estimate("dm", 1.8, 1.7, 1.9, 1.8 + 0.1 * r),
    }
    assert best_estimator(estimates, "narrowest_consistent") == "dr"
    assert best_estimator(estimates, "intersection") == "dm"  # [1.7, 1.9] meets [0.2, 1.9] and [0, 2]
    # mse: dr's variance var(0.8 r) = 1.067; dm's 0.0167 + (0.7^2 - var(-0.7 r) = 0.49 - 0.817 -> 0) -> dm
    assert estimated_mse(estimates["dr"], estimates["dr"], True) == pytest.approx(np.var(0.8 * r, ddof=1))
    assert estimated_mse(estimates["dm"], estimates["dr"], False) == pytest.approx(np.var(0.1 * r, ddof=1))
    assert best_estimator(estimates, "mse") == "dm"
    far = dict(estimates, dm=_estimate("dm", 5.0, 4.9, 5.1, 5.0 + 0.1 * r))
    assert best_estimator(far, "intersection") == "dr" and best_estimator(far, "mse") == "dr"
    with pytest.raises(ValueError, match="best rule"):
        best_estimator(estimates, "closest")
    with pytest.raises(ValueError, match="replicates"):
        estimated_mse(Estimate("dm", 1.0, 0.0, 2.0), estimates["dr"], False)
    assert set(BEST_RULES) == {"narrowest_consistent", "mse", "intersection"}


def test_a_centred_refit_reproduces_the_reported_predictions_on_the_full_sample():
    """With `centre` (the cross-fitted predictions the point estimate used), a resample that is the
    whole sample gives back exactly those predictions, so the replicates sit around the reported
    estimate, not around the in-sample fit; without it, the in-sample fit's."""
    rng = np.random.default_rng(4)
    n = 2000
    x = rng.standard_normal((n, 3))
    y = (rng.random(n) < 1 / (1 + np.exp(-(-3 + x[:, 0])))).astype(float)
    predict = lambda m: m.predict_proba(x)[:, None]  # noqa: E731
    folds = np.arange(n) % 5
    centre = cross_fitted(folds, lambda rows: L2Logistic(1.0).fit(x[rows], y[rows]),
                          lambda m, rows: m.predict_proba(x[rows])[:, None])
    in_sample = predict(L2Logistic(1.0).fit(x, y))
    assert not np.allclose(centre, in_sample, atol=1e-4)
    assert np.allclose(bootstrap_refit(x, y, 1.0, predict, centre=centre)(np.ones(n)), centre, atol=1e-8)
    assert np.allclose(bootstrap_refit(x, y, 1.0, predict)(np.ones(n)), in_sample, atol=1e-8)
