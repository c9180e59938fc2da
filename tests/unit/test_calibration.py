"""Group-sequential boundaries against published values and exact probabilities, and the A/A
calibration's simulated population, CUPED and SRM checks (small replications; the full 200 run in
tests/integration/test_calibration_aa.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments.calibration import (
    aa_population,
    calibrate,
    cuped_at_horizon,
    injected_srm,
)
from experiments.sequential import (
    alpha_spent,
    group_sequential,
    group_sequential_boundaries,
    group_sequential_from_moments,
    information_from_correlations,
    look_correlations,
)


def brownian_looks(rng, information, paths):
    """Z_k = S_k / sqrt(I_k) of a Brownian motion S at information times I: (paths, looks)."""
    increments = rng.standard_normal((paths, len(information))) * np.sqrt(np.diff(information, prepend=0.0))
    return np.cumsum(increments, axis=1) / np.sqrt(information)


# --- boundaries ----------------------------------------------------------------------------------


def test_obrien_fleming_type_boundaries_match_the_published_table():
    # Lan-DeMets O'Brien-Fleming-type spending, K = 5 equally spaced, alpha 0.05 two-sided (alpha/2
    # each side: the convention of Lan & DeMets, Jennison & Turnbull 2000 and R's ldbounds).
    result = group_sequential_boundaries(np.arange(1, 6) / 5)
    np.testing.assert_allclose(result.critical, [4.877, 3.357, 2.680, 2.290, 2.031], atol=6e-4)
    assert result.cumulative_alpha[-1] == pytest.approx(0.05)
    # One look is the fixed test.
    single = group_sequential_boundaries([1.0])
    assert single.critical[0] == pytest.approx(scipy_stats.norm.ppf(0.975), abs=1e-12)


@pytest.mark.parametrize("fractions, alpha, spending, expected", [
    # rpact's unit tests (tests/testthat/test-f_design_group_sequential.R, getDesignGroupSequential
    # sided = 1; with non-binding futility the efficacy bounds are the spending bounds alone).
    ([0.4, 0.75, 1.0], 0.13, "obrien_fleming", [2.1280732, 1.4368565, 1.2468994]),
    ([0.4, 0.75, 0.85, 1.0], 0.13, "obrien_fleming", [2.1280732, 1.4368565, 1.422873, 1.2970881]),
    ([0.35, 0.7, 1.0], 0.13, "pocock", [1.5446617, 1.4828682, 1.4620058]),
    ([0.4, 0.7], 0.025, "pocock", [2.223875, 2.3050796]),  # stopped short of the horizon
])
def test_one_sided_boundaries_match_rpact(fractions, alpha, spending, expected):
    result = group_sequential_boundaries(fractions, alpha=alpha, spending=spending, sides=1)
    np.testing.assert_allclose(result.critical, expected, atol=1e-6)


def test_spending_functions_match_their_formulas_and_rpact():
    # One-sided alpha 0.13, O'Brien-Fleming type: rpact's alphaSpent 0.016665509, 0.080406163.
    spent = alpha_spent([0.4, 0.75], 0.13, sides=1)
    np.testing.assert_allclose(spent, [0.016665509, 0.080406163], atol=1e-9)
    np.testing.assert_allclose(alpha_spent([0.4, 0.7], 0.025, spending="pocock", sides=1),
                               [0.013078429, 0.0197432], atol=1e-9)
    # Two-sided: alpha / 2 per side, 2 - 2 Phi(z_{1 - alpha/4} / sqrt(t)) each.
    t = np.array([0.1, 0.5, 0.9])
    side = 2 * scipy_stats.norm.sf(scipy_stats.norm.isf(0.0125) / np.sqrt(t))
    np.testing.assert_allclose(alpha_spent(t), 2 * side, rtol=1e-12)
    np.testing.assert_allclose(alpha_spent(t, spending="pocock"), 0.05 * np.log(1 + (np.e - 1) * t))
    for spending in ("obrien_fleming", "pocock"):
        grid = alpha_spent(np.linspace(0, 1.5, 31), spending=spending)
        assert grid[0] == 0 and grid[-1] == pytest.approx(0.05) and np.all(np.diff(grid) >= 0)
    assert alpha_spent(0.5) < alpha_spent(0.5, spending="pocock")  # OBF spends less early


def test_boundaries_spend_exactly_alpha_by_multivariate_normal_integration():
    # An independent exact check: P(all |Z_k| < c_k) from scipy's multivariate normal (Genz).
    fractions = np.array([0.25, 0.5, 0.75, 1.0])
    for spending in ("obrien_fleming", "pocock"):
        c = group_sequential_boundaries(fractions, spending=spending).critical
        corr = np.sqrt(np.minimum.outer(fractions, fractions) / np.maximum.outer(fractions, fractions))
        mvn = scipy_stats.multivariate_normal(np.zeros(4), corr, seed=3)
        stay = mvn.cdf(c, lower_limit=-c)
        assert 1 - stay == pytest.approx(0.05, abs=2e-4)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_type_one_error_by_seeded_monte_carlo_at_every_look(spending):
    # 200k correlated normal looks: the boundaries' cumulative rejection is alpha(t_k) at every k,
    # so stopping after any look (reading fewer than planned) stays at or under alpha.
    fractions = np.arange(1, 15) / 14
    result = group_sequential_boundaries(fractions, spending=spending)
    z = brownian_looks(np.random.default_rng(19), fractions, 200_000 if spending == "obrien_fleming" else 100_000)
    crossed = np.maximum.accumulate(np.abs(z) >= result.critical, axis=1)
    np.testing.assert_allclose(crossed.mean(axis=0), result.cumulative_alpha, atol=0.004)
    assert crossed[:, -1].mean() == pytest.approx(0.05, abs=0.004)


def test_looks_at_other_times_and_another_information_scale_keep_alpha():
    # Days 3, 7 and 14 of 14 only, O'Brien-Fleming type: alpha is kept at looks not planned.
    fractions = np.array([3, 7, 14]) / 14
    result = group_sequential_boundaries(fractions)
    z = brownian_looks(np.random.default_rng(23), fractions, 200_000)
    assert np.any(np.abs(z) >= result.critical, axis=1).mean() == pytest.approx(0.05, abs=0.004)
    # Pocock type, looks far more correlated than the calendar (a cumulative metric): with the
    # looks' own information the test is exact, with the calendar's it is conservative.
    fractions, information = np.array([1, 2, 3]) / 3, np.array([1.0, 1.15, 1.3])
    z = brownian_looks(np.random.default_rng(29), information, 200_000)
    own = group_sequential_boundaries(fractions, spending="pocock", information=information)
    calendar = group_sequential_boundaries(fractions, spending="pocock")
    assert np.any(np.abs(z) >= own.critical, axis=1).mean() == pytest.approx(0.05, abs=0.004)
    assert np.any(np.abs(z) >= calendar.critical, axis=1).mean() < 0.042


def test_information_from_correlations_inverts_brownian_correlation():
    information = np.array([1.0, 2.5, 3.0, 7.0])
    rho = np.sqrt(information[:-1] / information[1:])
    np.testing.assert_allclose(information_from_correlations(rho), information)
    batch = information_from_correlations(np.stack([rho, rho]))
    assert batch.shape == (2, 4)


def test_look_correlations_match_the_empirical_correlation_of_z():
    # Members with persistent rates enrol over the looks; cumulative counts per member.
    rng = np.random.default_rng(5)
    reps, members, looks = 1000, 200, 4
    rate = rng.gamma(0.7, 1.0, (reps, members))
    counts = np.cumsum(rng.poisson(rate[..., None], (reps, members, looks)), axis=2).astype(float)
    enrol = rng.integers(0, looks, (reps, members))
    values = np.where(np.arange(looks) >= enrol[..., None], counts, np.nan)
    arm = np.arange(members) % 2 == 1
    mean = np.nanmean(values[:, arm], axis=1) - np.nanmean(values[:, ~arm], axis=1)
    z = (mean - mean.mean(axis=0)) / mean.std(axis=0)
    empirical = [np.corrcoef(z[:, k], z[:, k + 1])[0, 1] for k in range(looks - 1)]
    estimated = np.mean([look_correlations(v[~arm], v[arm]) for v in values[:100]], axis=0)
    np.testing.assert_allclose(estimated, empirical, atol=0.025)


# --- the test on data ----------------------------------------------------------------------------


def test_group_sequential_path_reads_like_the_msprt_path():
    rng = np.random.default_rng(8)
    control = rng.normal(0.0, 1.0, (7, 300))
    treatment = rng.normal(0.25, 1.0, (7, 300))
    looks_c = [control[: d + 1].ravel() for d in range(7)]
    looks_t = [treatment[: d + 1].ravel() for d in range(7)]
    path = group_sequential(looks_c, looks_t, planned_looks=7)
    assert path.rejected and path.first_rejection is not None
    assert np.all(path.crossed[path.first_rejection:] == path.crossed[path.first_rejection:])
    z = path.statistic[path.first_rejection]
    assert abs(z) >= path.critical[path.first_rejection]
    # The first look's boundary is the O'Brien-Fleming one at t = 1/7.
    np.testing.assert_allclose(path.critical, group_sequential_boundaries(np.arange(1, 8) / 7).critical)
    # Read after only 3 of 7 planned looks: the same first three boundaries.
    early = group_sequential(looks_c[:3], looks_t[:3], planned_looks=7)
    np.testing.assert_allclose(early.critical, path.critical[:3])


def test_group_sequential_refuses_bad_input_by_name():
    with pytest.raises(ValueError, match="^fractions"):
        group_sequential_boundaries([0.5, 0.4])
    with pytest.raises(ValueError, match="^fractions"):
        group_sequential_boundaries([0.5, 1.2])
    with pytest.raises(ValueError, match="^spending"):
        group_sequential_boundaries([1.0], spending="haybittle")
    with pytest.raises(ValueError, match="^sides"):
        group_sequential_boundaries([1.0], sides=3)
    with pytest.raises(ValueError, match="^information"):
        group_sequential_boundaries([0.5, 1.0], information=[1.0])
    with pytest.raises(ValueError, match="^alpha"):
        group_sequential_boundaries([1.0], alpha=0.0)
    with pytest.raises(ValueError, match="^fraction"):
        alpha_spent(-0.1)
    with pytest.raises(ValueError, match="^planned_looks"):
        group_sequential_from_moments(np.zeros(3), 1.0, 10, np.zeros(3), 1.0, 10, planned_looks=2)
    with pytest.raises(ValueError, match="^correlations"):
        information_from_correlations([0.5, 1.0])
    with pytest.raises(ValueError, match="^treatment_paths"):
        look_correlations(np.ones((5, 3)), np.ones(5))


# --- the simulated population --------------------------------------------------------------------


def test_aa_population_is_seeded_and_shaped_like_an_experiment():
    first, again = aa_population(4, members=800), aa_population(4, members=800)
    np.testing.assert_array_equal(first.plays, again.plays)
    assert not np.array_equal(first.plays, aa_population(5, members=800).plays)
    assert first.plays.shape == (800, 14) and first.pre_plays.shape == (800,)
    cumulative, enrolled = first.cumulative(), first.enrolled()
    assert np.all(cumulative[~enrolled] == 0)  # no play before the first session
    assert np.all(np.diff(enrolled.sum(axis=0)) >= 0)  # enrolment only grows
    assert 0.4 < first.treatment.mean() < 0.6
    # Persistent heterogeneity: the pre-period predicts the experiment period.
    in_both = (first.enrolled_day < 14) & (first.pre_plays > 0)
    assert np.corrcoef(first.pre_plays[in_both], cumulative[in_both, -1])[0, 1] > 0.5
    lifted = aa_population(4, members=800, lift=0.5)
    assert lifted.plays[lifted.treatment].sum() > 1.3 * first.plays[first.treatment].sum()
    np.testing.assert_array_equal(lifted.plays[~lifted.treatment], first.plays[~first.treatment])


def test_cuped_is_unbiased_and_saves_variance_on_the_population():
    # A 20% lift: over seeded replications the adjusted and raw estimates agree in mean, and
    # the adjusted one varies much less (its variance reduction is its reason to exist).
    adjusted, raw = [], []
    for seed in range(30):
        result = cuped_at_horizon(aa_population(100 + seed, members=1000, lift=0.2))
        adjusted.append(result.adjusted.difference)
        raw.append(result.unadjusted.difference)
    adjusted, raw = np.array(adjusted), np.array(raw)
    shift = adjusted - raw
    assert abs(shift.mean()) <= 3 * shift.std(ddof=1) / np.sqrt(len(shift))
    assert adjusted.mean() > 0 and raw.mean() > 0
    assert np.var(adjusted, ddof=1) < 0.8 * np.var(raw, ddof=1)


def test_injected_srm_is_flagged_and_matches_scipy():
    result = injected_srm()
    assert result["counts"] == {"control": 10_400, "treatment": 9_600}
    reference = scipy_stats.chisquare([10_400, 9_600])
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)
    assert result["flagged"] and result["p_value"] < 0.001
    assert not injected_srm(control_share=0.501)["flagged"]


def test_calibrate_reports_every_test_as_json():
    report = calibrate(4, members=400, seed=3)
    json.dumps(report)
    for test in ("fixed", "sequential", "msprt", "peeking"):
        block = report[test]
        low, high = block["interval"]
        assert low <= block["false_positive_rate"] <= high
        assert block["rejections"] == round(block["false_positive_rate"] * 4)
        assert isinstance(block["ok"], bool)
    assert len(report["sequential"]["critical"]) == 14
    assert report["cuped"]["variance_reduction"] > 0.2
    assert report["srm"]["flagged"] and report["elapsed_s"] > 0
    assert calibrate(4, members=400, seed=3)["sequential"] == report["sequential"]  # seeded


@pytest.mark.parametrize("call, field", [
    (lambda: aa_population(-1), "seed"),
    (lambda: aa_population(0, members=2), "members"),
    (lambda: aa_population(0, days=0), "days"),
    (lambda: aa_population(0, pre_days=-1), "pre_days"),
    (lambda: aa_population(0, lift=-1.0), "lift"),
    (lambda: calibrate(0), "replications"),
    (lambda: calibrate(2, alpha=1.0), "alpha"),
    (lambda: calibrate(2, seed=-3), "seed"),
    (lambda: injected_srm(control_share=1.0), "control_share"),
])
def test_bad_input_is_refused_by_name(call, field):
    with pytest.raises(ValueError, match=rf"^{field}"):
        call()
