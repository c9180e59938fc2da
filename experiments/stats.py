"""The statistics that say whether a variant won: SRM, lift with intervals, CUPED, power, guardrails.

A pure library over per-member arrays (the randomisation unit is the member, so every metric is one
number per member and members are the independent draws); reading the event log is not its
business. Everything is numpy/scipy and vectorised over members; `welch_from_moments` also takes
broadcastable arrays of per-arm moments, so many tests (replications x looks) run in one call.

- `sample_ratio_mismatch`: are the arms the sizes the weights promised? If not, nothing else holds.
- `compare_means`: Welch's t for the difference in means, and the relative lift with a
  delta-method interval (plays per member, minutes watched, active days).
- `compare_ratios`: a ratio of sums per arm (completions / plays, clicks / impressions) whose
  numerator and denominator are both random per member: the delta method for a ratio of means.
- `cuped`: the difference in means adjusted by a pre-period covariate, with the variance it saved.
- `sample_size_two_means` / `power_two_means`: how many members an A/B test needs.
- `check_guardrails`: serving health per variant against limits, with a stop flag.

The always-valid sequential test and the A/A calibration live in experiments/sequential.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from marquee.settings import check_number

ALPHA = 0.05
# SRM runs on every experiment and a flag stops it: a strict threshold keeps false alarms rare
# (Kohavi, Tang & Xu 2020, "Trustworthy Online Controlled Experiments", ch. 21).
SRM_ALPHA = 0.001
POWER = 0.8


def check_alpha(name: str, value: float) -> float:
    """A probability strictly between 0 and 1 (a significance level, a power)."""
    return float(check_number(name, value, gt=0, lt=1))


def member_values(name: str, values: object, *, at_least: int = 2) -> np.ndarray:
    """A one-dimensional float array of `at_least` or more finite per-member values."""
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an array of numbers, got {type(values).__name__}") from None
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a one-dimensional array, got shape {array.shape}")
    if len(array) < at_least:
        raise ValueError(f"{name}: expected at least {at_least} members, got {len(array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: every value must be finite")
    return array


def _scalar(value: np.ndarray) -> float | np.ndarray:
    """A Python float for a 0-d result (JSON-ready), the array otherwise."""
    value = np.asarray(value, dtype=float)
    return float(value) if value.ndim == 0 else value


# --- sample ratio mismatch -----------------------------------------------------------------------


@dataclass(frozen=True)
class SampleRatio:
    """Observed against expected arm sizes; `mismatch` means the assignment or logging is broken."""

    variants: tuple[str, ...]
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float
    threshold: float

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.threshold


def sample_ratio_mismatch(counts: Mapping[str, int], weights: Mapping[str, float], *,
                          threshold: float = SRM_ALPHA) -> SampleRatio:
    """Pearson's chi-square goodness of fit of the members per variant against the configured weights.

    Why: a mismatch (a variant that crashes before it logs, a bot filter that hits one arm) biases
    every metric in a way no interval shows, so it is checked first (Fabijan et al. 2019,
    "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD). Statistic
    sum((O - E)^2 / E) with E = N w / sum(w), k - 1 degrees of freedom (Pearson 1900); the
    approximation wants every E of 5 or more, far below any real experiment's arm.
    """
    if not isinstance(counts, Mapping) or len(counts) < 2:
        raise ValueError("counts: expected a mapping of at least two variants to member counts")
    if not isinstance(weights, Mapping) or set(weights) != set(counts):
        raise ValueError(f"weights: expected the variants {sorted(counts)}, got "
                         f"{sorted(weights) if isinstance(weights, Mapping) else weights!r}")
    threshold = check_alpha("threshold", threshold)
    variants = tuple(counts)
    observed = np.array([counts[v] for v in variants])
    if observed.dtype.kind not in "iu" or np.any(observed < 0):
        raise ValueError("counts: expected non-negative integers")
    if observed.sum() == 0:
        raise ValueError("counts: no members at all")
    share = np.array([check_number(f"weights.{v}", weights[v], gt=0) for v in variants], dtype=float)
    expected = observed.sum() * share / share.sum()
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    p_value = float(stats.chi2.sf(statistic, len(variants) - 1))
    return SampleRatio(variants, tuple(int(o) for o in observed), tuple(float(e) for e in expected),
                       statistic, p_value, threshold)


# --- lift with intervals -------------------------------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Treatment against control for one metric: the difference and the relative lift, each with a
    (1 - alpha) interval. Fields are floats for one test, arrays for a batch (`welch_from_moments`).

    `df` is the t test's degrees of freedom (inf where the test is a z test, as for ratios).
    The relative lift (treatment / control - 1) is nan where the control mean is 0.
    """

    control_mean: float | np.ndarray
    treatment_mean: float | np.ndarray
    difference: float | np.ndarray
    difference_se: float | np.ndarray
    difference_low: float | np.ndarray
    difference_high: float | np.ndarray
    statistic: float | np.ndarray
    df: float | np.ndarray
    p_value: float | np.ndarray
    relative_lift: float | np.ndarray
    relative_se: float | np.ndarray
    relative_low: float | np.ndarray
    relative_high: float | np.ndarray
    n_control: float | np.ndarray
    n_treatment: float | np.ndarray
    alpha: float

    @property
    def significant(self) -> bool | np.ndarray:
        result = np.asarray(self.p_value) < self.alpha
        return bool(result) if result.ndim == 0 else result


def _compare(mean_a, var_mean_a, mean_b, var_mean_b, df, n_a, n_b, alpha: float) -> Comparison:
    """The shared tail of every comparison, from each arm's mean and the variance of that mean.

    Relative lift by the delta method for a ratio of independent means (Deng, Knoblich & Lu 2018,
    "Applying the Delta Method in Metric Analytics", KDD, the percent-change section):
    Var(mb / ma) ~= Var(mb) / ma^2 + mb^2 Var(ma) / ma^4, with a normal interval.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        difference = mean_b - mean_a
        se = np.sqrt(var_mean_a + var_mean_b)
        statistic = difference / se
        p_value = 2 * stats.t.sf(np.abs(statistic), df)
        half = stats.t.ppf(1 - alpha / 2, df) * se
        control_zero = mean_a == 0
        safe_a = np.where(control_zero, np.nan, mean_a)
        relative = mean_b / safe_a - 1
        relative_se = np.sqrt(var_mean_b / safe_a ** 2 + mean_b ** 2 * var_mean_a / safe_a ** 4)
        relative_half = special.ndtri(1 - alpha / 2) * relative_se
    return Comparison(
        control_mean=_scalar(mean_a), treatment_mean=_scalar(mean_b),
        difference=_scalar(difference), difference_se=_scalar(se),
        difference_low=_scalar(difference - half), difference_high=_scalar(difference + half),
        statistic=_scalar(statistic), df=_scalar(df), p_value=_scalar(p_value),
        relative_lift=_scalar(relative), relative_se=_scalar(relative_se),
        relative_low=_scalar(relative - relative_half), relative_high=_scalar(relative + relative_half),
        n_control=_scalar(n_a), n_treatment=_scalar(n_b), alpha=alpha)


def welch_from_moments(mean_control, var_control, n_control, mean_treatment, var_treatment,
                       n_treatment, *, alpha: float = ALPHA) -> Comparison:
    """Welch's unequal-variance t test from each arm's mean, sample variance (ddof 1) and size.

    Why Welch: arms differ in size and, under a real effect, in variance; the pooled t test is
    then miscalibrated, Welch's is not and costs nothing when they are equal (Welch 1947). The
    difference's variance is va/na + vb/nb with the Welch-Satterthwaite degrees of freedom
    (va/na + vb/nb)^2 / ((va/na)^2/(na-1) + (vb/nb)^2/(nb-1)). Arguments broadcast, so one call
    tests a whole (replications x looks) grid; moments can come from an aggregate (Arrow sums).
    """
    alpha = check_alpha("alpha", alpha)
    arrays = {name: np.asarray(value, dtype=float) for name, value in (
        ("mean_control", mean_control), ("var_control", var_control), ("n_control", n_control),
        ("mean_treatment", mean_treatment), ("var_treatment", var_treatment),
        ("n_treatment", n_treatment))}
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: every value must be finite")
    for name in ("var_control", "var_treatment"):
        if np.any(arrays[name] < 0):
            raise ValueError(f"{name}: variances must be >= 0")
    for name in ("n_control", "n_treatment"):
        if np.any(arrays[name] < 2):
            raise ValueError(f"{name}: each arm needs at least 2 members")
    n_a, n_b = arrays["n_control"], arrays["n_treatment"]
    vm_a, vm_b = arrays["var_control"] / n_a, arrays["var_treatment"] / n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (vm_a + vm_b) ** 2 / (vm_a ** 2 / (n_a - 1) + vm_b ** 2 / (n_b - 1))
    return _compare(arrays["mean_control"], vm_a, arrays["mean_treatment"], vm_b, df, n_a, n_b, alpha)


def compare_means(control: Sequence[float] | np.ndarray, treatment: Sequence[float] | np.ndarray,
                  *, alpha: float = ALPHA) -> Comparison:
    """Welch's t for the difference in means of a per-member metric, with the relative lift.

    `control`, `treatment`: one value per member of each arm (members with no activity count as
    0: they were randomised, so dropping them would bias the comparison).
    """
    a = member_values("control", control)
    b = member_values("treatment", treatment)
    return welch_from_moments(a.mean(), a.var(ddof=1), len(a), b.mean(), b.var(ddof=1), len(b),
                              alpha=alpha)


def ratio_moments(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, float]:
    """The ratio of sums sum(x) / sum(y) over members and the delta-method variance of it.

    With per-member x (completions) and y (plays), R = mean(x) / mean(y) and, to first order
    (Deng, Knoblich & Lu 2018, the ratio-metric section),
    Var(R) ~= (Var(x)/my^2 - 2 mx Cov(x, y)/my^3 + mx^2 Var(y)/my^4) / n.
    Why not the per-play variance: plays of one member are correlated, the member is the draw;
    treating plays as independent understates the variance (Deng et al. say by how much).
    """
    mx, my = numerator.mean(), denominator.mean()
    if my == 0:
        raise ValueError("denominator: sums to 0 in an arm, the ratio is undefined")
    var_x, var_y = numerator.var(ddof=1), denominator.var(ddof=1)
    cov_xy = np.cov(numerator, denominator, ddof=1)[0, 1]
    variance = (var_x / my ** 2 - 2 * mx * cov_xy / my ** 3 + mx ** 2 * var_y / my ** 4) / len(numerator)
    return float(mx / my), float(max(variance, 0.0))


def compare_ratios(control_numerator, control_denominator, treatment_numerator,
                   treatment_denominator, *, alpha: float = ALPHA) -> Comparison:
    """A ratio metric per arm (completion rate = completions / plays summed over the arm's
    members; click-through = clicks / impressions), its difference and relative lift.

    Each arm's ratio and its variance come from `ratio_moments` (delta method); the arms are
    independent, so the difference is a z test with variance Var(Rb) + Var(Ra), and the relative
    lift Rb / Ra - 1 takes the same delta method as the means (`df` is inf).
    """
    alpha = check_alpha("alpha", alpha)
    arms = []
    for arm, numerator, denominator in (("control", control_numerator, control_denominator),
                                        ("treatment", treatment_numerator, treatment_denominator)):
        num = member_values(f"{arm}_numerator", numerator)
        den = member_values(f"{arm}_denominator", denominator)
        if len(num) != len(den):
            raise ValueError(f"{arm}_denominator: {len(den)} members, {arm}_numerator has {len(num)}")
        if np.any(den < 0):
            raise ValueError(f"{arm}_denominator: values must be >= 0")
        if den.sum() == 0:
            raise ValueError(f"{arm}_denominator: sums to 0, the ratio is undefined")
        arms.append((*ratio_moments(num, den), len(num)))
    (ra, va, na), (rb, vb, nb) = arms
    return _compare(np.float64(ra), va, np.float64(rb), vb, np.inf, na, nb, alpha)


# --- CUPED ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cuped:
    """The CUPED comparison beside the unadjusted one, the slope used, and what it saved.

    `variance_reduction` = 1 - Var(adjusted difference) / Var(unadjusted difference), about
    corr(Y, X)^2; the members a test needs shrink by the same share.
    """

    adjusted: Comparison
    unadjusted: Comparison
    theta: float
    correlation: float
    variance_reduction: float


def cuped(control: Sequence[float] | np.ndarray, control_pre: Sequence[float] | np.ndarray,
          treatment: Sequence[float] | np.ndarray, treatment_pre: Sequence[float] | np.ndarray,
          *, alpha: float = ALPHA) -> Cuped:
    """Controlled-experiment using pre-experiment data (Deng, Xu, Kohavi & Walker 2013, WSDM).

    Y_adj = Y - theta (X - mean(X)), theta = Cov(Y, X) / Var(X), X the same metric before the
    experiment. X is independent of assignment, so the adjustment moves no arm's expected mean
    (the difference stays unbiased) and removes the part of Y's variance that X explains.

    theta is pooled over both arms as the within-arm covariance over the within-arm variance
    (like a pooled variance), so a treatment's shift of Y's mean does not leak into it; the
    adjusted difference then equals the regression-adjusted (ANCOVA, Y ~ arm + X) estimate, which
    Lin 2013 shows is consistent. mean(X) is the pooled mean, so adjusted means keep Y's scale and
    the relative lift still reads as one. Members with no pre-period history: pass X = 0 (they then
    gain nothing from the adjustment; the estimate stays unbiased).
    """
    y_a, x_a = member_values("control", control), member_values("control_pre", control_pre)
    y_b, x_b = member_values("treatment", treatment), member_values("treatment_pre", treatment_pre)
    if len(x_a) != len(y_a):
        raise ValueError(f"control_pre: {len(x_a)} members, control has {len(y_a)}")
    if len(x_b) != len(y_b):
        raise ValueError(f"treatment_pre: {len(x_b)} members, treatment has {len(y_b)}")
    sxx, sxy, syy = _within_arm_sums([(y_a, x_a), (y_b, x_b)])
    if sxx == 0:
        raise ValueError("control_pre: the pre-period covariate is constant in both arms")
    theta = float(sxy / sxx)
    x_mean = np.concatenate([x_a, x_b]).mean()
    adjusted = compare_means(y_a - theta * (x_a - x_mean), y_b - theta * (x_b - x_mean), alpha=alpha)
    unadjusted = compare_means(y_a, y_b, alpha=alpha)
    correlation = float(sxy / math.sqrt(sxx * syy)) if syy > 0 else 0.0
    reduction = (1 - adjusted.difference_se ** 2 / unadjusted.difference_se ** 2
                 if unadjusted.difference_se > 0 else 0.0)
    return Cuped(adjusted, unadjusted, theta, correlation, float(reduction))


def _within_arm_sums(arms: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float, float]:
    """(Sxx, Sxy, Syy) summed within arms: each arm's (y, x) centred on its own means."""
    sxx = sxy = syy = 0.0
    for y, x in arms:
        dx, dy = x - x.mean(), y - y.mean()
        sxx, sxy, syy = sxx + float(dx @ dx), sxy + float(dx @ dy), syy + float(dy @ dy)
    return sxx, sxy, syy


def cuped_adjusted(values: np.ndarray, covariate: np.ndarray, arm: np.ndarray) -> np.ndarray:
    """Every member's CUPED-adjusted value, Y - theta (X - mean X), with theta pooled within the
    arms (labels in `arm`) exactly as `cuped` pools it, for any number of arms; Y itself when X
    is constant within every arm (no covariate, nothing to adjust). What the sequential tests
    read at each look, so that CUPED's variance reduction reaches the decision."""
    values, covariate, arm = np.asarray(values, float), np.asarray(covariate, float), np.asarray(arm)
    if not values.shape == covariate.shape == arm.shape:
        raise ValueError(f"covariate: {covariate.shape} and arm {arm.shape} must match values {values.shape}")
    if len(values) == 0:
        return values
    sxx, sxy, _ = _within_arm_sums([(values[arm == a], covariate[arm == a]) for a in np.unique(arm)])
    if sxx == 0:
        return values
    return values - (sxy / sxx) * (covariate - covariate.mean())


# --- power ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleSize:
    """Members per arm for a two-arm test; `total` is what the experiment must enrol."""

    control: int
    treatment: int

    @property
    def total(self) -> int:
        return self.control + self.treatment


def power_two_means(n_control, mde, sd, *, alpha: float = ALPHA, ratio: float = 1.0):
    """The power of a two-sided two-sample t test to detect a difference `mde` in means.

    The t statistic under the alternative is noncentral t with df = n1 + n2 - 2 and noncentrality
    (mde / sd) sqrt(n1 n2 / (n1 + n2)) (Cohen 1988, ch. 2; statsmodels' TTestIndPower computes
    the same): power = P(T > t_crit) + P(T < -t_crit). n_treatment = ratio x n_control.
    Vectorised over `n_control` and `mde`.
    """
    alpha = check_alpha("alpha", alpha)
    ratio = float(check_number("ratio", ratio, gt=0))
    sd = float(check_number("sd", sd, gt=0))
    n1 = np.asarray(n_control, dtype=float)
    if not np.all(np.isfinite(n1)) or np.any(n1 < 2) or np.any(n1 * ratio < 2):
        raise ValueError("n_control: expected finite sizes giving each arm at least 2 members")
    effect = np.asarray(mde, dtype=float) / sd
    if not np.all(np.isfinite(effect)):
        raise ValueError("mde: every value must be finite")
    n2 = n1 * ratio
    df = n1 + n2 - 2
    noncentrality = effect * np.sqrt(n1 * n2 / (n1 + n2))
    critical = stats.t.isf(alpha / 2, df)
    power = special.nctdtr(df, noncentrality, -critical) + (1 - special.nctdtr(df, noncentrality, critical))
    return _scalar(power)


def sample_size_two_means(mde: float, sd: float, *, alpha: float = ALPHA, power: float = POWER,
                          ratio: float = 1.0) -> SampleSize:
    """Members per arm to detect an absolute difference `mde` in a metric of standard deviation `sd`.

    Solves `power_two_means(n) = power` for the smallest n (rounded up). About
    (z_{1-alpha/2} + z_power)^2 sd^2 (1 + 1/ratio) / mde^2, i.e. 16 sd^2 / mde^2 per arm at 80%
    power and alpha 0.05 (van Belle 2008, "Statistical Rules of Thumb", 2.3); never under 2 per
    arm. Pass CUPED's sd, sd sqrt(1 - variance_reduction), to see what the adjustment saves.
    """
    mde = float(check_number("mde", mde))
    if mde == 0:
        raise ValueError("mde: expected a non-zero difference, got 0")
    sd = float(check_number("sd", sd, gt=0))
    power = check_alpha("power", power)
    alpha = check_alpha("alpha", alpha)
    ratio = float(check_number("ratio", ratio, gt=0))
    if power <= alpha:
        raise ValueError(f"power: expected more than alpha ({alpha}), got {power}")
    smallest = max(2.0, 2.0 / ratio)
    if power_two_means(smallest, mde, sd, alpha=alpha, ratio=ratio) >= power:
        n1 = smallest
    else:
        z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
        upper = 2 * z ** 2 * (sd / mde) ** 2 * (1 + 1 / ratio) + 2 * smallest + 10
        n1 = optimize.brentq(lambda n: power_two_means(n, mde, sd, alpha=alpha, ratio=ratio) - power,
                             smallest, upper, xtol=1e-7)
    return SampleSize(math.ceil(n1 - 1e-6), math.ceil(n1 * ratio - 1e-6))


# --- guardrails ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuardrailLimits:
    """What a variant may cost the serving path before the experiment stops."""

    max_error_rate: float = 0.01
    max_p99_latency_ms: float = 250.0

    def __post_init__(self) -> None:
        check_number("max_error_rate", self.max_error_rate, ge=0, le=1)
        check_number("max_p99_latency_ms", self.max_p99_latency_ms, gt=0)


@dataclass(frozen=True)
class Breach:
    """One guardrail one variant broke: its value against the limit."""

    variant: str
    guardrail: str
    value: float
    limit: float


@dataclass(frozen=True)
class GuardrailVerdict:
    """Every breach, in variant then guardrail order; `stop` says the experiment must stop now."""

    breaches: tuple[Breach, ...]

    @property
    def stop(self) -> bool:
        return bool(self.breaches)


def check_guardrails(error_rate: Mapping[str, float], p99_latency_ms: Mapping[str, float],
                     limits: GuardrailLimits = GuardrailLimits()) -> GuardrailVerdict:
    """Each variant's error rate and p99 latency (from the serving path) against the limits.

    Why a stop flag and no test: a guardrail protects members now; a variant that errors or is
    slow is stopped at once rather than after the interval narrows (Kohavi, Tang & Xu 2020,
    ch. 21, guardrail metrics). A breach by control too means the system, not the variant, is sick;
    the experiment still cannot be read, so it stops as well.
    """
    if not isinstance(error_rate, Mapping) or not error_rate:
        raise ValueError("error_rate: expected a mapping of variants to error rates")
    if not isinstance(p99_latency_ms, Mapping) or set(p99_latency_ms) != set(error_rate):
        raise ValueError(f"p99_latency_ms: expected the variants {sorted(error_rate)}")
    if not isinstance(limits, GuardrailLimits):
        raise ValueError(f"limits: expected GuardrailLimits, got {type(limits).__name__}")
    breaches = []
    for variant in sorted(error_rate):
        errors = check_number(f"error_rate.{variant}", error_rate[variant], ge=0, le=1)
        latency = check_number(f"p99_latency_ms.{variant}", p99_latency_ms[variant], ge=0)
        if errors > limits.max_error_rate:
            breaches.append(Breach(variant, "error_rate", float(errors), limits.max_error_rate))
        if latency > limits.max_p99_latency_ms:
            breaches.append(Breach(variant, "p99_latency_ms", float(latency), limits.max_p99_latency_ms))
    return GuardrailVerdict(tuple(breaches))
