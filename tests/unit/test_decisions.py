"""The decision recorder: batches records off the request path, keeps them while the log is
unreachable, drops the oldest past its bound, and counts what the log refused."""

import asyncio
from types import SimpleNamespace

import pytest

from deployments.decisions import DecisionRecorder


class FakeLog:
    def __init__(self, fail: int = 0, reject: int = 0):
        self.batches: list[list[dict]] = []
        self.fail, self.reject = fail, reject
        self.append = SimpleNamespace(remote=self._append)

    async def _append(self, events):
        if self.fail:
            self.fail -= 1
            raise ConnectionError("actor restarting")
        self.batches.append(list(events))
        return SimpleNamespace(accepted=len(events) - self.reject, duplicates=0,
                               rejected=[("x", "bad")] * self.reject)


def events(n, start=0):
    return [{"event_id": f"decision-r{i}", "type": "decision"} for i in range(start, start + n)]


def test_records_gathered_while_waiting_go_out_in_one_append():
    fake = FakeLog()

    async def main():
        recorder = DecisionRecorder(lambda: fake, interval_s=0.01)
        for event in events(30):
            recorder.record(event)
        await asyncio.sleep(0.05)
        return recorder

    recorder = asyncio.run(main())
    assert len(fake.batches) == 1 and [e["event_id"] for e in fake.batches[0]] == [f"decision-r{i}" for i in range(30)]
    assert recorder.stats.written == recorder.stats.recorded == 30 and not recorder.pending


def test_batches_are_capped_and_order_is_kept():
    fake = FakeLog()
    recorder = DecisionRecorder(lambda: fake, max_batch=4, max_pending=100)
    for event in events(10):
        recorder.record(event)  # no running loop: nothing is scheduled
    assert asyncio.run(recorder.flush()) == 10
    assert [len(b) for b in fake.batches] == [4, 4, 2]
    assert [e["event_id"] for b in fake.batches for e in b] == [f"decision-r{i}" for i in range(10)]


def test_a_failed_append_keeps_the_records_for_the_next_flush_in_order():
    fake = FakeLog(fail=1)
    recorder = DecisionRecorder(lambda: fake, max_batch=3)
    for event in events(5):
        recorder.record(event)
    assert asyncio.run(recorder.flush()) == 0
    assert recorder.stats.failed_flushes == 1 and len(recorder.pending) == 5
    assert asyncio.run(recorder.flush()) == 5
    assert [e["event_id"] for b in fake.batches for e in b] == [f"decision-r{i}" for i in range(5)]


def test_no_event_log_yet_keeps_records_and_past_the_bound_drops_the_oldest():
    recorder = DecisionRecorder(lambda: None, max_batch=2, max_pending=4)
    for event in events(6):
        recorder.record(event)
    assert recorder.stats.dropped == 2
    assert asyncio.run(recorder.flush()) == 0
    assert [e["event_id"] for e in recorder.pending] == [f"decision-r{i}" for i in range(2, 6)]


def test_records_the_log_refuses_are_counted_not_written():
    fake = FakeLog(reject=1)
    recorder = DecisionRecorder(lambda: fake)
    for event in events(3):
        recorder.record(event)
    asyncio.run(recorder.flush())
    assert recorder.stats.rejected == 1 and recorder.stats.written == 2


@pytest.mark.parametrize("kwargs, field", [({"interval_s": 0}, "interval_s"), ({"max_batch": 0}, "max_batch"),
                                           ({"max_batch": 10, "max_pending": 5}, "max_pending")])
def test_bad_settings_are_refused_naming_them(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DecisionRecorder(lambda: None, **kwargs)
