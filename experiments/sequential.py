"""Sequential tests that may be read after every look, and the A/A calibration of every test.

Why: experimenters look at results every day. A fixed-horizon t test read after every look and
stopped at the first p < 0.05 rejects a true null far more often than 5% (Armitage, McPherson &
Rowe 1969; about 20% over 14 daily looks). Two remedies, for two kinds of experiment:

- `group_sequential_from_moments` / `group_sequential`: an experiment with a planned horizon
  (14 days). Lan & DeMets (1983) alpha spending: the test spends alpha(t) by the calendar fraction t
  of the horizon, boundaries from `group_sequential_boundaries` (exact recursive integration,
  Armitage, McPherson & Rowe 1969; Jennison & Turnbull 2000, ch. 19). Exactly alpha by the horizon,
  at most alpha(t) if stopped or read less often; nearly the fixed test's power.
- `msprt_from_moments` / `msprt`: an open-ended experiment with no horizon. The mixture SPRT keeps
  P(ever reject | null) <= alpha under continuous monitoring, so read at a few discrete looks it
  is conservative (about 1% at 14 daily looks): it cannot meet an A/A band whose floor is 3%.
- `calibrate_aa` / `calibration_from_moments`: run A/A experiments many times and report the
  false positive rates of the fixed-horizon test, both sequential tests and naive peeking.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats

from experiments.stats import ALPHA, check_alpha, member_values, welch_from_moments
from marquee.settings import check_choice, check_int, check_number

# Part 7: an honest test rejects a true null in 3% to 7% of 200 A/A replications at alpha 0.05
# (0.05 +- about 1.3 binomial standard errors at R = 200), the fixed-horizon and the
# (group-)sequential test alike: too few rejections is a miscalibrated test too.
AA_TARGET = (0.03, 0.07)
AA_REPLICATIONS = 200

SPENDING = ("obrien_fleming", "pocock")
# |Z| beyond this carries < 1e-16 of the null's mass: the integration grid stops there.
Z_MAX = 8.5
# Grid points per standard deviation of a look's increment, and at most this many points.
POINTS_PER_SD = 8
MAX_GRID = 3001
# A look that may spend less than this has its boundary beyond Z_MAX (see _solve_critical).
TINY = 1e-15

# One look: the arm's per-member metric values as of that look (every member enrolled so far).
Looks = Sequence[np.ndarray] | np.ndarray
Simulator = Callable[[int], tuple[Looks, Looks]]


@dataclass(frozen=True)
class SequentialPath:
    """The mSPRT after each look (last axis), for one test or a batch (leading axes).

    `p_value` never rises and the interval [ci_low, ci_high] never widens: both can be read at
    any look, and stopping at the first `p_value <= alpha` keeps the error rate at alpha.
    """

    difference: np.ndarray
    variance: np.ndarray
    likelihood_ratio: np.ndarray
    p_value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    alpha: float
    mixing_sd: float
    null: float

    @property
    def rejected(self) -> bool | np.ndarray:
        """Whether the null was rejected at some look so far (per test in a batch)."""
        result = self.p_value[..., -1] <= self.alpha
        return bool(result) if result.ndim == 0 else result

    @property
    def first_rejection(self) -> int | None:
        """The index of the first look that rejected, None if none did (one test only)."""
        if self.p_value.ndim != 1:
            raise ValueError("first_rejection: defined for a single test's path, not a batch")
        hits = np.flatnonzero(self.p_value <= self.alpha)
        return int(hits[0]) if len(hits) else None


def msprt_from_moments(mean_control, var_control, n_control, mean_treatment, var_treatment,
                       n_treatment, *, mixing_sd: float, alpha: float = ALPHA,
                       null: float = 0.0) -> SequentialPath:
    """The mixture SPRT for a difference in means, looks along the last axis.

    With the difference's estimate d (mean_treatment - mean_control) and its variance
    V = var_control / n_control + var_treatment / n_treatment at a look, and a normal mixing
    distribution N(null, tau^2) over the true difference, the mixture likelihood ratio is

        Lambda = sqrt(V / (V + tau^2)) exp(tau^2 (d - null)^2 / (2 V (V + tau^2)))

    (Johari, Koomen, Pekelis & Walsh 2017, "Peeking at A/B Tests", KDD, for two normal streams;
    with n per arm and common sigma^2, V = 2 sigma^2 / n gives their formula). Lambda is a
    martingale under the null, so by Ville's inequality P(ever Lambda >= 1/alpha) <= alpha: the
    always-valid p-value is p_n = min(1, min over looks k <= n of 1 / Lambda_k) and the always-valid
    interval is the running intersection of {theta : Lambda(theta) < 1 / alpha}, i.e.
    d +- sqrt(V (V + tau^2) / tau^2 (2 log(1 / alpha) + log((V + tau^2) / V))).
    The variances are plug-in sample estimates (as Optimizely's Stats Engine does), which is
    sound once each arm has a few hundred members.

    `mixing_sd` (tau) is in the metric's units: set it near the effect worth detecting (for
    example the power calculation's MDE); too small is slow to detect large effects, too large
    slow for small ones. The guarantee holds for any tau.
    """
    tau = float(check_number("mixing_sd", mixing_sd, gt=0))
    null = float(check_number("null", null))
    fixed = welch_from_moments(mean_control, var_control, n_control, mean_treatment,
                               var_treatment, n_treatment, alpha=alpha)
    alpha = fixed.alpha
    difference = np.atleast_1d(np.asarray(fixed.difference, dtype=float))
    variance = np.atleast_1d(np.asarray(fixed.difference_se, dtype=float)) ** 2
    if np.any(variance <= 0):
        raise ValueError("var_control: with var_treatment, leaves the difference no variance at some look")
    tau2 = tau * tau
    log_lr = 0.5 * np.log(variance / (variance + tau2)) + (
        tau2 * (difference - null) ** 2 / (2 * variance * (variance + tau2)))
    p_value = np.exp(-np.maximum(np.maximum.accumulate(log_lr, axis=-1), 0.0))
    radius = np.sqrt(variance * (variance + tau2) / tau2
                     * (2 * np.log(1 / alpha) + np.log((variance + tau2) / variance)))
    ci_low = np.maximum.accumulate(difference - radius, axis=-1)
    ci_high = np.minimum.accumulate(difference + radius, axis=-1)
    with np.errstate(over="ignore"):
        likelihood_ratio = np.exp(log_lr)
    return SequentialPath(difference, variance, likelihood_ratio, p_value, ci_low, ci_high,
                          alpha, tau, null)


def look_moments(name: str, looks: Looks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sample variance (ddof 1) and size of an arm at each look: arrays of shape (looks,).

    `looks`: a sequence with one array per look (its per-member values as of that look, which may
    grow as members enrol) or a (looks, members) array, done in one vectorised pass.
    """
    if isinstance(looks, np.ndarray) and looks.ndim == 2:
        if looks.shape[0] == 0 or looks.shape[1] < 2 or not np.all(np.isfinite(looks)):
            raise ValueError(f"{name}: expected at least one look of at least 2 finite values")
        return (looks.mean(axis=1), looks.var(axis=1, ddof=1),
                np.full(looks.shape[0], float(looks.shape[1])))
    if isinstance(looks, (str, bytes)) or not isinstance(looks, Sequence) or len(looks) == 0:
        raise ValueError(f"{name}: expected a sequence of per-look arrays or a (looks, members) array")
    values = [member_values(f"{name}[{i}]", look) for i, look in enumerate(looks)]
    return (np.array([v.mean() for v in values]), np.array([v.var(ddof=1) for v in values]),
            np.array([float(len(v)) for v in values]))


def msprt(control_looks: Looks, treatment_looks: Looks, *, mixing_sd: float, alpha: float = ALPHA,
          null: float = 0.0) -> SequentialPath:
    """`msprt_from_moments` over per-look arrays of per-member values of each arm."""
    control = look_moments("control_looks", control_looks)
    treatment = look_moments("treatment_looks", treatment_looks)
    if len(control[0]) != len(treatment[0]):
        raise ValueError(f"treatment_looks: {len(treatment[0])} looks, control_looks has "
                         f"{len(control[0])}")
    return msprt_from_moments(*control, *treatment, mixing_sd=mixing_sd, alpha=alpha, null=null)


# --- group-sequential test with alpha spending ---------------------------------------------------


def alpha_spent(fraction, alpha: float = ALPHA, *, spending: str = "obrien_fleming",
                sides: int = 2):
    """The type I error a Lan-DeMets (1983) spending function allows by information fraction t.

    Per side at level a (a = alpha one-sided, alpha / 2 for each side of a two-sided test, the
    convention of Lan & DeMets, Jennison & Turnbull and R's ldbounds): O'Brien-Fleming type
    a(t) = 2 - 2 Phi(z_{1-a/2} / sqrt(t)), almost nothing early and nearly the fixed test's
    critical value at the horizon; Pocock type a(t) = a log(1 + (e - 1) t), spent about evenly
    (earlier stops, a higher final boundary). The total is `sides` x a(t): 0 at t = 0, alpha at
    t = 1; t past 1 (an overrun) spends nothing more. Vectorised over `fraction`.
    """
    alpha = check_alpha("alpha", alpha)
    spending = check_choice("spending", spending, SPENDING)
    sides = check_choice("sides", sides, (1, 2))
    t = np.asarray(fraction, dtype=float)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError("fraction: expected finite information fractions >= 0")
    t = np.minimum(t, 1.0)
    side = alpha / sides
    with np.errstate(divide="ignore"):
        if spending == "obrien_fleming":
            spent = 2 * special.ndtr(-special.ndtri(1 - side / 2) / np.sqrt(t))
        else:
            spent = side * np.log1p((np.e - 1) * t)
    spent = sides * np.where(t == 0, 0.0, np.where(t == 1, side, spent))
    return float(spent) if spent.ndim == 0 else spent


@dataclass(frozen=True)
class Boundaries:
    """Critical values of |Z| (two-sided) or Z (one-sided) per look, and the alpha spent by each.

    `fractions`: the spending times (share of the planned horizon) of the looks read;
    `information`: the times whose ratios give the looks' correlation, corr(Z_j, Z_k) =
    sqrt(I_j / I_k) (the same as `fractions` unless told otherwise). `critical` is inf at a look
    that may spend nothing (its spending rounds to 0).
    """

    fractions: np.ndarray
    information: np.ndarray
    critical: np.ndarray
    cumulative_alpha: np.ndarray
    alpha: float
    spending: str
    sides: int

    @property
    def nominal_alpha(self) -> np.ndarray:
        """The fixed-test significance level each boundary corresponds to on its own."""
        return self.sides * special.ndtr(-self.critical)


def _fractions(name: str, values, *, upper: float | None) -> np.ndarray:
    """A non-empty strictly increasing 1-D array of finite positive numbers (at most `upper`)."""
    try:
        array = np.atleast_1d(np.asarray(values, dtype=float))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected an array of numbers, got {type(values).__name__}") from None
    if array.ndim != 1 or len(array) == 0 or not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{name}: expected a non-empty 1-D array of finite values > 0")
    if upper is not None and np.any(array > upper):
        raise ValueError(f"{name}: expected values <= {upper}, got max {array.max()}")
    if np.any(np.diff(array) <= 0):
        raise ValueError(f"{name}: expected strictly increasing values")
    return array


def _simpson(low: float, high: float, sd: float) -> tuple[np.ndarray, np.ndarray]:
    """Grid and Simpson's weights on [low, high], fine enough for a kernel of width `sd`."""
    points = int(np.ceil((high - low) / sd * POINTS_PER_SD))
    points = min(max(points, 50), MAX_GRID - 1)
    points += points % 2  # an even number of intervals
    grid = np.linspace(low, high, points + 1)
    weights = np.ones(points + 1)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return grid, weights * (high - low) / points / 3


def _region(critical: float, sides: int) -> tuple[float, float]:
    """Where the test continues (the grid's span), cut at |z| = Z_MAX."""
    high = min(critical, Z_MAX)
    return (-high if sides == 2 else -Z_MAX), high


def _crossing(mass: np.ndarray, grid: np.ndarray, rho: float, sd: float, critical: float,
              sides: int) -> float:
    """P(continue to the last look, then cross at this one) for the sub-density `mass` (already
    times the quadrature weights) of the last look's Z, with Z_k | Z_{k-1} = z ~ N(rho z, sd^2)."""
    tail = special.ndtr((rho * grid - critical) / sd)
    if sides == 2:
        tail = tail + special.ndtr((-rho * grid - critical) / sd)
    return float(mass @ tail)


def _marginal_critical(increment: float, sides: int) -> float:
    """c with P(|Z| >= c) (sides 2) or P(Z >= c) (sides 1) = increment for Z ~ N(0, 1)."""
    return float(-special.ndtri(increment / sides)) if increment > 0 else float("inf")


def _solve_critical(mass, grid, rho, sd, increment, sides) -> float:
    """The critical value that spends exactly `increment` at this look (log scale, so the
    tiny increments of early O'Brien-Fleming looks are solved as accurately as large ones).

    An increment below TINY is a boundary beyond Z_MAX, where the grid has no mass to integrate:
    there the marginal quantile stands in (it errs only in probabilities under 1e-16)."""
    if increment < TINY:
        return _marginal_critical(increment, sides)
    target = np.log(increment)
    low = 0.0 if sides == 2 else -Z_MAX
    # P(cross here) <= P(|Z_k| >= c): at that marginal quantile we are at or below the target.
    high = max(_marginal_critical(increment, sides), low) + 0.5

    def gap(c: float) -> float:
        crossing = _crossing(mass, grid, rho, sd, c, sides)
        return (np.log(crossing) if crossing > 0 else -745.0) - target

    if gap(low) < 0:
        raise ValueError("alpha: the spending asks for more at a look than the test has left")
    return float(optimize.brentq(gap, low, high, xtol=1e-12, rtol=1e-12))


def group_sequential_boundaries(fractions, *, alpha: float = ALPHA,
                                spending: str = "obrien_fleming", sides: int = 2,
                                information=None) -> Boundaries:
    """Lan-DeMets boundaries for looks at information fractions t_1 < ... < t_K <= 1.

    At look k the boundary c_k spends alpha(t_k) - alpha(t_{k-1}): P(|Z_j| < c_j for j < k and
    |Z_k| >= c_k) under the null equals that increment, computed exactly (to quadrature error,
    about 1e-8) by the recursive numerical integration of Armitage, McPherson & Rowe (1969) as
    Jennison & Turnbull (2000, ch. 19) lay it out: Z_k is a Gaussian Markov chain with
    Z_k | Z_{k-1} = z ~ N(rho_k z, 1 - rho_k^2), rho_k = sqrt(I_{k-1} / I_k); the sub-density of
    Z_k on the continuation region is carried look to look on a Simpson grid, and each c_k is the
    root of the crossing probability. Not Monte Carlo.

    The looks need not be equally spaced nor all planned looks be read: boundaries depend only on
    the fractions of the looks actually taken, and stopping at look k has spent alpha(t_k) <=
    alpha. `sides=1`: an upper boundary for a one-sided test of level alpha. `information`
    (optional, increasing): the statistical information at each look when the looks' correlation
    is not that of the spending times (Lan & DeMets 1989, calendar against information time).
    """
    t = _fractions("fractions", fractions, upper=1.0)
    info = t if information is None else _fractions("information", information, upper=None)
    if len(info) != len(t):
        raise ValueError(f"information: {len(info)} values for {len(t)} looks")
    sides = check_choice("sides", sides, (1, 2))
    cumulative = np.asarray(alpha_spent(t, alpha, spending=spending, sides=sides),
                            dtype=float).reshape(-1)
    increments = np.diff(cumulative, prepend=0.0)
    critical = np.empty(len(t))
    critical[0] = _marginal_critical(increments[0], sides)
    rho = np.sqrt(info[:-1] / info[1:])  # corr(Z_{k-1}, Z_k)
    sd = np.sqrt(1 - rho ** 2)
    # A look's grid must resolve its own density (width sd[k - 1]) and the next kernel (sd[k]).
    width = np.minimum(np.r_[1.0, sd], np.r_[sd, 1.0])
    grid, weights = _simpson(*_region(critical[0], sides), width[0])
    density = np.exp(-0.5 * grid ** 2) / np.sqrt(2 * np.pi)
    for k in range(1, len(t)):
        mass = density * weights
        critical[k] = _solve_critical(mass, grid, rho[k - 1], sd[k - 1], increments[k], sides)
        if k + 1 < len(t):  # carry the sub-density to this look's continuation region
            next_grid, weights = _simpson(*_region(critical[k], sides), width[k])
            kernel = np.exp(-0.5 * ((next_grid[:, None] - rho[k - 1] * grid[None, :]) / sd[k - 1]) ** 2)
            density = kernel @ mass / (sd[k - 1] * np.sqrt(2 * np.pi))
            grid = next_grid
    return Boundaries(t, info, critical, cumulative, float(alpha), spending, sides)


@dataclass(frozen=True)
class GroupSequentialPath:
    """The group-sequential test after each look (last axis), for one test or a batch.

    `statistic` is Welch's z of the difference at each look, `critical` the boundary there (one
    row per test when each has its own information); the test stops, rejecting the null, at the
    first look with |statistic| >= critical.
    """

    difference: np.ndarray
    difference_se: np.ndarray
    statistic: np.ndarray
    critical: np.ndarray
    fractions: np.ndarray
    alpha: float
    spending: str

    @property
    def crossed(self) -> np.ndarray:
        """Per look, whether |Z| reached the boundary there (a look after a stop still shows)."""
        return np.abs(self.statistic) >= self.critical

    @property
    def rejected(self) -> bool | np.ndarray:
        """Whether the null was rejected at some look so far (per test in a batch)."""
        result = np.any(self.crossed, axis=-1)
        return bool(result) if result.ndim == 0 else result

    @property
    def first_rejection(self) -> int | None:
        """The index of the first look that rejected, None if none did (one test only)."""
        if self.statistic.ndim != 1:
            raise ValueError("first_rejection: defined for a single test's path, not a batch")
        hits = np.flatnonzero(self.crossed)
        return int(hits[0]) if len(hits) else None


def information_from_correlations(correlations) -> np.ndarray:
    """Information times (first look = 1) from the correlations of consecutive looks' Z.

    For a Gaussian Markov sequence corr(Z_{k-1}, Z_k) = sqrt(I_{k-1} / I_k), so I_k =
    I_{k-1} / rho_k^2. Last axis = looks - 1 correlations, each in (0, 1); leading axes batch.
    """
    rho = np.asarray(correlations, dtype=float)
    if rho.ndim == 0 or not np.all(np.isfinite(rho)) or np.any(rho <= 0) or np.any(rho >= 1):
        raise ValueError("correlations: expected an array of correlations strictly between 0 and 1")
    steps = np.cumsum(-2 * np.log(rho), axis=-1)
    return np.exp(np.concatenate([np.zeros(rho.shape[:-1] + (1,)), steps], axis=-1))


def look_correlations(control_paths: np.ndarray, treatment_paths: np.ndarray) -> np.ndarray:
    """corr(Z_{k-1}, Z_k) of the difference in means, from each member's value at every look.

    `*_paths`: (members, looks), NaN before the member enrolled (enrolment is for good). With
    n_k members enrolled by look k, Cov(mean_{k-1}, mean_k) ~= s_{k-1,k} / n_k, s the sample
    covariance of the two looks' values over the members enrolled by look k - 1 (delta method for
    a mean over a growing cohort); Var(mean_k) = s_k^2 / n_k. Uses data up to look k only, so it
    can be computed as the experiment runs. Why: a cumulative metric's looks are much more
    correlated than enrolment alone implies, and boundaries built on the wrong correlation are
    conservative.
    """
    covariance, var_prev, var_next = 0.0, 0.0, 0.0
    for name, paths in (("control_paths", control_paths), ("treatment_paths", treatment_paths)):
        values = np.asarray(paths, dtype=float)
        if values.ndim != 2 or values.shape[1] < 2:
            raise ValueError(f"{name}: expected a (members, looks) array with at least 2 looks")
        enrolled = np.isfinite(values)
        n = enrolled.sum(axis=0).astype(float)
        if np.any(n < 3):
            raise ValueError(f"{name}: every look needs at least 3 enrolled members")
        filled = np.where(enrolled, values, 0.0)
        both = enrolled[:, :-1]
        m = both.sum(axis=0).astype(float)
        prev, nxt = filled[:, :-1] * both, filled[:, 1:] * both
        cross = (prev * nxt).sum(axis=0) - prev.sum(axis=0) * nxt.sum(axis=0) / m
        covariance = covariance + cross / (m - 1) / n[1:]
        mean = filled.sum(axis=0) / n
        variance = ((filled - mean) ** 2 * enrolled).sum(axis=0) / (n - 1) / n
        var_prev, var_next = var_prev + variance[:-1], var_next + variance[1:]
    return np.clip(covariance / np.sqrt(var_prev * var_next), 1e-6, 1 - 1e-9)


def group_sequential_from_moments(mean_control, var_control, n_control, mean_treatment,
                                  var_treatment, n_treatment, *, planned_looks: int,
                                  alpha: float = ALPHA, spending: str = "obrien_fleming",
                                  fractions=None, information=None) -> GroupSequentialPath:
    """The two-sided group-sequential test of a difference in means, looks along the last axis.

    Spending time is calendar time: look k of `planned_looks` (k = 1, 2, ... for the looks given)
    is at t = k / planned_looks, or pass `fractions` for looks read at other times (days 3, 7 and
    14 of 14: [3/14, 7/14, 1]). Why calendar and not information (1 / Var of the difference): the
    information at the horizon is unknown until the horizon, and for a per-member cumulative
    metric (plays so far) the variance of each member's value grows with the days faster than
    enrolment adds members, so 1 / Var falls and is no information fraction at all. The calendar
    is fixed before the data, which is all a spending function's validity needs (Lan & DeMets
    1989). The boundaries assume the looks' correlation of the calendar, corr = sqrt(t_j / t_k),
    unless `information` gives the looks' own (from `look_correlations` via
    `information_from_correlations`; one row per test in a batch): a cumulative metric's looks
    are more correlated than that, and with the calendar's correlation the test is conservative
    (measured on the A/A population: 3.5% at alpha 0.05 against 5% with its own).
    """
    planned_looks = check_int("planned_looks", planned_looks, ge=1)
    fixed = welch_from_moments(mean_control, var_control, n_control, mean_treatment,
                               var_treatment, n_treatment, alpha=alpha)
    difference = np.atleast_1d(np.asarray(fixed.difference, dtype=float))
    se = np.atleast_1d(np.asarray(fixed.difference_se, dtype=float))
    if np.any(se <= 0):
        raise ValueError("var_control: with var_treatment, leaves the difference no variance at some look")
    looks = difference.shape[-1]
    if fractions is None:
        if looks > planned_looks:
            raise ValueError(f"planned_looks: {looks} looks given, more than the {planned_looks} planned")
        fractions = np.arange(1, looks + 1) / planned_looks
    elif len(np.atleast_1d(fractions)) != looks:
        raise ValueError(f"fractions: {len(np.atleast_1d(fractions))} values for {looks} looks")
    if information is None or np.ndim(information) == 1:
        critical = group_sequential_boundaries(fractions, alpha=fixed.alpha, spending=spending,
                                               information=information).critical
    else:
        rows = np.asarray(information, dtype=float).reshape(-1, looks)
        critical = np.stack([group_sequential_boundaries(
            fractions, alpha=fixed.alpha, spending=spending, information=row).critical
            for row in rows]).reshape(np.shape(information))
    return GroupSequentialPath(difference, se, difference / se, critical,
                               np.asarray(fractions, dtype=float), fixed.alpha, spending)


def group_sequential(control_looks: Looks, treatment_looks: Looks, *, planned_looks: int,
                     alpha: float = ALPHA, spending: str = "obrien_fleming",
                     fractions=None) -> GroupSequentialPath:
    """`group_sequential_from_moments` over per-look arrays of per-member values of each arm."""
    control = look_moments("control_looks", control_looks)
    treatment = look_moments("treatment_looks", treatment_looks)
    if len(control[0]) != len(treatment[0]):
        raise ValueError(f"treatment_looks: {len(treatment[0])} looks, control_looks has "
                         f"{len(control[0])}")
    return group_sequential_from_moments(*control, *treatment, planned_looks=planned_looks,
                                         alpha=alpha, spending=spending, fractions=fractions)


# --- A/A calibration -----------------------------------------------------------------------------


def binomial_interval(successes: int, trials: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval of a rate: how far 200 replications pin a false positive
    rate down (about +- 0.03 around 0.05)."""
    trials = check_int("trials", trials, ge=1)
    successes = check_int("successes", successes, ge=0, le=trials)
    interval = stats.binomtest(successes, trials).proportion_ci(confidence, method="exact")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class Calibration:
    """How often each test rejected over the replications (of an A/A simulator, its false positive
    rate; of an A/B one, its power).

    `fixed_horizon`: Welch's t read once, at the last look. `sequential`: the group-sequential
    test (O'Brien-Fleming-type spending by default) read at every look. `msprt`: the mSPRT read
    at every look. `peeking`: Welch's t read at every look, stopping at the first p < alpha (the
    mistake the sequential tests exist to prevent; shown so the calibration can be seen to fail).
    """

    replications: int
    looks: int
    alpha: float
    fixed_horizon_rejections: int
    sequential_rejections: int
    msprt_rejections: int
    peeking_rejections: int
    target: tuple[float, float] = AA_TARGET
    spending: str = "obrien_fleming"
    critical: tuple[float, ...] = ()

    def _within(self, rejections: int) -> bool:
        low, high = self.target
        return low <= rejections / self.replications <= high

    @property
    def fixed_horizon_rate(self) -> float:
        return self.fixed_horizon_rejections / self.replications

    @property
    def sequential_rate(self) -> float:
        return self.sequential_rejections / self.replications

    @property
    def msprt_rate(self) -> float:
        return self.msprt_rejections / self.replications

    @property
    def peeking_rate(self) -> float:
        return self.peeking_rejections / self.replications

    @property
    def fixed_horizon_ok(self) -> bool:
        """The fixed-horizon rate inside the target band: the t test should be exact."""
        return self._within(self.fixed_horizon_rejections)

    @property
    def sequential_ok(self) -> bool:
        """The group-sequential rate inside the same band, floor included: it spends the whole
        alpha by the horizon, so it must be neither liberal nor conservative."""
        return self._within(self.sequential_rejections)

    @property
    def msprt_ok(self) -> bool:
        """The mSPRT against the same band; expected to fail the floor at a few discrete looks
        (its guarantee is for continuous monitoring), reported so that stays visible."""
        return self._within(self.msprt_rejections)

    @property
    def calibrated(self) -> bool:
        return self.fixed_horizon_ok and self.sequential_ok

    def test_report(self, rejections: int) -> dict:
        """One test's JSON block: rate, count, exact 95% interval, and the band check."""
        low, high = binomial_interval(rejections, self.replications)
        return {"false_positive_rate": rejections / self.replications, "rejections": rejections,
                "interval": [low, high], "ok": self._within(rejections)}

    def as_dict(self) -> dict:
        return {"replications": self.replications, "looks": self.looks, "alpha": self.alpha,
                "target": list(self.target),
                "fixed": self.test_report(self.fixed_horizon_rejections),
                "sequential": self.test_report(self.sequential_rejections)
                | {"spending": self.spending, "critical": list(self.critical)},
                "msprt": self.test_report(self.msprt_rejections),
                "peeking": self.test_report(self.peeking_rejections),
                "calibrated": self.calibrated}


def calibration_from_moments(moments: Sequence[np.ndarray], *, mixing_sd: float,
                             alpha: float = ALPHA, planned_looks: int | None = None,
                             spending: str = "obrien_fleming", information=None,
                             target: tuple[float, float] = AA_TARGET) -> Calibration:
    """Count every test's rejections over a (replications, looks) grid of per-arm moments.

    `moments`: (mean_control, var_control, n_control, mean_treatment, var_treatment,
    n_treatment), each (replications, looks); one vectorised call per test. `planned_looks`
    defaults to the looks given (the horizon is the last look). `information`: the
    group-sequential test's information times, (looks,) or (replications, looks) (see
    `group_sequential_from_moments`); `critical` then reports the median boundary per look.
    """
    if len(moments) != 6:
        raise ValueError(f"moments: expected the 6 per-arm moment arrays, got {len(moments)}")
    grid = [np.atleast_2d(np.asarray(m, dtype=float)) for m in moments]
    if len({g.shape for g in grid}) != 1:
        raise ValueError(f"moments: every array must have one (replications, looks) shape, got "
                         f"{sorted({g.shape for g in grid})}")
    alpha = check_alpha("alpha", alpha)
    target = _check_target(target)
    replications, looks = grid[0].shape
    planned = looks if planned_looks is None else planned_looks
    fixed = welch_from_moments(*grid, alpha=alpha)
    p_fixed = np.asarray(fixed.p_value).reshape(replications, looks)
    grouped = group_sequential_from_moments(*grid, planned_looks=planned, alpha=alpha,
                                            spending=spending, information=information)
    critical = np.median(np.asarray(grouped.critical).reshape(-1, looks), axis=0)
    mixture = msprt_from_moments(*grid, mixing_sd=mixing_sd, alpha=alpha)
    return Calibration(
        replications=replications, looks=looks, alpha=alpha,
        fixed_horizon_rejections=int(np.sum(p_fixed[:, -1] < alpha)),
        sequential_rejections=int(np.sum(grouped.rejected)),
        msprt_rejections=int(np.sum(mixture.p_value[:, -1] <= alpha)),
        peeking_rejections=int(np.sum(np.any(p_fixed < alpha, axis=1))), target=target,
        spending=spending, critical=tuple(float(c) for c in critical))


def _check_target(target) -> tuple[float, float]:
    if (not isinstance(target, tuple) or len(target) != 2
            or not 0 <= check_number("target[0]", target[0]) <= check_number("target[1]", target[1]) <= 1):
        raise ValueError(f"target: expected (low, high) with 0 <= low <= high <= 1, got {target!r}")
    return target


def calibrate_aa(simulate: Simulator, *, mixing_sd: float, replications: int = AA_REPLICATIONS,
                 alpha: float = ALPHA, first_seed: int = 0,
                 target: tuple[float, float] = AA_TARGET, planned_looks: int | None = None,
                 spending: str = "obrien_fleming") -> Calibration:
    """Run `simulate(seed)` for seeds first_seed .. first_seed + replications - 1 and count rejections.

    `simulate(seed) -> (control_looks, treatment_looks)`, each as `look_moments` takes (one array
    of per-member values per look, e.g. per simulated day); every replication has the same
    number of looks. The simulator is called once per seed; the tests then run once, vectorised
    over (replications x looks). Why: an A/A test (both arms the same) is the one experiment whose
    right answer is known, so it is how a pipeline's statistics are shown honest before they
    judge a real one (Kohavi, Tang & Xu 2020, ch. 19).
    """
    if not callable(simulate):
        raise ValueError(f"simulate: expected a callable seed -> (control_looks, treatment_looks), "
                         f"got {type(simulate).__name__}")
    replications = check_int("replications", replications, ge=1)
    first_seed = check_int("first_seed", first_seed, ge=0)
    alpha = check_alpha("alpha", alpha)
    target = _check_target(target)
    moments = []
    for seed in range(first_seed, first_seed + replications):
        control_looks, treatment_looks = simulate(seed)
        moments.append((*look_moments("control_looks", control_looks),
                        *look_moments("treatment_looks", treatment_looks)))
    looks = {len(m[0]) for m in moments} | {len(m[3]) for m in moments}
    if len(looks) != 1:
        raise ValueError(f"simulate: every replication must give both arms the same number of looks, "
                         f"got {sorted(looks)}")
    grid = [np.stack([m[i] for m in moments]) for i in range(6)]  # each (replications, looks)
    return calibration_from_moments(grid, mixing_sd=mixing_sd, alpha=alpha,
                                    planned_looks=planned_looks, spending=spending, target=target)
