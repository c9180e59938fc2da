"""Open Bandit Dataset: read a campaign's logs and estimate the Bernoulli TS policy's click rate
from the uniform-random policy's logs, checked against the click rate BTS really had.

Layout (any campaign): ROOT/random/NAME/NAME.csv and ROOT/bts/NAME/NAME.csv, columns timestamp,
item_id, position (1..K), click, propensity_score, optional user_feature_* and
user-item_affinity_0..A-1; optional ROOT/random/NAME/item_context.csv (item_id, item_feature_*).
Items and positions are read from the data.

The evaluation policy's probabilities. BTS is context-free but was re-fitted every few minutes:
one (item, position)'s logged propensity runs from 0.002 to 0.77 within the week. So pi_e is
estimated per (time bin, position, item) from the BTS logs alone (their actions and logged
propensity_score, never their clicks): a Dirichlet-smoothed frequency F, blended with the harmonic
mean H of the logged propensities of the rows that chose that item (n / sum(1/p): the consistent
estimate of a bin's average probability when rows fall uniformly in time, and exact when p is
steady), weight n / (n + prior); then normalised per position. The bin count, smoothing and prior
(one bin and frequencies alone is the static, context-free estimate) are chosen from POLICY_GRID by
held-out log-likelihood of the BTS logs' logged actions (K folds).

The reward model for DM/DR: an L2 logistic regression on the random logs, its feature set
(REWARD_FEATURE_SETS: position; + user features and affinity; + item, item features and the user's
affinity to it) and penalty (PENALTY_GRID) chosen by cross-validated log loss on the random logs,
predictions cross-fitted over the same K folds.

The intervals: a two-sample percentile bootstrap. Each resample draws the random logs' rows and,
independently, the BTS logs' rows; pi_e (its chosen settings kept) is refitted on the BTS resample
and the reward model (its feature set and penalty kept) on the random one, so every interval
carries pi_e's estimation noise and DM's carries the model's.

`best` (bandits.ope.best_estimator, blind to the observed rate): DEFAULT_BEST_RULE; the report
gives every rule's pick under `best_by_rule`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit

from bandits.ope import (
    BEST_RULES,
    ESTIMATORS,
    Estimate,
    L2Logistic,
    LoggedBandit,
    best_report,
    bootstrap_refit,
    cross_fitted,
    cv_log_loss,
    estimate_all,
    fold_ids,
    log_loss,
)

LOGGING_POLICY = "random"
EVALUATION_POLICY = "bts"
REQUIRED_COLUMNS = ("timestamp", "item_id", "position", "click", "propensity_score")
USER_FEATURE_PREFIX = "user_feature_"
AFFINITY_PREFIX = "user-item_affinity_"
ITEM_CONTEXT_FILE = "item_context.csv"
ITEM_FEATURE_PREFIX = "item_feature_"
DEFAULT_BEST_RULE = "narrowest_consistent"
INTERVAL_NOTE = ("two-sample percentile bootstrap: the random logs' rows and the bts logs' rows resampled "
                 "independently; pi_e (chosen settings kept) refitted on each bts resample and the reward model "
                 "(chosen features and penalty kept) on each random resample, so the intervals carry both "
                 "fits' noise")
PENALTY_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0, 10000.0)


# --- reading --------------------------------------------------------------------------------------

def campaign_file(root: str | Path, policy: str, campaign: str) -> Path:
    """Where one policy's logs of one campaign live: ROOT/POLICY/NAME/NAME.csv."""
    return Path(root) / policy / campaign / f"{campaign}.csv"


@dataclass(frozen=True)
class CampaignLogs:
    """One policy's logs of one campaign as arrays (positions 0-based)."""

    path: Path
    seconds: np.ndarray        # timestamp, seconds since the epoch (UTC)
    item: np.ndarray           # item_id
    position: np.ndarray       # position - 1
    click: np.ndarray
    propensity: np.ndarray     # the logging policy's probability of (item, position)
    user_features: pd.DataFrame  # user_feature_* as strings (may have no columns)
    affinity: np.ndarray | None  # (n, n_affinity) user-item affinities, or None

    @property
    def n(self) -> int:
        return len(self.click)


def read_campaign_logs(root: str | Path, policy: str, campaign: str) -> CampaignLogs:
    """Read and validate ROOT/POLICY/NAME/NAME.csv; errors name the missing file or column."""
    path = campaign_file(root, policy, campaign)
    if not path.is_file():
        raise FileNotFoundError(f"open bandit data: missing file {path} "
                                f"(expected ROOT/{policy}/{campaign}/{campaign}.csv)")
    frame = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    if frame[list(REQUIRED_COLUMNS)].isna().any().any():
        bad = [c for c in REQUIRED_COLUMNS if frame[c].isna().any()]
        raise ValueError(f"{path}: empty values in column(s) {', '.join(bad)}")
    try:
        stamps = pd.to_datetime(frame["timestamp"], utc=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column timestamp is not parseable as dates ({exc})") from None
    seconds = (stamps - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy()
    item = _integer_column(frame, "item_id", path, minimum=0)
    position = _integer_column(frame, "position", path, minimum=1) - 1
    click = frame["click"].to_numpy(dtype=float)
    if not np.isin(click, (0.0, 1.0)).all():
        raise ValueError(f"{path}: column click must be 0 or 1")
    propensity = frame["propensity_score"].to_numpy(dtype=float)
    if not np.all((propensity > 0) & (propensity <= 1)):
        raise ValueError(f"{path}: column propensity_score must be in (0, 1]")
    user = frame[[c for c in frame.columns if c.startswith(USER_FEATURE_PREFIX)]].astype(str)
    return CampaignLogs(path, seconds, item, position, click, propensity, user, _affinity(frame, path))


def _integer_column(frame: pd.DataFrame, column: str, path: Path, *, minimum: int) -> np.ndarray:
    values = frame[column].to_numpy()
    if not np.issubdtype(values.dtype, np.number) or np.any(values != np.round(values)) or values.min() < minimum:
        raise ValueError(f"{path}: column {column} must hold integers >= {minimum}")
    return values.astype(np.int64)


def _affinity(frame: pd.DataFrame, path: Path) -> np.ndarray | None:
    columns = [c for c in frame.columns if c.startswith(AFFINITY_PREFIX)]
    if not columns:
        return None
    expected = [f"{AFFINITY_PREFIX}{j}" for j in range(len(columns))]
    if set(columns) != set(expected):
        raise ValueError(f"{path}: affinity columns must be {expected[0]}..{expected[-1]}")
    return frame[expected].to_numpy(dtype=float)


def read_item_context(root: str | Path, campaign: str) -> pd.DataFrame | None:
    """The random folder's item_context.csv (item_id, item_feature_*), or None when absent.
    (Each policy folder hashes the categorical item features with its own salt: read one.)"""
    path = Path(root) / LOGGING_POLICY / campaign / ITEM_CONTEXT_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if "item_id" not in frame.columns:
        raise ValueError(f"{path}: missing column item_id")
    if frame["item_id"].duplicated().any():
        raise ValueError(f"{path}: column item_id has duplicates")
    return frame[["item_id"] + [c for c in frame.columns if c.startswith(ITEM_FEATURE_PREFIX)]]


# --- the evaluation policy's probabilities ----------------------------------------------------------

@dataclass(frozen=True)
class PolicyModelSettings:
    """How pi_e(item | position, time) is estimated from the evaluation policy's own logs."""

    n_bins: int                       # equal-width time bins over the logs' span (1 = static)
    smoothing: float                  # Dirichlet pseudo-count per item, toward the all-time frequency
    propensity_prior: float | None    # H's weight is n / (n + prior); None = frequencies alone

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError(f"n_bins: must be >= 1, got {self.n_bins}")
        if not self.smoothing > 0:
            raise ValueError(f"smoothing: must be > 0, got {self.smoothing}")
        if self.propensity_prior is not None and not self.propensity_prior > 0:
            raise ValueError(f"propensity_prior: must be > 0 or None, got {self.propensity_prior}")


STATIC_POLICY = PolicyModelSettings(1, 1.0, None)
POLICY_BINS = (1, 7, 14, 28, 56, 112, 168)  # the sample logs span a week: up to hourly bins


def policy_grid(n_bins: int | None = None) -> tuple[PolicyModelSettings, ...]:
    """The settings tried for pi_e (all bin counts, or only `n_bins`), in a fixed order."""
    return tuple(PolicyModelSettings(b, s, m) for b in (POLICY_BINS if n_bins is None else (n_bins,))
                 for s in (0.25, 1.0, 4.0) for m in (None, 0.25, 1.0, 4.0))


POLICY_GRID = policy_grid()


class TimeBinnedPolicy:
    """pi_e(item | position, time bin), fitted on the evaluation policy's logged rows."""

    def __init__(self, settings: PolicyModelSettings, *, n_items: int, n_positions: int,
                 start: float, end: float) -> None:
        if not end >= start:
            raise ValueError(f"end: must be >= start ({start}), got {end}")
        self.settings, self.n_items, self.n_positions = settings, n_items, n_positions
        self.start, self.width = start, max(end - start, 1e-9) / settings.n_bins

    def bins(self, seconds: np.ndarray) -> np.ndarray:
        return np.clip(((seconds - self.start) / self.width).astype(np.int64), 0, self.settings.n_bins - 1)

    def fit(self, seconds: np.ndarray, position: np.ndarray, item: np.ndarray,
            propensity: np.ndarray, weight: np.ndarray | None = None) -> TimeBinnedPolicy:
        """weight: per row (a bootstrap's counts); default 1 each."""
        s, shape = self.settings, (self.settings.n_bins, self.n_positions, self.n_items)
        where = (self.bins(seconds), position, item)
        weight = np.ones(len(item)) if weight is None else np.asarray(weight, float)
        count, inverse = np.zeros(shape), np.zeros(shape)
        np.add.at(count, where, weight)
        np.add.at(inverse, where, weight / propensity)
        overall = count.sum(axis=0) + 0.5
        overall /= overall.sum(axis=-1, keepdims=True)
        prior = s.smoothing * self.n_items
        table = (count + prior * overall) / (count.sum(axis=-1, keepdims=True) + prior)
        if s.propensity_prior is not None:
            harmonic = np.divide(count, inverse, out=np.zeros(shape), where=count > 0)
            trust = count / (count + s.propensity_prior)
            table = trust * harmonic + (1 - trust) * table
            table /= table.sum(axis=-1, keepdims=True)
        self.table_ = table
        return self

    def distribution(self, seconds: np.ndarray, position: np.ndarray) -> np.ndarray:
        """(n, n_items): the policy's probability of every item at each row's position and time."""
        return self.table_[self.bins(seconds), position]


def policy_loglik(settings: PolicyModelSettings, logs: CampaignLogs, folds: np.ndarray, *,
                  n_items: int, n_positions: int, start: float, end: float) -> float:
    """Held-out mean log-likelihood of the logged actions (K folds): actions only, no clicks."""
    total = 0.0
    for fold in np.unique(folds):
        train, test = folds != fold, folds == fold
        model = TimeBinnedPolicy(settings, n_items=n_items, n_positions=n_positions, start=start, end=end)
        model.fit(logs.seconds[train], logs.position[train], logs.item[train], logs.propensity[train])
        dist = model.distribution(logs.seconds[test], logs.position[test])
        total += np.log(dist[np.arange(test.sum()), logs.item[test]]).sum()
    return float(total / logs.n)


# --- the reward model -------------------------------------------------------------------------------

REWARD_FEATURE_SETS = ("position", "context", "full")


class RewardFeatures:
    """Design rows for (logged row, any item) of the random logs, without an (n x items) blow-up.

    Feature sets, nested: `position` (one-hot); `context` adds the user features (one-hot) and the
    user's affinity summary (log1p of its sum, any > 0); `full` adds the item (one-hot), its
    item_context features and the user's affinity to that item.
    """

    def __init__(self, logs: CampaignLogs, feature_set: str, *, n_items: int, n_positions: int,
                 item_context: pd.DataFrame | None) -> None:
        if feature_set not in REWARD_FEATURE_SETS:
            raise ValueError(f"feature_set: {feature_set!r} is not one of {', '.join(REWARD_FEATURE_SETS)}")
        blocks = [np.eye(n_positions)[logs.position]]
        if feature_set != "position":
            blocks += [pd.get_dummies(logs.user_features[c], prefix=c).to_numpy(float)
                       for c in logs.user_features.columns]
            if logs.affinity is not None:
                total = logs.affinity.sum(axis=1)
                blocks += [np.log1p(total)[:, None], (total > 0).astype(float)[:, None]]
        self.context = sparse.csr_matrix(np.hstack(blocks))
        self.items, self.affinity = None, None
        if feature_set == "full":
            self.items = sparse.csr_matrix(np.hstack([np.eye(n_items), _item_block(item_context, n_items)]))
            if logs.affinity is not None and logs.affinity.shape[1] >= n_items:
                self.affinity = np.log1p(logs.affinity[:, :n_items])
        self.n_items = n_items

    def design(self, rows: np.ndarray, items: np.ndarray) -> sparse.csr_matrix:
        """Sparse (len(rows), p) design of each row shown its item in `items`."""
        parts = [self.context[rows]]
        if self.items is not None:
            parts.append(self.items[items])
        if self.affinity is not None:
            parts.append(sparse.csr_matrix(self.affinity[rows, items][:, None]))
        return sparse.hstack(parts, format="csr")

    def all_items(self, model: L2Logistic, rows: np.ndarray) -> np.ndarray:
        """(len(rows), n_items) predicted click probabilities for every item at each row: the
        linear predictor split by block (context + item + affinity), never an (n x items) design."""
        n_context = self.context.shape[1]
        per_row = model.intercept_ + self.context[rows] @ model.coef_[:n_context]
        per_item = (np.zeros(self.n_items) if self.items is None
                    else self.items @ model.coef_[n_context:n_context + self.items.shape[1]])
        eta = per_row[:, None] + per_item[None, :]
        if self.affinity is not None:
            eta += model.coef_[-1] * self.affinity[rows]
        return expit(eta, out=eta)


def _item_block(item_context: pd.DataFrame | None, n_items: int) -> np.ndarray:
    """Item features (numeric standardised, categorical one-hot) per item id; zeros if unknown."""
    if item_context is None:
        return np.zeros((n_items, 0))
    known = item_context[item_context["item_id"].between(0, n_items - 1)].set_index("item_id")
    columns = []
    for name in known.columns:
        values = known[name]
        if pd.api.types.is_numeric_dtype(values):
            std = values.std()
            columns.append(((values - values.mean()) / (std if std > 0 else 1.0)).to_frame(name))
        else:
            columns.append(pd.get_dummies(values.astype(str), prefix=name).astype(float))
    if not columns:
        return np.zeros((n_items, 0))
    return pd.concat(columns, axis=1).reindex(range(n_items)).fillna(0.0).to_numpy(float)


# --- the evaluation -------------------------------------------------------------------------------

def evaluate_bts_from_random(root: str | Path, campaign: str, *, seed: int = 7, n_resamples: int = 2000,
                             n_folds: int = 5, n_bins: int | None = None, confidence: float = 0.95,
                             best_rule: str = DEFAULT_BEST_RULE,
                             progress: Callable[[str], None] = lambda message: None) -> dict:
    """Estimate BTS's click rate from the random logs with every estimator; compare with BTS's own."""
    if best_rule not in BEST_RULES:
        raise ValueError(f"best rule: {best_rule!r} is not one of {', '.join(BEST_RULES)}")
    if n_resamples < 1:
        raise ValueError(f"bootstrap: must be >= 1, got {n_resamples}")
    if n_bins is not None and n_bins < 1:
        raise ValueError(f"time_bins: must be >= 1, got {n_bins}")
    random_logs = read_campaign_logs(root, LOGGING_POLICY, campaign)
    bts_logs = read_campaign_logs(root, EVALUATION_POLICY, campaign)
    item_context = read_item_context(root, campaign)
    both = (random_logs, bts_logs)
    n_items = max(int(max(log.item.max() for log in both)) + 1,
                  max((log.affinity.shape[1] for log in both if log.affinity is not None), default=0))
    n_positions = int(max(log.position.max() for log in both)) + 1
    start = float(min(log.seconds.min() for log in both))
    end = float(max(log.seconds.max() for log in both))
    policy_seed, reward_seed, bootstrap_seed, bts_bootstrap_seed = np.random.SeedSequence(seed).spawn(4)
    progress(f"{campaign}: {random_logs.n} random rows, {bts_logs.n} bts rows, "
             f"{n_items} items, {n_positions} positions")

    span = {"n_items": n_items, "n_positions": n_positions, "start": start, "end": end}
    policy, policy_summary = fit_evaluation_policy(bts_logs, span, n_folds=n_folds, n_bins=n_bins, seed=policy_seed)
    target_dist = policy.distribution(random_logs.seconds, random_logs.position)
    progress(f"policy model {policy_summary['chosen']}: held-out action log-likelihood "
             f"{policy_summary['heldout_loglik']:.4f} (static {policy_summary['static_heldout_loglik']:.4f})")
    reward_hat, refit_reward_hat, reward_summary = fit_reward_model(random_logs, item_context, n_items=n_items, n_positions=n_positions,
                                                  n_folds=n_folds, seed=reward_seed)
    progress(f"reward model: features {reward_summary['feature_set']}, penalty {reward_summary['penalty']}, "
             f"cv log loss {reward_summary['cv_log_loss']:.5f} "
             f"(constant rate {reward_summary['constant_rate_cv_log_loss']:.5f})")

    y, item = random_logs.click, random_logs.item
    rows = np.arange(random_logs.n)
    data = LoggedBandit(reward=y, action=item, behavior_prob=random_logs.propensity,
                        target_prob=target_dist[rows, item], target_dist=target_dist,
                        reward_hat=reward_hat)
    bts_rng = np.random.default_rng(bts_bootstrap_seed)

    def resample(counts: np.ndarray) -> LoggedBandit:
        """The random rows' resample (counts) with pi_e refitted on a fresh resample of the bts rows."""
        bts_counts = np.bincount(bts_rng.integers(0, bts_logs.n, bts_logs.n), minlength=bts_logs.n)
        refitted = TimeBinnedPolicy(policy.settings, **span).fit(
            bts_logs.seconds, bts_logs.position, bts_logs.item, bts_logs.propensity, weight=bts_counts)
        dist = refitted.distribution(random_logs.seconds, random_logs.position)
        return LoggedBandit(reward=y, action=item, behavior_prob=random_logs.propensity,
                            target_prob=dist[rows, item], target_dist=dist, reward_hat=refit_reward_hat(counts))

    estimates = estimate_all(data, ESTIMATORS, n_resamples=n_resamples, seed=bootstrap_seed,
                             confidence=confidence, resample=resample)
    observed = float(bts_logs.click.mean())
    weight = data.weight
    return {
        "campaign": campaign,
        "observed_rate": observed,
        "logging_policy_rate": float(y.mean()),
        "n_random": random_logs.n,
        "n_bts": bts_logs.n,
        "n_items": n_items,
        "n_positions": n_positions,
        "estimators": {name: _entry(e, observed) for name, e in estimates.items()},
        **best_report(estimates, best_rule),
        "interval": INTERVAL_NOTE,
        "settings": {"seed": seed, "bootstrap": n_resamples, "folds": n_folds, "confidence": confidence,
                     "time_bins": n_bins if n_bins is not None else "auto"},
        "policy_model": policy_summary,
        "reward_model": reward_summary,
        "weights": {"mean": float(weight.mean()), "max": float(weight.max()),
                    "effective_sample_size": float(weight.sum() ** 2 / np.sum(weight ** 2))},
    }


def fit_evaluation_policy(bts_logs: CampaignLogs, span: dict, *, n_folds: int, n_bins: int | None,
                          seed: np.random.SeedSequence) -> tuple[TimeBinnedPolicy, dict]:
    """pi_e from the evaluation policy's own logs (actions and propensities, never clicks): the
    settings with the best held-out action log-likelihood, refitted on every row."""
    grid = policy_grid(n_bins)
    folds = fold_ids(bts_logs.n, n_folds, np.random.default_rng(seed))
    scores = {g: policy_loglik(g, bts_logs, folds, **span) for g in grid + (STATIC_POLICY,)}
    chosen = max(grid, key=lambda g: scores[g])  # the first of equals, in grid order
    policy = TimeBinnedPolicy(chosen, **span).fit(bts_logs.seconds, bts_logs.position, bts_logs.item,
                                                  bts_logs.propensity)
    return policy, {
        "estimated_from": "bts logs: logged actions and propensity_score (never clicks)",
        "selected_by": "held-out log-likelihood of the bts logs' logged actions",
        "chosen": asdict(chosen),
        "heldout_loglik": scores[chosen],
        "static_heldout_loglik": scores[STATIC_POLICY],
        "grid_size": len(grid),
    }


def fit_reward_model(random_logs: CampaignLogs, item_context: pd.DataFrame | None, *, n_items: int,
                     n_positions: int, n_folds: int, seed: np.random.SeedSequence,
                     ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], dict]:
    """Cross-fitted (n, n_items) click predictions on the random logs: feature set x penalty chosen
    by cross-validated log loss on those logs, then each fold predicted by the model of the others.
    Also the refit for the bootstrap: bootstrap counts -> (n, n_items) predictions of the chosen
    model refitted on that resample (started from the fit on every row)."""
    y, item = random_logs.click, random_logs.item
    folds = fold_ids(random_logs.n, n_folds, np.random.default_rng(seed))
    designs = {name: RewardFeatures(random_logs, name, n_items=n_items, n_positions=n_positions,
                                    item_context=item_context) for name in REWARD_FEATURE_SETS}

    def fitter(features: RewardFeatures, penalty: float) -> Callable[[np.ndarray], L2Logistic]:
        return lambda train: L2Logistic(penalty).fit(features.design(train, item[train]), y[train])

    def logged(features: RewardFeatures) -> Callable[[L2Logistic, np.ndarray], np.ndarray]:
        return lambda model, test: model.predict_proba(features.design(test, item[test]))

    loss = {(name, p): cv_log_loss(folds, y, fitter(f, p), logged(f))
            for name, f in designs.items() for p in PENALTY_GRID}
    feature_set, penalty = min(loss, key=lambda key: loss[key])  # the first of equals
    chosen = designs[feature_set]
    reward_hat = cross_fitted(folds, fitter(chosen, penalty), chosen.all_items)
    every_row = np.arange(random_logs.n)
    refit = bootstrap_refit(chosen.design(every_row, item), y, penalty,
                            lambda model: chosen.all_items(model, every_row), centre=reward_hat)
    constant = log_loss(y, cross_fitted(folds, lambda train: y[train].mean(),
                                        lambda rate, test: np.full(len(test), rate)))
    return reward_hat, refit, {
        "model": "L2 logistic regression on the random logs, cross-fitted",
        "selected_by": "cross-validated log loss on the random logs (feature set x penalty)",
        "feature_set": feature_set,
        "penalty": penalty,
        "cv_log_loss": loss[feature_set, penalty],
        "constant_rate_cv_log_loss": constant,
        "best_cv_log_loss_by_feature_set": {
            name: min(v for (n, _), v in loss.items() if n == name) for name in REWARD_FEATURE_SETS},
    }


def _entry(estimate: Estimate, observed: float) -> dict:
    relative = abs(estimate.estimate - observed) / observed if observed > 0 else None
    return {"estimate": estimate.estimate, "ci_low": estimate.ci_low, "ci_high": estimate.ci_high,
            "relative_error": relative,
            "covers_observed": bool(estimate.ci_low <= observed <= estimate.ci_high)}
