"""The server's record of what each page decided, written to the event log in small batches.

Every homepage served produces one `decision` event (marquee.schema.decision_event: request id,
member, per title the artwork arm, its propensity and the policy version, the experiment
assignments). The reward join (bandits/rewards.py) takes arm and propensity from these records,
never from what a client posts, so a client cannot forge a propensity.

Why batched and off the request path: one event-log append per page would put an actor call and
an fsync on every homepage (the log acknowledges only after fsync). A replica instead hands the
record to this recorder, which appends what has gathered every `interval_s` (group commit: one
call, one fsync for many pages). The cost per page is building one dict and a list append; the
price is a window: a replica that dies loses at most its last `interval_s` of unwritten records.
Rewards for a page whose record never landed are dropped by the join (counted as `unmatched`),
never credited to a guessed arm. While the log is unreachable records wait (retried with the same
event ids, so a retry that did land is deduplicated by the log) up to `max_pending`; past that
the oldest are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("marquee.decisions")


@dataclass
class RecorderStats:
    recorded: int = 0  # handed to the recorder
    written: int = 0  # acknowledged by the event log (new or already there)
    rejected: int = 0  # refused by the log's validation: a bug in the record's builder, logged
    dropped: int = 0  # dropped because too many waited while the log was unreachable
    flushes: int = 0
    failed_flushes: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class DecisionRecorder:
    """`record(event)` from a request; a background task of the running loop appends batches.

    `log_handle()` returns the event-log actor handle (or None while it is not running); its
    `append.remote(events)` must return an awaitable (a Ray ObjectRef is one)."""

    def __init__(self, log_handle: Callable[[], Any], interval_s: float = 0.25, max_batch: int = 500,
                 max_pending: int = 20_000):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        if max_batch < 1 or max_pending < max_batch:
            raise ValueError(f"need 1 <= max_batch <= max_pending, got {max_batch}, {max_pending}")
        self.log_handle, self.interval_s = log_handle, interval_s
        self.max_batch, self.max_pending = max_batch, max_pending
        self.pending: deque[dict] = deque()
        self.stats = RecorderStats()
        self._task: asyncio.Task | None = None

    def record(self, event: dict) -> None:
        """Queue one decision; never blocks and never raises into the request."""
        self.pending.append(event)
        self.stats.recorded += 1
        while len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.stats.dropped += 1
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._run())
            except RuntimeError:  # no running loop (a synchronous caller): flush() writes it
                pass

    async def _run(self) -> None:
        while self.pending:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    async def flush(self) -> int:
        """Append what is pending, in batches of at most max_batch; returns the events written.
        A failed batch goes back to the front of the queue for the next attempt."""
        written = 0
        while self.pending:
            batch = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
            handle = self.log_handle()
            try:
                if handle is None:
                    raise LookupError("the event log is not running")
                result = await handle.append.remote(batch)
            except Exception as exc:  # keep them for the next round, oldest first
                self.pending.extendleft(reversed(batch))
                self.stats.failed_flushes += 1
                log.warning("decision records not written yet (%d waiting): %s", len(self.pending), exc)
                return written
            rejected = len(getattr(result, "rejected", ()) or ())
            if rejected:
                log.error("the event log refused %d decision record(s): %s", rejected, result.rejected[:3])
            self.stats.flushes += 1
            self.stats.rejected += rejected
            self.stats.written += len(batch) - rejected
            written += len(batch) - rejected
        return written
