"""LongPoll, what a follower of the event log does between catch-ups, and member state's poller
on a source that can be waited on (no Ray: a fake log with a real condition variable)."""

from __future__ import annotations

import threading
import time

import pytest

from state.eventlog.follow import LongPoll
from state.member_state import MemberStateService
from tests.unit.test_member_state import FakeSource, Log


class Waited:
    """wait_beyond as the log actor answers it: at once when `seq` differs from the newest seq,
    else after the whole timeout; the log grows by `grows` (seq, after seconds) if one is set."""

    def __init__(self, last: int = -1):
        self.last, self.calls, self.now, self.grows = last, [], 100.0, None

    def clock(self) -> float:
        return self.now

    def wait_beyond(self, seq: int, timeout_s: float) -> int:
        self.calls.append((seq, timeout_s))
        if self.last == seq:
            if self.grows is not None:
                self.last, after = self.grows
                self.now += after
                self.grows = None
            else:
                self.now += timeout_s
        return self.last


def test_a_source_without_a_long_poll_is_polled_at_the_interval():
    between = LongPoll(object())
    assert not between.available
    assert between.pause(0.2) == 0.2


def test_a_follower_waits_beyond_the_newest_seq_it_was_told():
    source = Waited(last=41)
    between = LongPoll(source, wait_s=1.5, clock=source.clock)
    assert between.pause(0.2) == 0.2  # the log is ahead of "nothing seen": answered at once
    assert source.calls == [(-2, 1.5)] and between.seen == 41
    assert between.pause(0.2) == 0.2  # nothing new since 41: the interval, after 1.5 s waited
    assert source.calls[-1] == (41, 1.5) and source.now == 101.5
    source.grows = (45, 0.7)  # an append 0.7 s into the wait (rows it may not even read)
    assert between.pause(0.2) == 0.0 and between.seen == 45  # waited longer than an interval: read now
    assert between.pause(0.2) == 0.2 and source.calls[-1] == (45, 1.5)
    assert between.waits == 4


def test_wakes_in_quick_succession_read_at_most_once_an_interval():
    """Many replicas' decision flushes wake every follower; it still reads once an interval."""
    source = Waited(last=10)
    between = LongPoll(source, clock=source.clock)
    between.pause(0.2)  # seen: 10
    source.grows = (11, 0.05)  # woken 0.05 s after its last read
    assert between.pause(0.2) == pytest.approx(0.15)
    source.last = 12  # grown before it even asked: answered at once
    assert between.pause(0.2) == pytest.approx(0.2)


def test_errors_reach_the_follower_and_an_older_log_without_the_method_is_polled():
    class Failing:
        def wait_beyond(self, seq, timeout_s):
            raise ConnectionError("log restarting")

    with pytest.raises(ConnectionError):
        LongPoll(Failing()).pause(0.2)

    class Older:
        def wait_beyond(self, seq, timeout_s):
            raise AttributeError("'ActorHandle' object has no attribute 'wait_beyond'")

    between = LongPoll(Older())
    assert between.pause(0.2) == 0.2 and not between.available
    assert between.pause(0.2) == 0.2


def test_wait_s_must_be_positive():
    with pytest.raises(ValueError, match="wait_s"):
        LongPoll(Waited(), wait_s=0)


class WaitableSource(FakeSource):
    """A fake log that can be waited on: `publish` swaps in a longer table and wakes waiters."""

    def __init__(self, log: Log):
        super().__init__(log.table())
        self.last, self.waits = log.seq, 0
        self._grew = threading.Condition()

    def publish(self, log: Log) -> None:
        with self._grew:
            self.table, self.last = log.table(), log.seq
            self._grew.notify_all()

    def wait_beyond(self, seq, timeout_s):
        self.waits += 1
        with self._grew:
            self._grew.wait_for(lambda: self.last != seq, timeout_s)
            return self.last


def test_member_state_waits_on_the_log_and_sees_an_append_at_once(tmp_path):
    log = Log().add(7, 1, "my_list_add", 0)
    source = WaitableSource(log)
    service = MemberStateService(tmp_path, source, poll_interval_s=0.01)
    try:
        deadline = time.monotonic() + 10
        while source.waits < 2 and time.monotonic() < deadline:  # caught up, and now waiting
            time.sleep(0.01)
        reads_before = len(source.calls)
        time.sleep(0.5)  # idle: polling every 0.01 s would read ~50 times
        assert len(source.calls) - reads_before <= 2
        log.add(7, 2, "my_list_add", 1)
        published = time.monotonic()
        source.publish(log)
        while service.applied_seq() < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert service.get(7).my_list == [2, 1]
        assert time.monotonic() - published < 1.0  # woken by the append, not by the 2 s timeout
    finally:
        service.stop()
