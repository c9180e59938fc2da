"""What a follower of the log does between two catch-ups: wait on the log when it can, else sleep.

A follower (member state, every replica's member view, the bandit learner) used to read the log
every poll interval whether or not anything had been appended: on an idle cluster, five followers
made ~25 empty actor calls a second, and a new event waited up to one interval to be seen. A
source that offers `wait_beyond(seq, timeout_s) -> last_seq` (the log actor's long poll,
actors/events.py) lets a follower block after each catch-up until the log grows instead: one
call per `wait_s` while nothing happens, and a new event is read as soon as it is durable.

`seen` is the log's newest seq as last reported, not the follower's own applied seq: a follower
that reads only some event types (member state skips the server's decision records) would
otherwise be woken at once by every row it does not read. A wake reads at once only if the
follower's last read was an interval ago, else when it will be: with many replicas each flushing
decision records several times a second, every follower is woken by each flush, and reading at
every wake would make the log's load grow with the square of the replicas; this way a follower
reads at most once an interval, as it did when it polled, and one that was idle reads at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

LONG_POLL_S = 2.0  # longest an idle follower waits in one call (it also bounds how long stop() waits)
MAX_BACKOFF_S = 10.0  # the longest pause after failed catch-ups


class LongPoll:
    """`pause(interval_s)`: the delay before the next catch-up, after waiting on the source for
    the log to grow. Sources without `wait_beyond` always get `interval_s` (plain polling)."""

    def __init__(self, source: Any, wait_s: float = LONG_POLL_S, clock: Callable[[], float] = time.monotonic):
        if not wait_s > 0:
            raise ValueError(f"wait_s must be > 0, got {wait_s!r}")
        self._wait = getattr(source, "wait_beyond", None)
        self.wait_s, self._clock = wait_s, clock
        self.seen = -2  # below any seq (an empty log reports -1): the first wait answers at once
        self.waits = 0  # calls made, for the tests and stats

    @property
    def available(self) -> bool:
        return self._wait is not None

    def pause(self, interval_s: float) -> float:
        """Called right after a catch-up: wait until the log has grown beyond what was last
        seen (at most wait_s). If it grew, read once an interval has passed since that catch-up
        (at once after a longer wait); if not, after interval_s. Errors from the source
        propagate: the follower's own back-off handles them."""
        if self._wait is None:
            return interval_s
        before, read_at = self.seen, self._clock()
        try:
            self.seen = int(self._wait(before, self.wait_s))
        except AttributeError:  # a log actor of an older version, without the long poll: poll it
            self._wait = None
            return interval_s
        self.waits += 1
        if self.seen == before:
            return interval_s
        return max(0.0, interval_s - (self._clock() - read_at))


def follow(source: Any, sync: Callable[[], Any], stop: threading.Event, interval_s: float,
           report: Callable[[str | None], None], log: logging.Logger) -> None:
    """A follower's loop (member state, the bandit learner): catch up, then pause (LongPoll);
    a failed catch-up is reported (`report(message)`, `report(None)` once one succeeds), logged and
    retried after a doubling back-off, so a restarting log never stops the follower."""
    between = LongPoll(source)
    delay = interval_s
    while not stop.wait(delay):
        try:
            sync()
            report(None)
            delay = between.pause(interval_s)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            report(message)
            log.warning("%s: poll failed: %s", log.name, message)
            delay = min(max(delay, interval_s) * 2, MAX_BACKOFF_S)
