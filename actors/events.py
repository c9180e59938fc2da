"""The event log as a Ray actor: one named, restart-forever actor owning an EventLog
(state/eventlog) next to its disk, and the client helpers callers use with it. A restarted actor
rebuilds the log from disk; appends are idempotent by event id, so Ray may retry them."""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa

from actors.named import lazy_remote, start_bound_actor
from marquee.dataset import events_dataset
from marquee.names import EVENT_LOG_ACTOR, NAMESPACE
from marquee.schema import EVENT_SCHEMA
from state.eventlog import AppendResult, EventLog
from state.eventlog.wire import table_to_ipc

log = logging.getLogger(__name__)
WAIT_GROUP = "waits"  # the concurrency group of long polls: never queued behind appends, nor they behind it
MAX_WAITERS = 64  # followers waiting at once (each holds one thread of the group while it waits)
MAX_WAIT_S = 30.0  # no call waits longer, whatever it asks


class _EventLogActorImpl:
    """What runs inside the actor: an EventLog rebuilt from disk on every (re)start."""

    def __init__(self, root: str, fsync: bool = True, segment_max_events: int = 200_000, auto_compact: bool = True):
        self._log = EventLog(root, fsync=fsync, segment_max_events=segment_max_events, auto_compact=auto_compact)
        self._grew = threading.Condition()  # notified after every write that may add rows

    def append(self, events: list[dict]) -> AppendResult:
        try:
            return self._log.append(events)
        finally:
            self._notify()

    def wait_beyond(self, seq: int, timeout_s: float) -> int:
        """Long poll for followers (state/eventlog/follow.py): the log's last seq as soon as it
        differs from `seq` (grown; or a log that is not the one `seq` came from), else after
        `timeout_s` (at most MAX_WAIT_S). Runs in its own concurrency group, so the log's other
        methods still run one at a time in the default one and never wait behind it."""
        deadline = time.monotonic() + min(max(float(timeout_s), 0.0), MAX_WAIT_S)
        with self._grew:
            while self._log.last_seq == seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._grew.wait(left)
            return self._log.last_seq

    wait_beyond.__ray_concurrency_group__ = WAIT_GROUP  # what @ray.method(concurrency_group=...) sets

    def _notify(self) -> None:
        with self._grew:
            self._grew.notify_all()

    def read(self, since_seq: int = -1, limit: int = 50_000, types: list[str] | None = None,
             columns: list[str] | None = None) -> pa.Table:
        """EventLog.read: a follower names the types and columns it needs, and nothing else is
        serialized to it."""
        return self._log.read(since_seq, limit, types=types, columns=columns)

    def read_ipc(self, since_seq: int = -1, limit: int = 50_000, types: list[str] | None = None,
                 columns: list[str] | None = None) -> bytes:
        """`read` as one Arrow IPC stream (state/eventlog/wire.py): what followers poll with,
        since Ray's own serialization of a Table costs ~1 ms per call."""
        return table_to_ipc(self.read(since_seq, limit, types, columns))

    def import_events_dir(self, events_dir: str) -> AppendResult:
        """Bulk-load a dataset's day-partitioned events (read here, next to the log's disk)."""
        try:
            return self._log.import_table(events_dataset(events_dir).to_table(columns=EVENT_SCHEMA.names))
        finally:
            self._notify()

    def last_seq(self) -> int:
        return self._log.last_seq

    def compact(self, include_active: bool = False) -> int:
        return self._log.compact(include_active=include_active)

    def stats(self) -> dict:
        return self._log.stats()

    def root(self) -> str:
        return str(self._log.root)

    def pid(self) -> int:
        """The worker process id, so chaos tests can SIGKILL it."""
        return os.getpid()


def _build_remote_class():
    import ray

    # a threaded actor with one thread for everything but the long polls: the default group keeps
    # max_concurrency 1, so the EventLog itself is still only ever called from one thread at a time
    return ray.remote(concurrency_groups={WAIT_GROUP: MAX_WAITERS})(_EventLogActorImpl)


_remote_class = lazy_remote(_build_remote_class)


def __getattr__(name: str):
    if name == "EventLogActor":
        return _remote_class()
    raise AttributeError(name)


def start_event_log(
    root: Path | str,
    *,
    name: str = EVENT_LOG_ACTOR,
    namespace: str = NAMESPACE,
    fsync: bool = True,
    lifetime: str | None = None,
    segment_max_events: int = 200_000,
    auto_compact: bool = True,
    num_cpus: float = 0,
):
    """Get or create the named event-log actor. It restarts forever after a crash and rebuilds
    from disk; in-flight calls are retried by Ray (safe: appends are idempotent). `lifetime` is
    None (dies with the driver) or "detached". num_cpus=0 so it schedules on a busy machine."""
    return start_bound_actor(
        _remote_class(), root, fsync, segment_max_events, auto_compact,
        name=name, namespace=namespace, lifetime=lifetime, max_task_retries=-1, num_cpus=num_cpus)


def append_with_retry(
    handle,
    events: list[dict],
    *,
    attempts: int = 20,
    timeout_s: float | None = 60.0,
    backoff_s: float = 0.1,
    max_backoff_s: float = 2.0,
) -> AppendResult:
    """Append through the actor, retrying the SAME events when the actor dies or the call times
    out. Idempotency by event_id makes a retry of a batch that was in fact written harmless: it
    comes back as duplicates. Raises the last error after `attempts` tries."""
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError

    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        ref = None
        try:
            ref = handle.append.remote(events)
            return ray.get(ref, timeout=timeout_s)
        except (RayActorError, GetTimeoutError) as exc:
            if ref is not None and isinstance(exc, GetTimeoutError):
                try:
                    ray.cancel(ref)  # best effort; if it still runs, the retry is a duplicate
                except Exception:
                    pass
            if attempt == attempts:
                raise
            log.info("append attempt %d failed (%s); retrying", attempt, type(exc).__name__)
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
    raise AssertionError("unreachable")


def result_as_dict(result: AppendResult) -> dict:
    """JSON-ready form of an AppendResult (for the HTTP gateway)."""
    return asdict(result)
