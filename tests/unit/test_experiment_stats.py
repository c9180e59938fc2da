"""The experiment statistics against scipy, statsmodels, textbook values and seeded simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments.sequential import (
    AA_TARGET,
    Calibration,
    calibrate_aa,
    group_sequential,
    look_moments,
    msprt,
    msprt_from_moments,
)
from experiments.stats import (
    SRM_ALPHA,
    Breach,
    GuardrailLimits,
    check_guardrails,
    compare_means,
    compare_ratios,
    cuped,
    cuped_adjusted,
    power_two_means,
    ratio_moments,
    sample_ratio_mismatch,
    sample_size_two_means,
    welch_from_moments,
)

statsmodels = pytest.importorskip("statsmodels", reason="statsmodels is in the test extra")
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.power import TTestIndPower
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

DAYS = 14
PER_DAY = 200


def normal_simulator(effect: float = 0.0, days: int = DAYS, per_day: int = PER_DAY):
    """Members enrol per day; each look holds every member so far (a per-member metric, sd 1)."""
    def simulate(seed: int):
        rng = np.random.default_rng(seed)
        control = rng.normal(0.0, 1.0, (days, per_day))
        treatment = rng.normal(effect, 1.0, (days, per_day))
        return ([control[: d + 1].ravel() for d in range(days)],
                [treatment[: d + 1].ravel() for d in range(days)])
    return simulate


def cumulative_moments(values: np.ndarray):
    """Per-look mean, variance (ddof 1) and size of (replications, days, per_day) values."""
    per_day = values.shape[-1]
    n = per_day * np.arange(1, values.shape[1] + 1)
    total = np.cumsum(values.sum(axis=-1), axis=1)
    squares = np.cumsum((values ** 2).sum(axis=-1), axis=1)
    mean = total / n
    return mean, (squares - n * mean ** 2) / (n - 1), np.broadcast_to(n, mean.shape)


# --- sample ratio mismatch -----------------------------------------------------------------------


def test_srm_matches_scipy_chisquare_with_unequal_weights():
    counts = {"control": 5030, "a": 2440, "b": 2610}
    weights = {"control": 2, "a": 1, "b": 1}
    result = sample_ratio_mismatch(counts, weights)
    total = sum(counts.values())
    expected = [total / 2, total / 4, total / 4]
    reference = scipy_stats.chisquare(list(counts.values()), f_exp=expected)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-12)
    assert result.expected == pytest.approx(tuple(expected))
    assert result.threshold == SRM_ALPHA
    assert reference.pvalue > SRM_ALPHA and result.mismatch is False


def test_srm_flags_a_small_imbalance_on_many_members_but_not_noise():
    # 50.5 / 49.5 over a million members is a broken assignment, not chance.
    broken = sample_ratio_mismatch({"A": 505_000, "B": 495_000}, {"A": 1, "B": 1})
    assert broken.mismatch and broken.p_value < 1e-20
    fine = sample_ratio_mismatch({"A": 50_040, "B": 49_960}, {"A": 1, "B": 1})
    assert not fine.mismatch and fine.p_value > 0.5


@pytest.mark.parametrize("counts, weights, field", [
    ({"A": 10}, {"A": 1}, "counts"),
    ({"A": 10, "B": 12}, {"A": 1, "C": 1}, "weights"),
    ({"A": 10, "B": -1}, {"A": 1, "B": 1}, "counts"),
    ({"A": 10.5, "B": 12}, {"A": 1, "B": 1}, "counts"),
    ({"A": 0, "B": 0}, {"A": 1, "B": 1}, "counts"),
    ({"A": 10, "B": 12}, {"A": 1, "B": 0}, "weights.B"),
])
def test_srm_refuses_bad_input_by_name(counts, weights, field):
    with pytest.raises(ValueError, match=rf"^{field}"):
        sample_ratio_mismatch(counts, weights)


# --- means ---------------------------------------------------------------------------------------


def test_welch_matches_scipy_and_statsmodels():
    rng = np.random.default_rng(7)
    control = rng.gamma(2.0, 3.0, 700)  # skewed, like minutes watched
    treatment = rng.gamma(2.2, 3.4, 450)
    result = compare_means(control, treatment)
    reference = scipy_stats.ttest_ind(treatment, control, equal_var=False)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-10)
    assert result.df == pytest.approx(reference.df, rel=1e-10)
    low, high = reference.confidence_interval(0.95)
    assert (result.difference_low, result.difference_high) == pytest.approx((low, high), rel=1e-10)

    compare = CompareMeans(DescrStatsW(treatment), DescrStatsW(control))
    t_stat, p_value, df = compare.ttest_ind(usevar="unequal")
    assert (result.statistic, result.p_value, result.df) == pytest.approx((t_stat, p_value, df), rel=1e-10)
    sm_low, sm_high = compare.tconfint_diff(alpha=0.1, usevar="unequal")
    at_90 = compare_means(control, treatment, alpha=0.1)
    assert (at_90.difference_low, at_90.difference_high) == pytest.approx((sm_low, sm_high), rel=1e-10)
    assert result.relative_lift == pytest.approx(treatment.mean() / control.mean() - 1)
    assert isinstance(result.p_value, float) and result.n_control == 700


def test_relative_lift_interval_covers_the_truth_95_percent_of_the_time():
    # Delta-method interval for mb / ma - 1: coverage over 2000 seeded experiments, in one call.
    rng = np.random.default_rng(11)
    n, reps, mu_a, mu_b = 400, 2000, 10.0, 10.5
    a = rng.normal(mu_a, 4.0, (reps, n))
    b = rng.normal(mu_b, 5.0, (reps, n))
    batch = welch_from_moments(a.mean(1), a.var(1, ddof=1), n, b.mean(1), b.var(1, ddof=1), n)
    truth = mu_b / mu_a - 1
    covered = np.mean((batch.relative_low <= truth) & (truth <= batch.relative_high))
    assert 0.935 <= covered <= 0.965
    assert np.std(batch.relative_lift) == pytest.approx(np.median(batch.relative_se), rel=0.06)
    assert batch.significant.shape == (reps,)


def test_relative_lift_is_nan_when_control_mean_is_zero():
    result = compare_means([0.0, 0.0, 0.0], [1.0, 0.0, 2.0])
    assert math.isnan(result.relative_lift) and result.difference == pytest.approx(1.0)


@pytest.mark.parametrize("control, treatment, field", [
    ([1.0], [1.0, 2.0], "control"),
    ([1.0, 2.0], [[1.0, 2.0]], "treatment"),
    ([1.0, float("nan")], [1.0, 2.0], "control"),
    ([1.0, 2.0], ["a", "b"], "treatment"),
])
def test_compare_means_refuses_bad_arrays_by_name(control, treatment, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        compare_means(control, treatment)


def test_welch_from_moments_validates_and_alpha_is_checked():
    with pytest.raises(ValueError, match="^n_treatment"):
        welch_from_moments(1.0, 1.0, 10, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="^var_control"):
        welch_from_moments(1.0, -1.0, 10, 1.0, 1.0, 10)
    with pytest.raises(ValueError, match="^alpha"):
        compare_means([1.0, 2.0], [1.0, 3.0], alpha=1.5)


# --- ratio metrics -------------------------------------------------------------------------------


def test_ratio_variance_on_a_hand_worked_fixture():
    # completions x over plays y for 4 members: R = 4 / 8 = 0.5; Cochran's (1977, 6.3) linearised
    # variance S^2(x - R y) / (n mean(y)^2): d = [0, -.5, .5, 0], S^2 = 1/6, so 1/6 / (4 * 4) = 1/96.
    x, y = np.array([1.0, 0.0, 2.0, 1.0]), np.array([2.0, 1.0, 3.0, 2.0])
    ratio, variance = ratio_moments(x, y)
    assert ratio == 0.5 and variance == pytest.approx(1 / 96, rel=1e-12)
    result = compare_ratios(x, y, np.ones(4), np.ones(4))  # treatment: every play completed
    assert result.difference == pytest.approx(0.5)
    assert result.difference_se == pytest.approx(math.sqrt(1 / 96))
    assert result.relative_lift == pytest.approx(1.0)
    # Var(rb / ra) = Var(rb) / ra^2 + rb^2 Var(ra) / ra^4 = 0 + (1/96) / 0.0625 = 1/6.
    assert result.relative_se == pytest.approx(math.sqrt(1 / 6))
    assert math.isinf(result.df)


def test_ratio_with_unit_denominators_is_the_mean_and_constant_ratio_has_no_variance():
    rng = np.random.default_rng(3)
    a, b = rng.poisson(3.0, 500).astype(float), rng.poisson(3.3, 600).astype(float)
    as_ratio = compare_ratios(a, np.ones_like(a), b, np.ones_like(b))
    as_means = compare_means(a, b)
    assert as_ratio.difference_se == pytest.approx(as_means.difference_se, rel=1e-12)
    assert as_ratio.relative_se == pytest.approx(as_means.relative_se, rel=1e-12)
    plays = rng.poisson(4.0, 300).astype(float) + 1
    assert ratio_moments(0.25 * plays, plays)[1] == pytest.approx(0.0, abs=1e-15)


def test_ratio_delta_method_agrees_with_a_seeded_bootstrap():
    rng = np.random.default_rng(2018)

    def arm(n, rate):
        plays = rng.negative_binomial(2, 0.3, n).astype(float)  # heavy members play a lot
        completion = rng.beta(rate * 8, (1 - rate) * 8, n)       # and differ in taste
        return rng.binomial(plays.astype(int), completion).astype(float), plays

    (xa, ya), (xb, yb) = arm(3000, 0.55), arm(3000, 0.58)
    result = compare_ratios(xa, ya, xb, yb)
    boot = 1000
    ia, ib = rng.integers(0, 3000, (boot, 3000)), rng.integers(0, 3000, (boot, 3000))
    ra = xa[ia].sum(1) / ya[ia].sum(1)
    rb = xb[ib].sum(1) / yb[ib].sum(1)
    assert np.std(rb - ra, ddof=1) == pytest.approx(result.difference_se, rel=0.08)
    assert np.std(rb / ra - 1, ddof=1) == pytest.approx(result.relative_se, rel=0.08)
    # Treating plays as independent draws understates the variance: the member is the unit.
    naive = math.sqrt(sum(r * (1 - r) / y.sum() for r, y in ((xa.sum() / ya.sum(), ya),
                                                             (xb.sum() / yb.sum(), yb))))
    assert naive < 0.8 * result.difference_se


def test_compare_ratios_refuses_bad_denominators_by_name():
    with pytest.raises(ValueError, match="^treatment_denominator"):
        compare_ratios([1, 2], [1, 2], [1, 2], [0, 0])
    with pytest.raises(ValueError, match="^control_denominator"):
        compare_ratios([1, 2], [1, 2, 3], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="^control_denominator"):
        compare_ratios([1, 2], [-1, 2], [1, 2], [1, 2])


# --- CUPED ---------------------------------------------------------------------------------------


def _cuped_arms(rng, n, effect, slope=2.0):
    x_a, x_b = rng.normal(5.0, 1.0, n), rng.normal(5.0, 1.0, n)
    y_a = 3.0 + slope * x_a + rng.normal(0.0, 1.0, n)
    y_b = 3.0 + slope * x_b + rng.normal(0.0, 1.0, n) + effect
    return y_a, x_a, y_b, x_b


def test_cuped_equals_the_ancova_regression_estimate():
    rng = np.random.default_rng(5)
    y_a, x_a, y_b, x_b = _cuped_arms(rng, 300, 0.4)
    result = cuped(y_a, x_a, y_b, x_b)
    design = np.column_stack([np.ones(600), np.r_[np.zeros(300), np.ones(300)], np.r_[x_a, x_b]])
    fit = OLS(np.r_[y_a, y_b], design).fit()
    assert result.adjusted.difference == pytest.approx(fit.params[1], rel=1e-10)
    assert result.theta == pytest.approx(fit.params[2], rel=1e-10)
    assert result.unadjusted.difference == pytest.approx(y_b.mean() - y_a.mean())


def test_cuped_is_unbiased_and_reduces_variance_by_corr_squared():
    # Y = 3 + 2 X + e, Var(X) = Var(e) = 1: corr^2 = 4 / 5.
    effect, estimates, raw, reductions = 0.5, [], [], []
    for seed in range(400):
        result = cuped(*_cuped_arms(np.random.default_rng(seed), 200, effect))
        estimates.append(result.adjusted.difference)
        raw.append(result.unadjusted.difference)
        reductions.append(result.variance_reduction)
    estimates, raw = np.array(estimates), np.array(raw)
    # Standard error of the mean of the estimates: sqrt(2 / 200 / 400) = 0.005.
    assert np.mean(estimates) == pytest.approx(effect, abs=0.02)
    assert np.mean(reductions) == pytest.approx(0.8, abs=0.02)
    assert 1 - np.var(estimates) / np.var(raw) == pytest.approx(0.8, abs=0.05)


def test_cuped_with_an_unrelated_covariate_saves_nothing():
    rng = np.random.default_rng(9)
    y_a, y_b = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)
    result = cuped(y_a, rng.normal(0, 1, 2000), y_b, rng.normal(0, 1, 2000))
    assert abs(result.variance_reduction) < 0.01 and abs(result.correlation) < 0.05


def test_cuped_refuses_bad_covariates_by_name():
    with pytest.raises(ValueError, match="^treatment_pre"):
        cuped([1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="^control_pre"):
        cuped([1, 2, 3], [1, 1, 1], [1, 2, 3], [1, 1, 1])


def test_cuped_adjusted_takes_theta_from_the_ancova_regression_for_three_arms():
    rng = np.random.default_rng(7)
    arm = rng.integers(0, 3, 600)
    x = rng.poisson(5, 600).astype(float)
    y = 2 + 0.5 * arm + 0.8 * x + rng.normal(0, 1, 600)
    dummies = np.column_stack([arm == 1, arm == 2]).astype(float)
    theta = OLS(y, np.column_stack([np.ones(600), dummies, x])).fit().params[-1]
    np.testing.assert_allclose(cuped_adjusted(y, x, arm), y - theta * (x - x.mean()))
    # two arms: the same adjusted difference as `cuped`
    two = arm < 2
    adjusted = cuped_adjusted(y[two], x[two], arm[two])
    ref = cuped(y[two & (arm == 0)], x[two & (arm == 0)], y[two & (arm == 1)], x[two & (arm == 1)])
    assert adjusted[arm[two] == 1].mean() - adjusted[arm[two] == 0].mean() == pytest.approx(ref.adjusted.difference)


def test_cuped_adjusted_leaves_values_alone_without_a_covariate_and_checks_shapes():
    y = np.array([1.0, 4.0, 2.0, 7.0])
    np.testing.assert_array_equal(cuped_adjusted(y, np.full(4, 3.0), np.array([0, 0, 1, 1])), y)
    with pytest.raises(ValueError, match="^covariate:"):
        cuped_adjusted(y, np.zeros(3), np.array([0, 0, 1, 1]))


# --- mSPRT ---------------------------------------------------------------------------------------


def test_msprt_matches_johari_balanced_formula_and_its_interval_inverts_the_test():
    # Johari et al. 2017: Lambda = sqrt(2s2 / (2s2 + n t2)) exp(n^2 t2 d^2 / (4 s2 (2s2 + n t2))).
    n, s2, tau, d = 500.0, 4.0, 0.3, 0.35
    path = msprt_from_moments(1.0, s2, n, 1.0 + d, s2, n, mixing_sd=tau)
    t2 = tau ** 2
    expected = math.sqrt(2 * s2 / (2 * s2 + n * t2)) * math.exp(
        n ** 2 * t2 * d ** 2 / (4 * s2 * (2 * s2 + n * t2)))
    assert path.likelihood_ratio[0] == pytest.approx(expected, rel=1e-12)
    assert path.p_value[0] == pytest.approx(min(1.0, 1 / expected), rel=1e-12)
    for bound in (path.ci_low[0], path.ci_high[0]):  # on the interval's edge Lambda = 1 / alpha
        edge = msprt_from_moments(1.0, s2, n, 1.0 + d, s2, n, mixing_sd=tau, null=bound)
        assert edge.p_value[0] == pytest.approx(0.05, rel=1e-9)


def test_msprt_path_is_monotone_and_agrees_with_the_vectorised_form():
    control, treatment = normal_simulator(effect=0.08)(1)
    path = msprt(control, treatment, mixing_sd=0.1)
    assert path.p_value.shape == (DAYS,)
    assert np.all(np.diff(path.p_value) <= 0)
    assert np.all(np.diff(path.ci_low) >= 0) and np.all(np.diff(path.ci_high) <= 0)
    moments = [look_moments("c", control), look_moments("t", treatment)]
    batch = msprt_from_moments(*moments[0], *moments[1], mixing_sd=0.1)
    np.testing.assert_allclose(batch.p_value, path.p_value, rtol=1e-12)
    assert path.rejected == (path.first_rejection is not None)


def test_msprt_controls_false_positives_under_daily_peeking_and_naive_peeking_does_not():
    reps = 400
    rng = np.random.default_rng(2017)
    a = cumulative_moments(rng.normal(0.0, 1.0, (reps, DAYS, PER_DAY)))
    b = cumulative_moments(rng.normal(0.0, 1.0, (reps, DAYS, PER_DAY)))
    sequential = msprt_from_moments(*a, *b, mixing_sd=0.1)
    naive = welch_from_moments(*a, *b)
    sequential_rate = np.mean(sequential.rejected)
    peeking_rate = np.mean(np.any(naive.p_value < 0.05, axis=1))
    assert sequential_rate <= 0.07
    assert peeking_rate >= 0.12  # Armitage et al.: about 0.2 over 14 looks
    assert np.mean(naive.p_value[:, -1] < 0.05) == pytest.approx(0.05, abs=0.03)


def test_msprt_detects_a_real_effect():
    reps = 200
    rng = np.random.default_rng(42)
    a = cumulative_moments(rng.normal(0.0, 1.0, (reps, DAYS, PER_DAY)))
    b = cumulative_moments(rng.normal(0.15, 1.0, (reps, DAYS, PER_DAY)))
    path = msprt_from_moments(*a, *b, mixing_sd=0.1)
    assert np.mean(path.rejected) >= 0.95
    covered = (path.ci_low[:, -1] <= 0.15) & (0.15 <= path.ci_high[:, -1])
    assert np.mean(covered) >= 0.95  # always-valid intervals are conservative at a fixed look


def test_msprt_refuses_bad_input_by_name():
    with pytest.raises(ValueError, match="^mixing_sd"):
        msprt_from_moments(0.0, 1.0, 10, 0.0, 1.0, 10, mixing_sd=0)
    with pytest.raises(ValueError, match="^treatment_looks"):
        msprt([np.ones(3) * [1, 2, 3]], [np.arange(3.0), np.arange(3.0)], mixing_sd=1.0)
    with pytest.raises(ValueError, match=r"^control_looks\[0\]"):
        msprt([[1.0]], [[1.0, 2.0]], mixing_sd=1.0)
    with pytest.raises(ValueError, match="^first_rejection"):
        _ = msprt_from_moments(np.zeros((2, 3)), 1.0, 10, 0.0, 1.0, 10, mixing_sd=1.0).first_rejection


# --- A/A calibration -----------------------------------------------------------------------------


def test_aa_calibration_at_200_replications_meets_the_target():
    result = calibrate_aa(normal_simulator(), mixing_sd=0.1, replications=200)
    assert isinstance(result, Calibration) and result.looks == DAYS and result.target == AA_TARGET
    # Both the fixed-horizon and the group-sequential test inside the band, floor included.
    assert AA_TARGET[0] <= result.fixed_horizon_rate <= AA_TARGET[1]
    assert AA_TARGET[0] <= result.sequential_rate <= AA_TARGET[1]
    assert result.peeking_rate > 2 * AA_TARGET[1]  # the calibration can fail, and peeking does
    assert result.calibrated and result.as_dict()["calibrated"] is True
    # The mSPRT, valid for continuous monitoring, is conservative at 14 looks and says so.
    assert result.msprt_rate < AA_TARGET[0] and not result.msprt_ok
    assert result.as_dict()["msprt"]["ok"] is False
    # The counts are those of the tests run one seed at a time (on the first 20 seeds, an A/B
    # simulator so that there is something to count).
    simulate = normal_simulator(effect=0.05)
    few = calibrate_aa(simulate, mixing_sd=0.1, replications=20)
    paths = [simulate(seed) for seed in range(20)]
    mixture = sum(msprt(*path, mixing_sd=0.1).rejected for path in paths)
    grouped = sum(group_sequential(*path, planned_looks=DAYS).rejected for path in paths)
    assert (few.msprt_rejections, few.sequential_rejections) == (mixture, grouped)
    assert grouped > 0


def test_sequential_ok_is_judged_against_the_band_on_both_sides():
    def calibration(sequential: int) -> Calibration:
        return Calibration(replications=200, looks=14, alpha=0.05, fixed_horizon_rejections=10,
                           sequential_rejections=sequential, msprt_rejections=2,
                           peeking_rejections=40)
    assert not calibration(2).sequential_ok and not calibration(2).calibrated  # too conservative
    assert calibration(6).sequential_ok and calibration(14).sequential_ok
    assert not calibration(15).sequential_ok


def test_calibration_of_an_ab_simulator_reports_power_and_is_not_calibrated():
    result = calibrate_aa(normal_simulator(effect=0.1), mixing_sd=0.1, replications=100)
    assert result.fixed_horizon_rate > 0.85 and result.sequential_rate > 0.85
    assert result.msprt_rate > 0.6
    assert not result.calibrated


def test_calibration_refuses_ragged_simulators_and_bad_arguments():
    def ragged(seed):
        looks = 2 + seed % 2
        return np.zeros((looks, 4)) + np.arange(4), np.zeros((looks, 4)) + np.arange(4)
    with pytest.raises(ValueError, match="^simulate"):
        calibrate_aa(ragged, mixing_sd=1.0, replications=2)
    with pytest.raises(ValueError, match="^replications"):
        calibrate_aa(normal_simulator(), mixing_sd=1.0, replications=0)
    with pytest.raises(ValueError, match="^target"):
        calibrate_aa(normal_simulator(), mixing_sd=1.0, target=(0.07, 0.03))
    with pytest.raises(ValueError, match="^simulate"):
        calibrate_aa(None, mixing_sd=1.0)


# --- power ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mde, sd, ratio", [(0.2, 1.0, 1.0), (0.5, 12.0, 1.0), (0.3, 1.0, 2.0),
                                            (1.0, 10.0, 0.5), (1.5, 1.0, 1.0)])
def test_sample_size_matches_statsmodels(mde, sd, ratio):
    result = sample_size_two_means(mde, sd, ratio=ratio)
    reference = TTestIndPower().solve_power(effect_size=mde / sd, alpha=0.05, power=0.8, ratio=ratio)
    assert result.control == math.ceil(reference)
    assert result.treatment == math.ceil(reference * ratio - 1e-6)
    assert power_two_means(result.control, mde, sd, ratio=ratio) >= 0.8
    assert power_two_means(result.control - 1, mde, sd, ratio=ratio) < 0.8


def test_power_is_vectorised_like_statsmodels_and_follows_the_rule_of_thumb():
    sizes = np.array([50, 200, 800])
    ours = power_two_means(sizes, 0.25, 1.0)
    np.testing.assert_allclose(ours, TTestIndPower().power(0.25, sizes, 0.05), rtol=1e-10)
    # van Belle's 16 sd^2 / mde^2 per arm at 80% power, alpha 0.05.
    assert sample_size_two_means(0.05, 1.0).control == pytest.approx(16 / 0.05 ** 2, rel=0.02)
    assert sample_size_two_means(-0.05, 1.0) == sample_size_two_means(0.05, 1.0)


@pytest.mark.parametrize("kwargs, field", [({"mde": 0.0}, "mde"), ({"sd": -1.0}, "sd"),
                                           ({"power": 1.0}, "power"), ({"ratio": 0}, "ratio"),
                                           ({"power": 0.04}, "power")])
def test_sample_size_refuses_bad_arguments_by_name(kwargs, field):
    arguments = {"mde": 0.1, "sd": 1.0} | kwargs
    with pytest.raises(ValueError, match=rf"^{field}"):
        sample_size_two_means(**arguments)


# --- guardrails ----------------------------------------------------------------------------------


def test_guardrails_name_each_breach_and_stop():
    limits = GuardrailLimits(max_error_rate=0.01, max_p99_latency_ms=200.0)
    verdict = check_guardrails({"control": 0.002, "fast": 0.02, "slow": 0.001},
                               {"control": 150.0, "fast": 120.0, "slow": 320.0}, limits)
    assert verdict.breaches == (Breach("fast", "error_rate", 0.02, 0.01),
                                Breach("slow", "p99_latency_ms", 320.0, 200.0))
    assert verdict.stop
    healthy = check_guardrails({"control": 0.002, "B": 0.01}, {"control": 150.0, "B": 200.0}, limits)
    assert healthy.breaches == () and not healthy.stop  # at the limit is not over it


@pytest.mark.parametrize("errors, latency, field", [
    ({}, {}, "error_rate"),
    ({"A": 0.1}, {"B": 1.0}, "p99_latency_ms"),
    ({"A": 1.5}, {"A": 1.0}, "error_rate.A"),
    ({"A": 0.1}, {"A": float("nan")}, "p99_latency_ms.A"),
])
def test_guardrails_refuse_bad_input_by_name(errors, latency, field):
    with pytest.raises(ValueError, match=rf"^{field}"):
        check_guardrails(errors, latency)
    with pytest.raises(ValueError, match="^max_error_rate"):
        GuardrailLimits(max_error_rate=2.0)
