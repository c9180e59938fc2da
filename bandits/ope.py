"""Off-policy estimators: the value of an evaluation policy from another (behaviour) policy's logs.

Every estimator here has one shape, ``mean(base) + sum(num) / sum(den)`` over per-row terms, so a
single vectorised percentile bootstrap serves them all and resamples rows jointly (the same
resamples for every estimator, so their intervals compare):

- IPS    base 0,   num w r,        den 1      (w = pi_e(a_i|x_i) / pi_b(a_i|x_i))
- SNIPS  base 0,   num w r,        den w      (self-normalised: a ratio, consistent, lower variance)
- DM     base dm,  num 0,          den 1      (dm_i = sum_a pi_e(a|x_i) q(x_i, a); biased if q is wrong)
- DR     base dm,  num w (r - q_i), den 1     (unbiased if the propensities are right, whatever q)
- SNDR   base dm,  num w (r - q_i), den w     (DR with the correction self-normalised)

The bootstrap resamples the logged rows with the reward model held fixed (as Open Bandit Pipeline
does); fit the model by cross-fitting (``fold_ids`` + ``cross_fitted``) so a row's prediction never
comes from a model that saw it. ``L2Logistic`` is the small, honest reward model used for that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.special import expit

ESTIMATORS = ("ips", "snips", "dm", "dr", "sndr")
# Consistent whatever the reward model, given correct behaviour propensities (DM is not).
CONSISTENT_ESTIMATORS = ("ips", "snips", "dr", "sndr")
_NEEDS_MODEL = ("dm", "dr", "sndr")
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

    def value(self) -> float:
        return float(self.base.mean() + self.num.sum() / self.den.sum())


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
    direct = np.sum(data.target_dist * data.reward_hat, axis=1)
    residual = data.reward - data.reward_hat[np.arange(data.n), data.action]
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

    @property
    def width(self) -> float:
        return self.ci_high - self.ci_low


def bootstrap_replicates(terms: Sequence[Terms], *, n_resamples: int, seed: int | np.random.SeedSequence,
                         ) -> np.ndarray:
    """(len(terms), n_resamples) bootstrap replicates: rows resampled with replacement, jointly for
    every estimator. Vectorised: each resample is a row of counts; one matrix product sums them."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples: must be >= 1, got {n_resamples}")
    n = len(terms[0].base)
    if any(len(t.base) != n for t in terms):
        raise ValueError("terms: every estimator's terms must have the same number of rows")
    columns = np.column_stack([np.column_stack([t.base, t.num, t.den]) for t in terms])  # (n, 3m)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // n)
    out = np.empty((len(terms), n_resamples))
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        draws = rng.integers(0, n, size=(b, n)) + (np.arange(b) * n)[:, None]
        counts = np.bincount(draws.ravel(), minlength=b * n).reshape(b, n).astype(float)
        sums = (counts @ columns).reshape(b, len(terms), 3)
        out[:, start:start + b] = (sums[:, :, 0] / n + sums[:, :, 1] / sums[:, :, 2]).T
    return out


def percentile_interval(replicates: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along the last axis (the same rule as scipy.stats.bootstrap's)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be in (0, 1), got {confidence}")
    alpha = (1 - confidence) / 2
    return np.percentile(replicates, 100 * alpha, axis=-1), np.percentile(replicates, 100 * (1 - alpha), axis=-1)


def estimate_all(data: LoggedBandit, names: Sequence[str] = ESTIMATORS, *, n_resamples: int = 2000,
                 seed: int | np.random.SeedSequence = 0, confidence: float = 0.95) -> dict[str, Estimate]:
    """Each named estimator's value and percentile-bootstrap interval, on shared resamples."""
    if data.reward_hat is None:
        names = [name for name in names if name not in _NEEDS_MODEL]
    terms = [estimator_terms(name, data) for name in names]
    low, high = percentile_interval(bootstrap_replicates(terms, n_resamples=n_resamples, seed=seed), confidence)
    return {name: Estimate(name, t.value(), float(lo), float(hi))
            for name, t, lo, hi in zip(names, terms, low, high)}


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

    def fit(self, X: np.ndarray | sparse.spmatrix, y: np.ndarray) -> L2Logistic:
        """X dense or scipy.sparse (n, p); y in {0, 1}."""
        y = np.asarray(y, float)
        if X.ndim != 2 or X.shape[0] != len(y):
            raise ValueError(f"X: must be (n, p) with n = len(y) = {len(y)}, got {X.shape}")
        ones = np.ones((X.shape[0], 1))
        design = sparse.hstack([ones, X], format="csr") if sparse.issparse(X) else np.hstack([ones, X])
        ridge = np.full(design.shape[1], self.penalty)
        ridge[0] = 0.0
        rate = np.clip(y.mean(), 1e-6, 1 - 1e-6)
        params = np.zeros(design.shape[1])
        params[0] = np.log(rate / (1 - rate))

        def objective(theta: np.ndarray) -> float:
            eta = design @ theta
            return float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * theta @ (ridge * theta))

        value = objective(params)
        for _ in range(self.max_iter):
            prob = expit(design @ params)
            grad = design.T @ (prob - y) + ridge * params
            curvature = prob * (1 - prob)
            weighted = design.multiply(curvature[:, None]) if sparse.issparse(design) else design * curvature[:, None]
            hessian = design.T @ weighted
            hessian = (hessian.toarray() if sparse.issparse(hessian) else hessian) + np.diag(ridge)
            step = np.linalg.solve(hessian + 1e-12 * np.eye(len(params)), grad)
            scale = 1.0
            while scale > 1e-6:
                candidate = params - scale * step
                candidate_value = objective(candidate)
                if candidate_value <= value:
                    break
                scale /= 2
            else:
                break
            params, improvement, value = candidate, value - candidate_value, candidate_value
            if improvement <= self.tol * max(1.0, abs(value)):
                break
        self.intercept_, self.coef_ = float(params[0]), params[1:]
        return self

    def predict_proba(self, X: np.ndarray | sparse.spmatrix) -> np.ndarray:
        """P(reward = 1) for each row of X."""
        X = X if sparse.issparse(X) else np.asarray(X, float)
        return expit(self.intercept_ + X @ self.coef_)


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
