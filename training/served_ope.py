"""A candidate artwork policy judged on the system's own served-and-rewarded logs, before it meets
members (`marquee ope --logs HOME --policy NAME`).

1. The trials. The home's event log is read in seq order (through the named event-log actor when
   a `marquee up` cluster runs for the home: the log's flock belongs to that actor; else the
   on-disk EventLog) and fed through the reward join (bandits.rewards) with the nearline
   learner's window and lateness, then the watermark is advanced past the last window so every
   trial finalizes. A trial's arm and propensity are the server's decision record's only. Each
   trial's page is rebuilt from its decision's context (the member vector the policy saw) and
   the catalog the log was served from (bandits.arms.ArmTable, the dataset of HOME/serving.json):
   every arm of the title, through bandits.context.page_features, so the candidate's whole
   action distribution over the title's arms is known. A trial without a usable member vector,
   or whose (title, artwork) the catalog does not hold, is skipped and counted.
2. The split. Trials in decision-time order; the first `train_share` of them (default half,
   never splitting a decision) train the candidate, the rest evaluate it: no trial evaluates a
   policy that learned from it. A learning candidate learns as the nearline learner would
   (actors.bandit_learner: the shown arm's context row, its theme class, the reward) in batches
   of `update_every` trials in time order, and is then frozen: what is estimated is the value
   of that snapshot served on the evaluation trials' pages, not of a policy still learning.
   Target probabilities: the candidate's `probabilities(page, rng)` on each evaluation decision's
   titles (one call per served page, as serving makes it; draws from one seeded Generator in time
   order). Behaviour probabilities: the decision record's propensity.
3. The estimators (bandits.ope): IPS, SNIPS, DM, DR and SNDR with one shared percentile bootstrap;
   the DM/DR reward model an L2 logistic regression on the shown arm's context row, its penalty
   chosen by cross-validated log loss on the evaluation trials and its predictions cross-fitted
   over the same folds (a trial's prediction never comes from a model that saw it). Reported
   beside them: the logging policy's observed reward rate on the evaluation trials (the value of
   what was served), trial and reward counts, the importance weights' effective sample size and
   the candidate's settings. `best` is picked by bandits.obd's default rule, fixed in advance:
   the narrowest interval among the estimators consistent whatever the reward model
   (`best_by_rule` shows the other rules' picks beside it).

The intervals resample evaluation trials with the candidate held fixed and the reward model
(its chosen penalty) refitted on every resample; they treat the trials of one page as
independent (they share a member and a moment), so they are somewhat narrow. A logging policy that shows one arm with certainty (propensity 1 while the
title has others) gives no information about the others: `logging.deterministic_share` says how
much of the log is like that.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from threadpoolctl import threadpool_limits

from actors.bandit_learner import LearnerSettings, LogActorReader
from bandits.arms import ArmTable
from bandits.context import FEATURE_DIM, MEMBER_DIM, N_THEMES, page_features
from bandits.obd import DEFAULT_BEST_RULE, PENALTY_GRID
from bandits.ope import (
    ESTIMATORS,
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
from bandits.policies import Feedback, PageContext, Policy, make_policy
from bandits.rewards import RewardJoin, Trial
from marquee.home import LocalCluster, Paths, use_cluster_auth
from marquee.names import EVENT_LOG_ACTOR, NAMESPACE
from marquee.settings import check_int, check_number
from state.eventlog import EventLog
from state.eventlog.errors import LogLocked

DEFAULT_TRAIN_SHARE = 0.5
MIN_EVAL_TRIALS = 100  # fewer, and the intervals and the reward model's folds say little
READ_BATCH = 50_000  # log rows per read
PAGE_CHUNK = 4_096  # trials whose pages are built at once (a page is 6 arms x 87 floats a trial)
DETERMINISTIC_PROPENSITY = 1.0 - 1e-9
INTERVAL_NOTE = ("percentile bootstrap over the evaluation trials, the candidate held fixed and the reward "
                 "model (its chosen penalty) refitted on every resample, so the model-based estimators' "
                 "intervals carry its noise; trials of one page are resampled as independent")


class ServedOpeError(ValueError):
    """The served logs cannot judge the candidate as asked; the message says why (exit 2)."""


class EventReader(Protocol):
    def read(self, since_seq: int, limit: int) -> pa.Table: ...


# -- reading the home ----------------------------------------------------------------------------


def event_log_root(home: str | Path) -> Path:
    """HOME's event log directory; ServedOpeError when there is none (nothing is created)."""
    paths = Paths(Path(home))
    if not paths.event_log.is_dir():
        raise ServedOpeError(f"no event log at {paths.event_log}: {paths.home} is not a Marquee home that served "
                             "pages (start one with `marquee up`)")
    return paths.event_log


@contextmanager
def served_log(home: str | Path, *, lock_timeout_s: float = 1.0) -> Iterator[tuple[EventReader, str]]:
    """The home's event log as a reader, and where it is read from ("actor" or "disk"): through
    the named actor when a cluster runs for the home (it holds the log's flock), else opened
    from disk. ServedOpeError when the home has no log or another process holds it."""
    paths = Paths(Path(home))
    root = event_log_root(home)
    cluster = LocalCluster.load(paths.home)
    if cluster is not None and cluster.alive():
        with _actor_log(paths, cluster) as reader:
            if reader is not None:
                yield reader, "actor"
                return
    try:
        log = EventLog(root, fsync=False, auto_compact=False, lock_timeout_s=lock_timeout_s)
    except LogLocked:
        raise ServedOpeError(f"{root}: another process holds the event log and no running cluster of "
                             f"{paths.home} serves it ({paths.cluster_record}); stop that process or "
                             "read while its `marquee up` runs") from None
    try:
        yield log, "disk"
    finally:
        log.close()


@contextmanager
def _actor_log(paths: Paths, cluster: LocalCluster) -> Iterator[LogActorReader | None]:
    """The running cluster's event-log actor (None when it has none for this home's log)."""
    use_cluster_auth(paths.home)  # before ray is imported: Ray reads its auth mode once
    import ray

    started = not ray.is_initialized()
    if started:
        try:
            cluster.connect(NAMESPACE)
        except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... for a lost head
            raise ServedOpeError(f"the cluster of {paths.home} (pid {cluster.pid}) holds the event log but cannot "
                                 f"be reached at {cluster.gcs_address}: {type(exc).__name__}: {exc}") from None
    try:
        try:
            handle = ray.get_actor(EVENT_LOG_ACTOR, namespace=NAMESPACE)
        except ValueError:  # no such actor: the system is half up; read the disk
            handle = None
        if handle is not None and ray.get(handle.root.remote()) != str(paths.event_log.resolve()):
            handle = None  # the actor serves another home's log
        yield None if handle is None else LogActorReader(handle)
    finally:
        if started:
            ray.shutdown()


def read_log_table(reader: EventReader, read_batch: int = READ_BATCH) -> pa.Table:
    """Every row of a log reader (served_log's), in sequence order; ServedOpeError when empty."""
    tables, since = [], -1
    while True:
        batch = reader.read(since, read_batch)
        if batch.num_rows == 0:
            break
        tables.append(batch)
        since = int(batch.column("seq")[-1].as_py())
        if batch.num_rows < read_batch:
            break
    if not tables:
        raise ServedOpeError("the event log is empty: nothing to analyze")
    return pa.concat_tables(tables, promote_options="default")


def served_dataset(home: str | Path, dataset: str | Path | None = None) -> Path:
    """The dataset the home serves (HOME/serving.json, written by `marquee up`), or `dataset`."""
    if dataset is not None:
        return Path(dataset)
    record = Paths(Path(home)).serving_record
    if not record.is_file():
        raise ServedOpeError(f"{record} is missing: the catalog the log was served from is unknown "
                             "(run `marquee up`, or pass --dataset DIR)")
    try:
        return Path(json.loads(record.read_text())["dataset"])
    except (ValueError, KeyError, TypeError):
        raise ServedOpeError(f'{record}: expected {{"dataset": DIR}}') from None


@dataclass(frozen=True)
class JoinedLog:
    """Every finished trial of a log, in decision-time order, and the join's account of it."""

    trials: list[Trial]
    events_read: int
    join: dict[str, int]


def join_log(reader: EventReader, settings: LearnerSettings, *, read_batch: int = READ_BATCH,
             progress: Callable[[str], None] = lambda message: None) -> JoinedLog:
    """Read the log from its start through the reward join, then close every window."""
    join = RewardJoin(settings.window_ms, settings.allowed_lateness_ms, settings.max_orphans)
    trials: list[Trial] = []
    since, events = -1, 0
    while True:
        rows = reader.read(since, read_batch)
        if rows.num_rows == 0:
            break
        since = int(pc.max(rows.column("seq")).as_py())
        events += rows.num_rows
        trials.extend(join.consume(rows))
        progress(f"read {events} events (seq {since}): {len(trials)} trials")
    if join.max_decision_ms is not None:  # past the last window: every decision closes
        trials.extend(join.advance(join.max_decision_ms + join.window_ms + 1))
    trials.sort(key=lambda t: (t.decision_ms, t.request_id, t.title_id))
    return JoinedLog(trials, events, join.stats.to_dict())


# -- trials as pages -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialSet:
    """Trials as arrays, with what rebuilds each one's page (every arm of its title): the member
    vector its decision kept and the title's row of the arm table."""

    arms: ArmTable
    trials: list[Trial]
    member: np.ndarray  # (n, MEMBER_DIM)
    title_row: np.ndarray  # (n,) row of the title in `arms`
    action: np.ndarray  # (n,) the shown arm's index among the title's arms
    propensity: np.ndarray  # (n,) the logging policy's probability of it (the decision record's)
    reward: np.ndarray  # (n,)

    @property
    def n(self) -> int:
        return len(self.trials)

    @property
    def width(self) -> int:
        return self.arms.arm_themes.shape[1]

    def subset(self, rows: slice) -> TrialSet:
        return TrialSet(self.arms, self.trials[rows], self.member[rows], self.title_row[rows], self.action[rows],
                        self.propensity[rows], self.reward[rows])

    def page(self, rows: np.ndarray | slice) -> PageContext:
        """The rows' pages: every arm of each title under the member vector its decision kept."""
        themes = self.arms.arm_themes[self.title_row[rows]]
        features, mask = page_features(self.member[rows], themes, self.arms.genres[self.title_row[rows]])
        return PageContext(features, mask, np.maximum(themes, 0))

    def shown(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """The shown arms' context rows (k, FEATURE_DIM) and theme classes (k,): what the
        learner trains on (bandits.arms.ArmTable.shown_rows rebuilds the same rows)."""
        page = self.page(rows)
        index, action = np.arange(page.n_titles), self.action[rows]
        return page.features[index, action], page.arm_class[index, action]

    def decisions(self) -> list[slice]:
        """The rows of each decision (trials of one page are adjacent: sorted by time, request)."""
        bounds = [0] + [i for i in range(1, self.n) if self.trials[i].request_id != self.trials[i - 1].request_id]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:] + [self.n])]


def trial_set(trials: Sequence[Trial], arms: ArmTable) -> tuple[TrialSet, dict[str, int]]:
    """The trials the catalog can rebuild, and how many were skipped and why."""
    kept, members, rows, actions = [], [], [], []
    skipped = {"bad_context": 0, "unknown_arm": 0}
    for trial in trials:
        vector = trial.context.get("member") if isinstance(trial.context, dict) else None
        if not _member_vector(vector):
            skipped["bad_context"] += 1
            continue
        arm = arms.arm_index(trial.title_id, trial.artwork_id)
        if arm is None:
            skipped["unknown_arm"] += 1
            continue
        kept.append(trial)
        members.append(vector)
        rows.append(arms.row_of[trial.title_id])
        actions.append(arm)
    n = len(kept)
    data = TrialSet(arms, kept, np.asarray(members, np.float64).reshape(n, MEMBER_DIM), np.asarray(rows, np.int64),
                    np.asarray(actions, np.int64), np.asarray([t.propensity for t in kept], np.float64),
                    np.asarray([t.reward for t in kept], np.float64))
    return data, skipped


def _member_vector(vector: Any) -> bool:
    return (isinstance(vector, list) and len(vector) == MEMBER_DIM
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vector))


def split_index(data: TrialSet, train_share: float) -> int:
    """Where the evaluation trials start: after the first `train_share` of the trials, moved
    forward to the end of the decision it falls in (a page is never split)."""
    check_number("train_share", train_share, ge=0.0, lt=1.0)
    cut = math.floor(train_share * data.n)
    while 0 < cut < data.n and data.trials[cut].request_id == data.trials[cut - 1].request_id:
        cut += 1
    return cut


# -- the candidate -------------------------------------------------------------------------------


def candidate_settings(policy: str, params: dict | None = None, update_every: int | None = None) -> LearnerSettings:
    """The candidate as the nearline learner would run it (validated there: the policy's name,
    its parameters and the batch, each refused by name)."""
    overrides: dict[str, Any] = {"policy": policy, "params": {} if params is None else params}
    if update_every is not None:
        overrides["update_every"] = update_every
    return LearnerSettings(**overrides)


def fit_candidate(settings: LearnerSettings, train: TrialSet) -> Policy:
    """The candidate after learning the training trials in time order, `update_every` at a time."""
    policy = make_policy(settings.policy, FEATURE_DIM, n_classes=N_THEMES, **settings.params)
    for start in range(0, train.n, settings.update_every):
        rows = slice(start, min(start + settings.update_every, train.n))
        x, arm_class = train.shown(rows)
        policy.update(Feedback(x, arm_class, train.reward[rows]))
    return policy


def target_distribution(policy: Policy, data: TrialSet, rng: np.random.Generator) -> np.ndarray:
    """(n, max_arms): the candidate's distribution over each trial's arms, one call per page."""
    out = np.zeros((data.n, data.width))
    for rows in data.decisions():
        out[rows] = policy.probabilities(data.page(rows), rng)
    return out


# -- the reward model ----------------------------------------------------------------------------


def reward_model(data: TrialSet, folds: np.ndarray
                 ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """Cross-fitted (n, max_arms) play probabilities of every arm of each trial's title, from an
    L2 logistic regression on the shown arm's context row; penalty by cross-validated log loss.
    Also the bootstrap's refit (counts -> every arm's predictions of the model refitted on them)."""
    chunks = [slice(s, min(s + PAGE_CHUNK, data.n)) for s in range(0, data.n, PAGE_CHUNK)]
    x = np.concatenate([data.shown(rows)[0] for rows in chunks])
    y = data.reward

    def fitter(penalty: float) -> Callable[[np.ndarray], L2Logistic]:
        return lambda train: L2Logistic(penalty).fit(x[train], y[train])

    pages = [data.page(rows) for rows in chunks]
    features = np.concatenate([page.features for page in pages])  # (n, width, FEATURE_DIM), built once
    mask = np.concatenate([page.mask for page in pages])

    def every_arm(model: L2Logistic, rows: np.ndarray | slice) -> np.ndarray:  # a slice: a view, no copy
        chosen = features[rows]
        predicted = model.predict_proba(chosen.reshape(-1, FEATURE_DIM)).reshape(chosen.shape[:2])
        return np.where(mask[rows], predicted, 0.0)

    loss = {p: cv_log_loss(folds, y, fitter(p), lambda model, rows: model.predict_proba(x[rows]))
            for p in PENALTY_GRID}
    penalty = min(loss, key=loss.get)  # the first of equals, in grid order
    constant = log_loss(y, cross_fitted(folds, lambda train: y[train].mean(),
                                        lambda rate, rows: np.full(len(rows), rate)))
    reward_hat = cross_fitted(folds, fitter(penalty), every_arm)
    refit = bootstrap_refit(x, y, penalty, lambda model: every_arm(model, slice(None)), centre=reward_hat)
    return reward_hat, refit, {
        "model": "L2 logistic regression on the shown arm's context row (bandits.context), cross-fitted "
                 "over the evaluation trials",
        "selected_by": "cross-validated log loss on the evaluation trials",
        "penalty": penalty,
        "cv_log_loss": loss[penalty],
        "constant_rate_cv_log_loss": constant,
    }


# -- the evaluation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedEvaluation:
    """The report, and the fitted candidate and evaluation trials behind it (for checks)."""

    report: dict[str, Any]
    policy: Policy
    evaluation: TrialSet


def evaluate_trials(trials: Sequence[Trial], arms: ArmTable, settings: LearnerSettings, *,
                    train_share: float = DEFAULT_TRAIN_SHARE, seed: int = 7, n_resamples: int = 2000,
                    n_folds: int = 5, confidence: float = 0.95,
                    progress: Callable[[str], None] = lambda message: None) -> ServedEvaluation:
    """Fit the candidate on the earlier trials and estimate its value on the later ones. BLAS
    runs single-threaded: the reward model's fits are small products, 5x slower threaded on a
    shared 2-core machine (measured)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _evaluate_trials(trials, arms, settings, train_share=train_share, seed=seed,
                                n_resamples=n_resamples, n_folds=n_folds, confidence=confidence, progress=progress)


def check_run(train_share: float, n_folds: int, n_resamples: int) -> None:
    """The run's own settings, refused by name before any log is read."""
    check_number("train_share", train_share, ge=0.0, lt=1.0)
    check_int("folds", n_folds, ge=2)
    check_int("bootstrap", n_resamples, ge=1)


def _evaluate_trials(trials: Sequence[Trial], arms: ArmTable, settings: LearnerSettings, *, train_share: float,
                     seed: int, n_resamples: int, n_folds: int, confidence: float,
                     progress: Callable[[str], None]) -> ServedEvaluation:
    check_run(train_share, n_folds, n_resamples)
    data, skipped = trial_set(trials, arms)
    cut = split_index(data, train_share)
    train, evaluation = data.subset(slice(0, cut)), data.subset(slice(cut, data.n))
    needed = max(MIN_EVAL_TRIALS, n_folds)
    if evaluation.n < needed:
        raise ServedOpeError(
            f"too few trials: {data.n} usable finished trials ({train.n} to train on, {evaluation.n} to evaluate "
            f"on with --train-share {train_share}); need at least {needed} to evaluate on, about "
            f"{math.ceil(needed / (1 - train_share))} in all"
            + (f" ({sum(skipped.values())} more skipped: {skipped})" if any(skipped.values()) else ""))
    policy_seed, reward_seed, bootstrap_seed = np.random.SeedSequence(seed).spawn(3)
    policy = fit_candidate(settings, train)
    progress(f"candidate {settings.policy} fitted on {train.n} trials ({policy.version} updates); "
             f"evaluating on {evaluation.n}")
    target = target_distribution(policy, evaluation, np.random.default_rng(policy_seed))
    rows = np.arange(evaluation.n)
    if not target[rows, evaluation.action].any():
        raise ServedOpeError(f"no overlap: the candidate gives probability 0 to the arm shown in every one of the "
                             f"{evaluation.n} evaluation trials, so the logs say nothing about what it would earn")
    folds = fold_ids(evaluation.n, n_folds, np.random.default_rng(reward_seed))
    reward_hat, refit_reward_hat, model_summary = reward_model(evaluation, folds)
    progress(f"reward model: penalty {model_summary['penalty']}, cv log loss {model_summary['cv_log_loss']:.5f} "
             f"(constant rate {model_summary['constant_rate_cv_log_loss']:.5f})")
    logged = LoggedBandit(reward=evaluation.reward, action=evaluation.action, behavior_prob=evaluation.propensity,
                          target_prob=target[rows, evaluation.action], target_dist=target, reward_hat=reward_hat)
    estimates = estimate_all(logged, ESTIMATORS, n_resamples=n_resamples, seed=bootstrap_seed, confidence=confidence,
                             resample=lambda counts: replace(logged, reward_hat=refit_reward_hat(counts)))
    weight = logged.weight
    arms_per_title = arms.arm_themes[evaluation.title_row] >= 0
    deterministic = (evaluation.propensity >= DETERMINISTIC_PROPENSITY) & (arms_per_title.sum(axis=1) > 1)
    report = {
        "policy": settings.policy,
        "candidate": {"policy": settings.policy, "params": _policy_params(policy), "update_every": settings.update_every,
                      "updates": policy.version, "trained_on": train.n},
        "logged_rate": float(evaluation.reward.mean()),
        "n_trials": data.n,
        "n_train": train.n,
        "n_eval": evaluation.n,
        "rewards": {"train": int(train.reward.sum()), "eval": int(evaluation.reward.sum())},
        "estimators": {name: {"estimate": e.estimate, "ci_low": e.ci_low, "ci_high": e.ci_high}
                       for name, e in estimates.items()},
        **best_report(estimates, DEFAULT_BEST_RULE),
        "interval": INTERVAL_NOTE,
        "weights": {"mean": float(weight.mean()), "max": float(weight.max()),
                    "effective_sample_size": float(weight.sum() ** 2 / np.sum(weight ** 2))},
        "logging": {"policies": dict(sorted(Counter(t.policy for t in evaluation.trials).items())),
                    "min_propensity": float(evaluation.propensity.min()),
                    "deterministic_share": float(deterministic.mean())},
        "split": {"train_share": train_share,
                  "train_until_ms": train.trials[-1].decision_ms if train.n else None,
                  "eval_from_ms": evaluation.trials[0].decision_ms},
        "skipped": skipped,
        "reward_model": model_summary,
        "settings": {"seed": seed, "bootstrap": n_resamples, "folds": n_folds, "confidence": confidence},
    }
    return ServedEvaluation(report, policy, evaluation)


def _policy_params(policy: Policy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in type(policy)._params}


def evaluate_home(home: str | Path, settings: LearnerSettings, *, dataset: str | Path | None = None,
                  train_share: float = DEFAULT_TRAIN_SHARE, seed: int = 7, n_resamples: int = 2000,
                  n_folds: int = 5, progress: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """`marquee ope --logs HOME --policy NAME`: the candidate judged on HOME's served logs."""
    check_run(train_share, n_folds, n_resamples)
    root = event_log_root(home)
    dataset_dir = served_dataset(home, dataset)
    with served_log(home) as (reader, source):
        progress(f"reading {root} ({'through the event-log actor' if source == 'actor' else 'from disk'})")
        joined = join_log(reader, settings, progress=progress)
    stats = joined.join
    if stats["decisions"] == 0:
        raise ServedOpeError(f"no decision records in {root} ({joined.events_read} events "
                             "read): the server writes one per homepage it serves; serve pages (with clients "
                             "posting impressions and plays carrying the page's request_id) before judging a "
                             "policy on them")
    if not joined.trials:
        raise ServedOpeError(f"too few trials: {stats['decisions']} decisions but no finished trial: none of their "
                             f"{stats['unexposed']} decided titles was impressed with its page's request_id "
                             f"(unmatched {stats['unmatched']}, late {stats['late']}); need at least "
                             f"{max(MIN_EVAL_TRIALS, n_folds)} to evaluate on")
    arms = ArmTable.of_dataset(dataset_dir)
    progress(f"{stats['decisions']} decisions, {len(joined.trials)} trials, {stats['rewards']} rewards; "
             f"catalog {dataset_dir}")
    result = evaluate_trials(joined.trials, arms, settings, train_share=train_share, seed=seed,
                             n_resamples=n_resamples, n_folds=n_folds, progress=progress)
    return {**result.report, "home": str(Path(home)), "dataset": str(dataset_dir), "source": source,
            "events_read": joined.events_read, "join": stats,
            "join_settings": {"window_ms": settings.window_ms, "allowed_lateness_ms": settings.allowed_lateness_ms}}

