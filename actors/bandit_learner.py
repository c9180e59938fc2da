"""The nearline artwork learner: follows the event log by sequence number, joins decisions,
impressions and plays into trials (bandits.rewards), updates the artwork policy in batches,
publishes each new version to the policy store (bandits.store) that serving replicas poll, and
checkpoints so a restart resumes exactly where it stopped.

`BanditLearner` is the whole mechanism, without Ray (tests drive it with a fake reader);
`BanditLearnerActor` is a thin named actor running it, placed on the head node and restarted
forever (actors.named), like member state. The actor class is built on first use, so importing
this module never imports Ray.

Why a restart never counts a trial twice. The checkpoint is one file, written atomically: the
last seq applied, the reward join's state at that seq (its open decisions by the seq of their
records, which a restart reads back from the log: the records are most of the join's bytes), the
trials finished but not yet learned, and the policy version holding everything learned before.
The order of work is update -> publish version v -> checkpoint naming v -> prune old versions
(never v). A learner restarted from a checkpoint loads version v from the store, the join and
the pending trials from the checkpoint, and reads the log after its seq, so every trial is
learned once: trials up to the checkpoint are in v or pending, later ones are re-derived from
the log (the join's output does not depend on how the log is read in batches). A crash between
publish and checkpoint leaves a version the restarted learner does not build on; the store
numbers the next version after it, so nothing a replica may have loaded is ever overwritten.

What is learnt from whom. Every trial teaches the policy, whichever policy chose its arm
(experiments may serve several): the learners are reward models of (context, arm class), which
any logging policy's data fits; the propensities stay in the trials for off-policy evaluation.
The context row x is rebuilt from the decision record (the member vector the policy saw, the
title's genres and the shown artwork's theme: bandits.arms.ArmTable.shown_rows), so the learner
trains on exactly what serving scored. With each version it also publishes the members' theme
counts (homepage impressions and plays per artwork theme, from the same trials): the theme
history bandits.context turns into the member vector's theme_share and theme_lift.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.member_state import RemoteLogSource
from actors.named import lazy_remote, start_bound_actor
from bandits.arms import ArmTable
from bandits.context import FEATURE_DIM, MEMBER_DIM, N_THEMES
from bandits.policies import POLICIES, Feedback, Policy, make_policy
from bandits.rewards import (DEFAULT_LATENESS_MS, DEFAULT_MAX_ORPHANS, DEFAULT_WINDOW_MS, JOINED_TYPES, RewardJoin,
                             Trial)
from bandits.store import MemberThemeCounts, PolicyStore
from marquee.durable import write_atomic
from marquee.names import BANDIT_LEARNER_ACTOR, NAMESPACE
from marquee.settings import assign, check_choice, check_int, check_mapping, check_number, fail
from state.eventlog.follow import follow

log = logging.getLogger("marquee.bandit_learner")

CHECKPOINT_FILE = "bandit_learner.json"
CHECKPOINT_FORMAT = 2  # 2: the join's open decisions by seq (bandits.rewards); 1 is still read
READ_FORMATS = (1, 2)


class BanditLearnerError(Exception):
    """The learner cannot resume or run as configured; the message says why."""


class EventReader(Protocol):
    """The event log as the learner reads it (actors/events.py's read); `last_seq` is optional
    (without it the lag is unknown)."""

    def read(self, since_seq: int, limit: int) -> pa.Table: ...


@dataclass(frozen=True)
class LearnerSettings:
    """How the learner batches, checkpoints and joins (validated; messages name the field)."""

    policy: str = "linucb"  # bandits.policies name
    # the policy's parameters (make_policy). Default: what `marquee bench bandit` tuned on its
    # tuning seeds (one model shared by every theme, with theme interactions; alpha 0.03)
    params: dict = field(default_factory=lambda: {"alpha": 0.03, "arm_model": "shared"})
    update_every: int = 1_000  # finished trials per policy update ...
    update_interval_s: float = 30.0  # ... or this long since the last one, with trials pending
    read_batch: int = 20_000  # rows per read of the log
    poll_interval_s: float = 0.5
    # also after every published version. Not more often: a checkpoint holds every open decision
    # (up to the join's max_open), so its cost grows with the traffic; a restart re-reads the
    # log from the checkpoint's seq, so a longer interval costs only catch-up time
    checkpoint_interval_s: float = 60.0
    keep_versions: int = 20  # versions the store keeps (pruned after each checkpoint)
    publish_member_counts: bool = True
    window_ms: int = DEFAULT_WINDOW_MS
    allowed_lateness_ms: int = DEFAULT_LATENESS_MS
    max_orphans: int = DEFAULT_MAX_ORPHANS

    def __post_init__(self) -> None:
        check_choice("policy", self.policy, tuple(POLICIES))
        assign(self, "params", dict(check_mapping("params", self.params, "a dict of policy parameters")))
        if "n_classes" in self.params:
            raise fail("params.n_classes", "no value (the catalog's artwork themes fix it)", self.params["n_classes"])
        make_policy(self.policy, FEATURE_DIM, n_classes=N_THEMES, **self.params)  # refuses a bad parameter now
        for name in ("update_every", "read_batch", "keep_versions"):
            assign(self, name, check_int(name, getattr(self, name), ge=1))
        for name in ("update_interval_s", "poll_interval_s", "checkpoint_interval_s"):
            check_number(name, getattr(self, name), gt=0)
        check_choice("publish_member_counts", self.publish_member_counts, (True, False))
        RewardJoin(self.window_ms, self.allowed_lateness_ms, self.max_orphans)  # validates the three


@dataclass
class LearnerCounters:
    trials_learned: int = 0  # trials fed to the policy
    rewards_learned: int = 0
    unknown_arm: int = 0  # trials whose (title, artwork) the catalog does not hold
    bad_context: int = 0  # trials whose decision kept no usable member vector
    updates: int = 0
    rows_read: int = 0


class BanditLearner:
    """The learner's loop without Ray. `sync()` catches up with the reader; `start()` polls in a
    background thread. Thread-safe. See the module docstring for the checkpoint protocol."""

    def __init__(self, checkpoint_dir: str | Path, store: PolicyStore, arms: ArmTable,
                 reader: EventReader | None = None, settings: LearnerSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings or LearnerSettings()
        self.checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_FILE
        self.store, self.arms, self.reader, self.clock = store, arms, reader, clock
        self.counters = LearnerCounters()
        self.last_error: str | None = None
        self._lock = threading.RLock()  # guards the learner's state
        self._pull_lock = threading.Lock()  # one reader of the log at a time (poller or sync)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._theme_counts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._pending: list[Trial] = []
        self.applied_seq = -1
        self.policy_version = 0  # the store version holding what was learned (0: nothing yet)
        self._remove_unfinished_checkpoints()
        if self.checkpoint_path.is_file():
            self._resume()
        else:
            s = self.settings
            self.join = RewardJoin(s.window_ms, s.allowed_lateness_ms, s.max_orphans)
            self.policy = make_policy(s.policy, FEATURE_DIM, n_classes=N_THEMES, **s.params)
        self.loaded_seq = self.applied_seq
        self._last_update = self._last_checkpoint = self.clock()
        self._checkpoint_seq = self.applied_seq

    # -- the loop --------------------------------------------------------------------------------

    def step(self) -> int:
        """One read of the log after applied_seq, joined, learned and checkpointed when due;
        returns the rows read."""
        if self.reader is None:
            return 0
        with self._pull_lock:  # the read itself holds no state lock: stats() answers meanwhile
            since = self.applied_seq
            rows = self.reader.read(since, self.settings.read_batch)
            if self.consume(rows) == 0 and rows.num_rows:
                raise BanditLearnerError(f"event reader returned {rows.num_rows} row(s) with seq <= {since}; "
                                         "it breaks the read(since_seq, limit) contract")
            return rows.num_rows

    def sync(self) -> int:
        """Read until the log has nothing newer; returns applied_seq."""
        while self.step() >= self.settings.read_batch:
            pass
        with self._lock:
            self._maybe_update()
            self._maybe_checkpoint()
        return self.applied_seq

    def consume(self, rows: pa.Table) -> int:
        """Apply log rows (STORED_EVENT_SCHEMA, ascending seq); rows at or below applied_seq are
        skipped (a re-read). Returns the rows applied."""
        with self._lock:
            if rows.num_rows:
                seqs = rows.column("seq")
                if pc.min(seqs).as_py() <= self.applied_seq:
                    rows = rows.filter(pc.greater(seqs, self.applied_seq))
            if rows.num_rows:
                self._pending.extend(self.join.consume(rows))
                self.applied_seq = int(pc.max(rows.column("seq")).as_py())
                self.counters.rows_read += rows.num_rows
            self._maybe_update()
            self._maybe_checkpoint()
            return rows.num_rows

    def advance(self, watermark_ms: int) -> int:
        """Close the windows of an idle log up to `watermark_ms` (server clock); returns the
        trials that finished."""
        with self._lock:
            finished = self.join.advance(watermark_ms)
            self._pending.extend(finished)
            self._maybe_update()
            return len(finished)

    def update(self) -> int | None:
        """Learn every pending trial now and publish; returns the new version (None: nothing
        pending, or no trial the catalog knows)."""
        with self._lock:
            if not self._pending:
                return None
            trials, self._pending = self._pending, []
            feedback, members = self._feedback(trials)
            if feedback is None:  # nothing usable: no new version, but these trials are done
                self.checkpoint()
                return None
            self.policy.update(feedback)
            for member, arm, reward in members:
                counts = self._theme_counts.get(member)
                if counts is None:
                    counts = self._theme_counts[member] = (np.zeros(N_THEMES), np.zeros(N_THEMES))
                counts[0][arm] += 1.0
                counts[1][arm] += reward
            self.counters.trials_learned += len(members)
            self.counters.rewards_learned += int(feedback.reward.sum())
            self.counters.updates += 1
            member_counts = self.member_counts() if self.settings.publish_member_counts else None
            self.policy_version = self.store.publish(
                self.policy, member_counts=member_counts,
                metadata={"seq": self.applied_seq, "trials_learned": self.counters.trials_learned})
            self._last_update = self.clock()
            self.checkpoint()
            return self.policy_version

    def checkpoint(self) -> int:
        """Write the checkpoint now (then prune the store); returns the seq it holds."""
        with self._lock:
            state = {
                "format": CHECKPOINT_FORMAT,
                "seq": self.applied_seq,
                "policy": self.policy.name,
                "policy_version": self.policy_version,
                "join": self.join.to_state(),
                "pending": [t.to_json() for t in self._pending],
                "counters": asdict(self.counters),
                "written_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            }
            self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.checkpoint_path, json.dumps(state, separators=(",", ":")).encode())
            self._checkpoint_seq, self._last_checkpoint = self.applied_seq, self.clock()
            if self.policy_version:
                self.store.prune(self.settings.keep_versions, protect=[self.policy_version])
            return self.applied_seq

    def member_counts(self) -> MemberThemeCounts:
        with self._lock:
            return MemberThemeCounts.from_dict(self._theme_counts, N_THEMES)

    # -- background ------------------------------------------------------------------------------

    def start(self) -> None:
        """Poll the reader every poll_interval_s on a daemon thread (errors back off, are kept
        in last_error and never stop it)."""
        if self._thread is None and self.reader is not None:
            self._thread = threading.Thread(target=self._poll, name="bandit-learner", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _poll(self) -> None:
        follow(self.reader, self.sync, self._stop, self.settings.poll_interval_s, self._report, log)

    def _report(self, error: str | None) -> None:
        self.last_error = error

    # -- stats -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        last = _last_seq(self.reader)
        with self._lock:
            join = self.join.stats.to_dict()
            return {
                **join,
                **asdict(self.counters),
                "policy": self.policy.name,
                "policy_version": self.policy_version,
                "pending_trials": len(self._pending),
                "open_decisions": self.join.open_decisions,
                "orphans": self.join.orphans,
                "watermark_ms": self.join.watermark_ms,
                "members_counted": len(self._theme_counts),
                "applied_seq": self.applied_seq,
                "loaded_seq": self.loaded_seq,
                "checkpoint_seq": self._checkpoint_seq,
                "log_last_seq": last,
                "lag_seq": None if last is None else max(last - self.applied_seq, 0),
                "last_error": self.last_error,
                "pid": os.getpid(),
            }

    # -- internals -------------------------------------------------------------------------------

    def _maybe_update(self) -> None:
        if not self._pending:
            return
        due = len(self._pending) >= self.settings.update_every or \
            self.clock() - self._last_update >= self.settings.update_interval_s
        if due:
            self.update()

    def _maybe_checkpoint(self) -> None:
        if self.applied_seq > self._checkpoint_seq and \
                self.clock() - self._last_checkpoint >= self.settings.checkpoint_interval_s:
            self.checkpoint()

    def _feedback(self, trials: list[Trial]) -> tuple[Feedback | None, list[tuple[int, int, float]]]:
        """The policy's batch from trials (x rebuilt from each decision's member vector), and
        (member, arm class, reward) per trial used."""
        usable, members = [], []
        for trial in trials:
            vector = trial.context.get("member") if isinstance(trial.context, dict) else None
            if not isinstance(vector, list) or len(vector) != MEMBER_DIM:
                self.counters.bad_context += 1
                continue
            usable.append((trial, vector))
        if not usable:
            return None, []
        x, arm, known = self.arms.shown_rows(np.asarray([v for _, v in usable], np.float64),
                                             [t.title_id for t, _ in usable], [t.artwork_id for t, _ in usable])
        self.counters.unknown_arm += int((~known).sum())
        if not known.any():
            return None, []
        reward = np.asarray([t.reward for t, _ in usable])[known]
        members = [(t.member_id, int(a), float(r)) for (t, _), a, r in
                   zip((u for u, k in zip(usable, known) if k), arm[known], reward)]
        return Feedback(x[known], arm[known], reward), members

    def _resume(self) -> None:
        path = self.checkpoint_path
        try:
            state = json.loads(path.read_bytes())
        except ValueError as exc:
            raise BanditLearnerError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(state, dict) or state.get("format") not in READ_FORMATS:
            raise BanditLearnerError(f"{path}: not a bandit-learner checkpoint of format {CHECKPOINT_FORMAT}")
        s = self.settings
        if state["policy"] != s.policy:
            raise BanditLearnerError(
                f"{path}: the checkpoint learns policy {state['policy']!r}, the settings ask for {s.policy!r} "
                "(remove the checkpoint to start the new policy from the log)")
        version = state["policy_version"]
        if version:
            published = self.store.load(version)  # PolicyStoreError names a missing or corrupt file
            learned = {**published.policy.to_state(), **s.params}
            self.policy: Policy = POLICIES[s.policy].from_state(learned)
            counts = published.member_counts
            if counts is not None:
                self._theme_counts = {int(m): (counts.impressions[i].copy(), counts.plays[i].copy())
                                      for i, m in enumerate(counts.member_ids.tolist())}
        else:
            self.policy = make_policy(s.policy, FEATURE_DIM, n_classes=N_THEMES, **s.params)
        try:
            self.join = RewardJoin.from_state(state["join"], self._records(state["join"], int(state["seq"])))
        except ValueError as exc:
            raise BanditLearnerError(f"{path}: the reward join cannot be restored: {exc}") from None
        self._pending = [Trial.from_json(t) for t in state["pending"]]
        self.counters = LearnerCounters(**state["counters"])
        self.applied_seq, self.policy_version = int(state["seq"]), int(version)
        log.info("bandit learner: resumed at seq %d, policy %s version %d", self.applied_seq, s.policy, version)

    def _remove_unfinished_checkpoints(self) -> None:
        """A learner killed while writing its checkpoint leaves the temp file write_atomic renames
        from; this learner is the only writer of its directory and writes nothing yet, so any
        such file is a dead one's."""
        for tmp in self.checkpoint_path.parent.glob(f".{CHECKPOINT_FILE}.*.tmp"):
            tmp.unlink(missing_ok=True)
            log.info("bandit learner: removed an unfinished checkpoint %s", tmp.name)

    def _records(self, join_state: dict, seq: int):
        """The log rows holding the open decisions' records, up to the checkpoint's seq, read a
        batch at a time from the oldest of them (the checkpoint refers to them by seq)."""
        wanted = RewardJoin.decision_seqs(join_state)
        if not wanted:
            return
        if self.reader is None:
            raise BanditLearnerError(f"{self.checkpoint_path}: the checkpoint refers to {len(wanted)} decision "
                                     "record(s) in the event log, and this learner has no reader")
        since = min(wanted) - 1
        while since < seq:
            rows = self.reader.read(since, self.settings.read_batch)
            if rows.num_rows == 0:
                return  # the log ends early: from_state names what is missing
            yield rows
            since = int(pc.max(rows.column("seq")).as_py())


def _last_seq(reader: Any) -> int | None:
    """The reader's last seq: a method (the log actor's client) or a property (an EventLog)."""
    try:
        last = getattr(reader, "last_seq", None)
        return None if last is None else int(last() if callable(last) else last)
    except Exception:  # the log is restarting: the lag is unknown for now
        return None


# -- the actor ----------------------------------------------------------------------------------


class LogActorReader(RemoteLogSource):
    """The event-log actor (actors/events.py) as an EventReader: member state's read, and
    last_seq (for the lag; a short timeout, so stats answer while the log restarts)."""

    def last_seq(self, timeout_s: float = 5.0) -> int:
        import ray

        return ray.get(self.handle.last_seq.remote(), timeout=timeout_s)


class _BanditLearnerActorImpl:
    """The body of BanditLearnerActor: a BanditLearner on the log actor, polling from the start."""

    def __init__(self, checkpoint_dir: str, log_handle: Any, store_dir: str, dataset_dir: str,
                 settings: dict | None = None):
        self._root = str(checkpoint_dir)
        self.learner = BanditLearner(checkpoint_dir, PolicyStore(store_dir), ArmTable.of_dataset(dataset_dir),
                                     LogActorReader(log_handle, types=list(JOINED_TYPES)) if log_handle is not None else None,
                                     LearnerSettings(**(settings or {})))
        try:
            self.learner.sync()
        except Exception as exc:  # keep going: the poller retries
            self.learner.last_error = f"{type(exc).__name__}: {exc}"
        self.learner.start()

    def root(self) -> str:
        return self._root

    def ping(self) -> bool:
        return True

    def sync(self) -> int:
        return self.learner.sync()

    def update(self) -> int | None:
        return self.learner.update()

    def advance(self, watermark_ms: int) -> int:
        return self.learner.advance(watermark_ms)

    def checkpoint(self) -> int:
        return self.learner.checkpoint()

    def stats(self) -> dict[str, Any]:
        return self.learner.stats()

    def policy_version(self) -> int:
        return self.learner.policy_version


def _build_remote_class():
    import ray

    return ray.remote(_BanditLearnerActorImpl)


_remote_class = lazy_remote(_build_remote_class)


def __getattr__(name: str):
    """`BanditLearnerActor` is built on first use so importing this module never imports Ray."""
    if name == "BanditLearnerActor":
        return _remote_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def start_bandit_learner(checkpoint_dir: str | Path, log_handle: Any, store_dir: str | Path,
                         dataset_dir: str | Path, settings: LearnerSettings | dict | None = None, *,
                         name: str = BANDIT_LEARNER_ACTOR, namespace: str = NAMESPACE,
                         lifetime: str | None = None, num_cpus: float = 0.05) -> Any:
    """Get or create the named learner actor bound to `checkpoint_dir`; raises
    BanditLearnerError if an actor of that name already serves another directory. It restarts
    forever and resumes from its checkpoint; pass lifetime="detached" to outlive the driver."""
    if isinstance(settings, LearnerSettings):
        settings = asdict(settings)
    elif settings is not None:
        settings = asdict(LearnerSettings(**settings))  # refused here, not inside the actor
    return start_bound_actor(
        _remote_class(), checkpoint_dir, log_handle, str(Path(store_dir).resolve()),
        str(Path(dataset_dir).resolve()), settings,
        name=name, namespace=namespace, lifetime=lifetime, error=BanditLearnerError,
        max_task_retries=3, num_cpus=num_cpus,
    )
