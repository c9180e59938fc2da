"""An always-valid sequential test (mSPRT), and the A/A calibration that checks the tests' error rates.

Why: experimenters look at results every day. A fixed-horizon t test read after every look and
stopped at the first p < 0.05 rejects a true null far more often than 5% (Armitage, McPherson &
Rowe 1969; about 20% over 14 daily looks). The mixture sequential probability ratio test keeps
P(ever reject | null) <= alpha however often it is read, at the price of some power at the horizon.

- `msprt_from_moments` / `msprt`: the always-valid p-value and confidence interval after each look.
- `calibrate_aa`: run a simulator of A/A experiments many times and report the false positive
  rates of the fixed-horizon test, the mSPRT and naive peeking, against the Part 7 target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from experiments.stats import ALPHA, check_alpha, member_values, welch_from_moments
from marquee.settings import check_int, check_number

# Part 7: an honest test rejects a true null in 3% to 7% of 200 A/A replications at alpha 0.05
# (0.05 +- about 1.3 binomial standard errors at R = 200); the sequential test need only stay
# under the top (Calibration.sequential_ok says why).
AA_TARGET = (0.03, 0.07)
AA_REPLICATIONS = 200

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


@dataclass(frozen=True)
class Calibration:
    """How often each test rejected over the replications (of an A/A simulator, its false positive
    rate; of an A/B one, its power).

    `fixed_horizon`: Welch's t read once, at the last look. `sequential`: the mSPRT rejected at
    some look. `peeking`: Welch's t read at every look, stopping at the first p < alpha (the
    mistake the mSPRT exists to prevent; shown so the calibration can be seen to fail).
    """

    replications: int
    looks: int
    alpha: float
    fixed_horizon_rejections: int
    sequential_rejections: int
    peeking_rejections: int
    target: tuple[float, float] = AA_TARGET

    @property
    def fixed_horizon_rate(self) -> float:
        return self.fixed_horizon_rejections / self.replications

    @property
    def sequential_rate(self) -> float:
        return self.sequential_rejections / self.replications

    @property
    def peeking_rate(self) -> float:
        return self.peeking_rejections / self.replications

    @property
    def fixed_horizon_ok(self) -> bool:
        """The fixed-horizon rate inside the target band: the t test should be exact, neither
        conservative nor liberal."""
        low, high = self.target
        return low <= self.fixed_horizon_rate <= high

    @property
    def sequential_ok(self) -> bool:
        """The sequential rate at most the band's top. One-sided on purpose: the mSPRT's guarantee
        is P(reject) <= alpha under continuous monitoring, and read at a few discrete looks it is
        conservative (measured here: about 0.01 to 0.015 at 14 daily looks, 0.025 at 280 looks), so
        a floor of 0.03 would fail a correct test."""
        return self.sequential_rate <= self.target[1]

    @property
    def calibrated(self) -> bool:
        return self.fixed_horizon_ok and self.sequential_ok

    def as_dict(self) -> dict:
        return {"replications": self.replications, "looks": self.looks, "alpha": self.alpha,
                "fixed_horizon_rate": self.fixed_horizon_rate,
                "sequential_rate": self.sequential_rate, "peeking_rate": self.peeking_rate,
                "target": list(self.target), "fixed_horizon_ok": self.fixed_horizon_ok,
                "sequential_ok": self.sequential_ok, "calibrated": self.calibrated}


def calibrate_aa(simulate: Simulator, *, mixing_sd: float, replications: int = AA_REPLICATIONS,
                 alpha: float = ALPHA, first_seed: int = 0,
                 target: tuple[float, float] = AA_TARGET) -> Calibration:
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
    if (not isinstance(target, tuple) or len(target) != 2
            or not 0 <= check_number("target[0]", target[0]) <= check_number("target[1]", target[1]) <= 1):
        raise ValueError(f"target: expected (low, high) with 0 <= low <= high <= 1, got {target!r}")
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
    fixed = welch_from_moments(*grid, alpha=alpha)
    sequential = msprt_from_moments(*grid, mixing_sd=mixing_sd, alpha=alpha)
    p_fixed = np.asarray(fixed.p_value).reshape(replications, -1)
    return Calibration(
        replications=replications, looks=looks.pop(), alpha=alpha,
        fixed_horizon_rejections=int(np.sum(p_fixed[:, -1] < alpha)),
        sequential_rejections=int(np.sum(sequential.p_value[:, -1] <= alpha)),
        peeking_rejections=int(np.sum(np.any(p_fixed < alpha, axis=1))), target=target)
