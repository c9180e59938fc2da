"""Off-policy estimators: the value of an evaluation policy from another (behaviour) policy's logs.

Every estimator here has one shape, ``mean(base) + sum(num) / sum(den)`` over per-row terms, so a
single vectorised percentile bootstrap serves them all and resamples rows jointly (the same
resamples for every estimator, so their intervals compare):

- IPS    base 0,   num w r,        den 1      (w = pi_e(a_i|x_i) / pi_b(a_i|x_i))
- SNIPS  base 0,   num w r,        den w      (self-normalised: a ratio, consistent, lower variance)
- DM     base dm,  num 0,          den 1      (dm_i = sum_a pi_e(a|x_i) q(x_i, a); biased if q is wrong)
- DR     base dm,  num w (r - q_i), den 1     (unbiased if the propensities are right, whatever q)
- SNDR   base dm,  num w (r - q_i), den w     (DR with the correction self-normalised)

The point estimates use a cross-fitted reward model (``fold_ids`` + ``cross_fitted``: a row's
prediction never comes from a model that saw it). The bootstrap resamples the logged rows; by default
the reward model is held fixed (as Open Bandit Pipeline does), which leaves its own estimation noise
out of DM's interval: DM's variance is almost all the model's, so that interval is far too narrow.
Give ``resample`` and each resample refits what was fitted (the model on its rows, the counts as
weights; an estimated evaluation policy on a resample of its own logs), so the intervals carry
that noise too. ``L2Logistic`` is the small reward model.

``best_estimator`` picks one estimator by a rule that never sees the truth (BEST_RULES; the
default, ``narrowest_consistent``: the narrowest interval among the estimators consistent whatever
the reward model). ``intersection`` is SLOPE (Su, Srinath and Krishnamurthy, ICML 2020: Lepski's
method for OPE): from the widest interval down, keep narrower estimators while every interval kept
so far still has a common point; the last kept wins, so a biased but precise estimator (DM) wins
only when the wider ones cannot tell it apart from them. ``mse``: the smallest estimated variance
plus squared bias against the narrowest consistent estimator. The refits' replicates are centred
on the cross-fitted predictions the point estimate used (``bootstrap_refit``'s ``centre``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.special import expit

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr")
# Consistent whatever the reward model, given correct behaviour propensities (DM is not).
CONSISTENT_ESTIMATORS = ("ips", "snips", "dr", "sndr")
MODEL_ESTIMATORS = ("dm", "dr", "sndr")
BEST_RULES = ("narrowest_consistent", "mse", "intersection")
BEST_RULE_TEXT = {
    "mse": ("least estimated mean squared error: each estimator's bootstrap variance, plus for dm (not "
            "consistent) its squared bias estimated against the narrowest consistent interval's estimator "
            "((gap)^2 - Var(gap) over shared resamples, floored at 0). Never looks at the observed rate"),
    "intersection": ("interval intersection (SLOPE, Su et al. 2020): estimators ordered from the widest 95% "
                     "interval to the narrowest; keep going while all intervals kept share a point; the last "
                     "kept is best. Never looks at the observed rate"),
    "narrowest_consistent": ("narrowest 95% interval among ips, snips, dr, sndr (consistent whatever the "
                             "reward model; dm is not). Never looks at the observed rate"),
}
# Rows x resamples gathered per bootstrap step: bounds memory at ~8 bytes x this.
_BOOTSTRAP_CELLS = 4_000_000


@dataclass(frozen=True)
class LoggedBandit:
    """Logged rounds as arrays: what was shown, what it earned, and both policies' probabilities.

    reward (n,), action (n,) index of the logged action, behavior_prob (n,) the logging policy's
    probability of it, target_prob (n,) the evaluation policy's; for DM/DR also target_dist (n, A)
    the evaluation policy's full distribution and reward_hat (n, A) the reward model's predictions.
    """

    reward: np.ndarray
    action: np.ndarray
    behavior_prob: np.ndarray
    target_prob: np.ndarray
    target_dist: np.ndarray | None = None
    reward_hat: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = _check_vector("reward", self.reward)
        if n == 0:
            raise ValueError("reward: no logged rows")
        for name in ("action", "behavior_prob", "target_prob"):
            if _check_vector(name, getattr(self, name)) != n:
                raise ValueError(f"{name}: length {len(getattr(self, name))}, reward has {n}")
        if not np.issubdtype(np.asarray(self.action).dtype, np.integer) or np.min(self.action) < 0:
            raise ValueError("action: must be non-negative integer indices")
        if not np.all((self.behavior_prob > 0) & (self.behavior_prob <= 1)):
            raise ValueError("behavior_prob: every value must be in (0, 1]")
        if not np.all((self.target_prob >= 0) & (self.target_prob <= 1)):
            raise ValueError("target_prob: every value must be in [0, 1]")
        if (self.target_dist is None) != (self.reward_hat is None):
            raise ValueError("target_dist and reward_hat: give both (for DM/DR) or neither")
        if self.target_dist is not None:
            for name in ("target_dist", "reward_hat"):
                matrix = np.asarray(getattr(self, name))
                if matrix.ndim != 2 or matrix.shape[0] != n or not np.all(np.isfinite(matrix)):
                    raise ValueError(f"{name}: must be a finite (n, n_actions) matrix with n = {n}")
            if self.target_dist.shape != self.reward_hat.shape:
                raise ValueError(f"target_dist and reward_hat: shapes {self.target_dist.shape} "
                                 f"and {self.reward_hat.shape} differ")
            if np.max(self.action) >= self.target_dist.shape[1]:
                raise ValueError(f"action: index {np.max(self.action)} >= n_actions "
                                 f"{self.target_dist.shape[1]}")
            if not np.allclose(self.target_dist.sum(axis=1), 1.0, atol=1e-6):
                raise ValueError("target_dist: every row must sum to 1")
            logged = self.target_dist[np.arange(n), self.action]
            if not np.allclose(logged, self.target_prob):
                raise ValueError("target_prob: must equal target_dist at the logged action")

    @property
    def n(self) -> int:
        return len(self.reward)

    @property
    def weight(self) -> np.ndarray:
        """Importance weights pi_e / pi_b of the logged actions."""
        return self.target_prob / self.behavior_prob


def _check_vector(name: str, values: np.ndarray) -> int:
    values = np.asarray(values)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: must be a finite one-dimensional array")
    return len(values)


@dataclass(frozen=True)
class Terms:
    """Per-row terms of ``mean(base) + sum(num) / sum(den)``."""

    base: np.ndarray
    num: np.ndarray
    den: np.ndarray

    def value(self, counts: np.ndarray | None = None) -> float:
        """The estimate; with `counts` (a bootstrap resample's row counts) the resample's."""
        if counts is None:
            return float(self.base.mean() + self.num.sum() / self.den.sum())
        return float(counts @ self.base / len(counts) + (counts @ self.num) / (counts @ self.den))


def estimator_terms(name: str, data: LoggedBandit) -> Terms:
    """The per-row terms of estimator `name` (one of ESTIMATORS) on `data`."""
    if name not in ESTIMATORS:
        raise ValueError(f"estimator: {name!r} is not one of {', '.join(ESTIMATORS)}")
    zeros, ones, w = np.zeros(data.n), np.ones(data.n), data.weight
    if name == "ips":
        return Terms(zeros, w * data.reward, ones)
    if name == "snips":
        return Terms(zeros, w * data.reward, w)
    if data.reward_hat is None:
        raise ValueError(f"estimator: {name} needs target_dist and reward_hat")
    return _model_terms(name, data, data.reward_hat)


def _model_terms(name: str, data: LoggedBandit, reward_hat: np.ndarray) -> Terms:
    """DM / DR / SNDR terms with the reward model's predictions `reward_hat` (n, n_actions)."""
    zeros, ones, w = np.zeros(data.n), np.ones(data.n), data.weight
    direct = np.sum(data.target_dist * reward_hat, axis=1)
    residual = data.reward - reward_hat[np.arange(data.n), data.action]
    if name == "dm":
        return Terms(direct, zeros, ones)
    return Terms(direct, w * residual, ones if name == "dr" else w)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile-bootstrap interval."""

    name: str
    estimate: float
    ci_low: float
    ci_high: float
    # The bootstrap replicates behind the interval (shared resamples across one estimate_all call).
    replicates: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def width(self) -> float:
        return self.ci_high - self.ci_low


# A reward model refitted on one resample: bootstrap counts (n,) -> that model's terms, one per name.
Refit = Callable[[np.ndarray], Sequence[Terms]]


def bootstrap_replicates(terms: Sequence[Terms], *, n_resamples: int, seed: int | np.random.SeedSequence,
                         refit: Refit | None = None) -> np.ndarray:
    """(len(terms), n_resamples) bootstrap replicates: rows resampled with replacement, jointly for
    every estimator. Vectorised: each resample is a row of counts; one matrix product sums the
    terms. `refit`, if given, is called with each resample's counts and the terms it returns (one
    per estimator, in order) give that resample's replicates in place of the fixed terms' (the
    same resamples either way)."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples: must be >= 1, got {n_resamples}")
    n = len(terms[0].base) if terms else None
    if n is None or any(len(t.base) != n for t in terms):
        raise ValueError("terms: give at least one, every estimator's terms with the same number of rows")
    columns = np.column_stack([np.column_stack([t.base, t.num, t.den]) for t in terms])  # (n, 3m)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    rows: list[np.ndarray] = []
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(float)
        if refit is None:
            sums = (counts @ columns).reshape(b, len(terms), 3)
            rows.append((sums[:, :, 0] / n + sums[:, :, 1] / sums[:, :, 2]).T)
        else:
            rows.append(np.array([[t.value(c) for t in refit(c)] for c in counts]).T)
    return np.hstack(rows)


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along the last axis (the same rule as scipy.stats.bootstrap's)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    alpha = (1 - confidence) / 2
    return np.percentile(replicates, 100 * alpha, axis=-1), np.percentile(replicates, 100 * (1 - alpha), axis=-1)


def estimate_all(data: LoggedBandit, names: Sequence[str] = ESTIMATORS, *, n_resamples: int = 2000,
                 seed: int | np.random.SeedSequence = 0, confidence: float = 0.95,
                 resample: Callable[[np.ndarray], LoggedBandit] | None = None) -> dict[str, Estimate]:
    """Each named estimator's value and percentile-bootstrap interval, on shared resamples.

    resample(counts) -> LoggedBandit: the logs with what was fitted on them (the reward model, an
    estimated evaluation policy) refitted on one resample, its rows weighted by the counts; given,
    every estimator's replicates come from it, so the intervals carry the fitted parts' noise."""
    if data.reward_hat is None:
        names = [name for name in names if name not in MODEL_ESTIMATORS]
    names = list(names)
    terms = [estimator_terms(name, data) for name in names]
    refit = None
    if resample is not None:
        def refit(counts: np.ndarray) -> list[Terms]:
            refitted = resample(counts)
            return [estimator_terms(name, refitted) for name in names]
    replicates = bootstrap_replicates(terms, n_resamples=n_resamples, seed=seed, refit=refit)
    low, high = percentile_interval(replicates, confidence)
    return {name: Estimate(name, t.value(), float(lo), float(hi), row)
            for name, t, lo, hi, row in zip(names, terms, low, high, replicates)}


def best_estimator(estimates: dict[str, Estimate], rule: str = "narrowest_consistent") -> str:
    """The estimator a rule fixed in advance picks (BEST_RULE_TEXT): never the truth."""
    consistent = [n for n in CONSISTENT_ESTIMATORS if n in estimates]
    reference = min(consistent, key=lambda n: estimates[n].width)
    if rule == "narrowest_consistent":
        return reference
    if rule == "mse":
        return min(estimates, key=lambda n: (estimated_mse(estimates[n], estimates[reference], n in consistent),
                                             ESTIMATORS.index(n)))
    if rule != "intersection":
        raise ValueError(f"best rule: {rule!r} is not one of {', '.join(BEST_RULES)}")
    order = sorted(estimates, key=lambda n: (-estimates[n].width, ESTIMATORS.index(n)))
    low, high, chosen = -np.inf, np.inf, order[0]
    for name in order:
        low, high = max(low, estimates[name].ci_low), min(high, estimates[name].ci_high)
        if low > high:
            break
        chosen = name
    return chosen


def best_report(estimates: dict[str, Estimate], rule: str) -> dict:
    """The report's `best` (by `rule`), its rule in words, and every rule's pick beside it."""
    picks = {name: best_estimator(estimates, name) for name in BEST_RULES}
    return {"best": picks[rule], "best_rule": BEST_RULE_TEXT[rule], "best_by_rule": picks}


def estimated_mse(candidate: Estimate, reference: Estimate, consistent: bool) -> float:
    """Bootstrap variance, plus for an estimator that may be biased an unbiased estimate of its
    squared bias against a consistent reference, (theta - theta_ref)^2 - Var(theta - theta_ref),
    floored at 0 (the two share resamples, so the difference's variance is the paired one)."""
    if candidate.replicates is None or reference.replicates is None:
        raise ValueError(f"estimated_mse: {candidate.name} and {reference.name} need their bootstrap replicates")
    variance = float(np.var(candidate.replicates, ddof=1))
    if consistent:
        return variance
    gap = candidate.estimate - reference.estimate
    bias_squared = gap ** 2 - float(np.var(candidate.replicates - reference.replicates, ddof=1))
    return variance + max(bias_squared, 0.0)


# --- the reward model and cross-fitting ---------------------------------------------------------

def fold_ids(n: int, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """A fold id in [0, n_folds) for each of n rows, balanced and shuffled."""
    if n_folds < 2 or n_folds > n:
        raise ValueError(f"n_folds: must be in [2, {n}], got {n_folds}")
    return rng.permutation(np.arange(n) % n_folds)


@dataclass
class L2Logistic:
    """Logistic regression with an L2 penalty on the coefficients (not the intercept).

    Minimises sum of log losses + penalty / 2 * ||coef||^2 by Newton's method with step halving
    (the objective is strictly convex; a few hundred features solve in a handful of steps). Few
    clicks call for a real penalty: choose it by cross-validated log loss (``cv_log_loss``), never
    by the estimate it gives.
    """

    penalty: float = 1.0
    max_iter: int = 100
    tol: float = 1e-10

    def __post_init__(self) -> None:
        if not self.penalty > 0:
            raise ValueError(f"penalty: must be > 0, got {self.penalty}")

    def fit(self, X: np.ndarray | sparse.spmatrix, y: np.ndarray, sample_weight: np.ndarray | None = None,
            init: L2Logistic | None = None) -> L2Logistic:
        """X dense or scipy.sparse (n, p); y in {0, 1}; sample_weight (n,) >= 0 (a bootstrap's
        counts); init: a fitted model to start Newton from (a refit on a resample)."""
        y = np.asarray(y, float)
        if X.ndim != 2 or X.shape[0] != len(y):
            raise ValueError(f"X: must be (n, p) with n = len(y) = {len(y)}, got {X.shape}")
        weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, float)
        if weight.shape != y.shape or np.any(weight < 0) or not weight.sum() > 0:
            raise ValueError(f"sample_weight: must be {len(y)} non-negative values, not all zero")
        if init is not None and len(init.coef_) != X.shape[1]:
            raise ValueError(f"init: a model of {len(init.coef_)} features, X has {X.shape[1]}")
        # Rows a resample left out weigh nothing: dropping them changes no value and saves a third.
        kept = weight > 0
        if not kept.all():
            X, y, weight = X[kept], y[kept], weight[kept]
        ones = np.ones((X.shape[0], 1))
        design = sparse.hstack([ones, X], format="csr") if sparse.issparse(X) else np.hstack([ones, X])
        ridge = np.full(design.shape[1], self.penalty)
        ridge[0] = 0.0
        if init is None:
            rate = np.clip(np.average(y, weights=weight), 1e-6, 1 - 1e-6)
            params = np.zeros(design.shape[1])
            params[0] = np.log(rate / (1 - rate))
        else:
            params = np.concatenate([[init.intercept_], init.coef_])

        def objective(theta: np.ndarray, eta: np.ndarray) -> float:
            return float(weight @ (np.logaddexp(0.0, eta) - y * eta) + 0.5 * theta @ (ridge * theta))

        # The linear predictor is carried along: a step's trial points cost no product with X.
        eta = design @ params
        value = objective(params, eta)
        for _ in range(self.max_iter):
            prob = expit(eta)
            grad = design.T @ (weight * (prob - y)) + ridge * params
            curvature = weight * prob * (1 - prob)
            weighted = design.multiply(curvature[:, None]) if sparse.issparse(design) else design * curvature[:, None]
            hessian = design.T @ weighted
            hessian = (hessian.toarray() if sparse.issparse(hessian) else hessian) + np.diag(ridge)
            step = np.linalg.solve(hessian + 1e-12 * np.eye(len(params)), grad)
            direction = design @ step
            scale = 1.0
            while scale > 1e-6:
                candidate, candidate_eta = params - scale * step, eta - scale * direction
                candidate_value = objective(candidate, candidate_eta)
                if candidate_value <= value:
                    break
                scale /= 2
            else:
                break
            params, eta, improvement, value = candidate, candidate_eta, value - candidate_value, candidate_value
            if improvement <= self.tol * max(1.0, abs(value)):
                break
        self.intercept_, self.coef_ = float(params[0]), params[1:]
        return self

    def predict_proba(self, X: np.ndarray | sparse.spmatrix) -> np.ndarray:
        """P(reward = 1) for each row of X."""
        X = X if sparse.issparse(X) else np.asarray(X, float)
        return expit(self.intercept_ + X @ self.coef_)


def bootstrap_refit(design: np.ndarray | sparse.spmatrix, y: np.ndarray, penalty: float,
                    predict_all: Callable[[L2Logistic], np.ndarray], centre: np.ndarray | None = None
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """A reward model refitted on one resample, for estimate_all's `resample`: bootstrap counts ->
    (n, n_actions) predictions of an L2Logistic on the logged rows' design. The counts weight the
    rows, Newton runs from the fit on every row (warm start, a few steps to converge), and
    predict_all(model) gives that model's (n, n_actions) predictions.

    `centre`: the predictions the point estimate used (cross-fitted, so no row's prediction saw
    it). A refit predicts the rows it was fitted on, so its replicates would sit around the
    in-sample fit, not around the reported estimate; with `centre`, a resample's predictions are
    centre + (refit - in-sample fit on every row): the refit's variation, carried around the
    predictions actually reported. None: the point estimate used the in-sample fit itself."""
    full = L2Logistic(penalty).fit(design, y)
    offset = None if centre is None else np.asarray(centre, float) - predict_all(full)

    def refit(counts: np.ndarray) -> np.ndarray:
        predicted = predict_all(L2Logistic(penalty).fit(design, y, sample_weight=counts, init=full))
        return predicted if offset is None else predicted + offset

    return refit


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary log loss (probabilities clipped away from 0 and 1)."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def cross_fitted(folds: np.ndarray, fit: Callable[[np.ndarray], object],
                 predict: Callable[[object, np.ndarray], np.ndarray]) -> np.ndarray:
    """Predictions for every row from the model fitted on the other folds.

    fit(train_rows) -> model; predict(model, rows) -> array with len(rows) leading rows.
    """
    out = None
    for fold in np.unique(folds):
        rows = np.flatnonzero(folds == fold)
        predicted = np.asarray(predict(fit(np.flatnonzero(folds != fold)), rows))
        if out is None:
            out = np.empty((len(folds),) + predicted.shape[1:])
        out[rows] = predicted
    return out


def cv_log_loss(folds: np.ndarray, y: np.ndarray, fit: Callable[[np.ndarray], object],
                predict_logged: Callable[[object, np.ndarray], np.ndarray]) -> float:
    """Cross-validated mean log loss of a reward model on the logged rows."""
    return log_loss(y, cross_fitted(folds, fit, predict_logged))
