"""The event-log actor under fire: a producer streams batches while the actor is killed (through
Ray and by a real SIGKILL of its worker process); every acknowledged event must be in the log
exactly once, with dense sequence numbers, before and after compaction."""

from __future__ import annotations

import collections
import os
import signal
import time
import uuid

import pytest

from actors.events import append_with_retry, start_event_log
from actors.member_state import RemoteLogSource
from marquee.dataset import events_dataset

T0 = 1_735_689_600_000
DAY_MS = 86_400_000


def make_batch(k: int, size: int) -> list[dict]:
    return [
        {
            "event_id": f"b{k}-e{j}",
            "member_id": k,
            "title_id": j,
            "type": "impression",
            "timestamp": T0 + (k % 3) * DAY_MS + j,
            "position": j,
            "propensity": 0.5,
        }
        for j in range(size)
    ]


def wait_for_new_pid(ray, handle, old_pid: int, timeout_s: float = 60.0) -> int:
    """ray.kill is asynchronous: the old process may still answer for a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid = ray.get(handle.pid.remote(), timeout=timeout_s)
        if pid != old_pid or time.monotonic() > deadline:
            return pid
        time.sleep(0.05)


def test_killed_actor_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    ray = ray_cluster
    root = tmp_path / "eventlog"
    name = f"event-log-crash-{uuid.uuid4().hex[:8]}"
    # Small segments so compaction (auto, on seal) also happens mid-stream, between the kills.
    handle = start_event_log(root, name=name, namespace="marquee-test", segment_max_events=700)
    batches = [make_batch(k, 100) for k in range(36)]
    kills = {6: "ray.kill", 14: "sigkill", 22: "ray.kill", 30: "sigkill"}
    acknowledged: set[str] = set()
    reported_accepted = 0
    pids = {ray.get(handle.pid.remote())}

    for k, batch in enumerate(batches):
        how = kills.get(k)
        if how is None:
            result = append_with_retry(handle, batch)
        else:
            pid = ray.get(handle.pid.remote())
            ref = handle.append.remote(batch)  # in flight (or queued, or done) when the kill lands
            if how == "sigkill":
                os.kill(pid, signal.SIGKILL)
            else:
                ray.kill(handle, no_restart=False)
            try:
                result = ray.get(ref, timeout=60)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                result = append_with_retry(handle, batch)  # no ack: send the SAME events again
            pids.add(wait_for_new_pid(ray, handle, pid))
        assert result.rejected == []
        assert result.accepted + result.duplicates == len(batch)
        reported_accepted += result.accepted
        acknowledged.update(e["event_id"] for e in batch)

    assert len(pids) == 1 + len(kills), "each kill must have restarted the actor in a new process"
    replay = append_with_retry(handle, batches[3])
    assert (replay.accepted, replay.duplicates) == (0, 100)

    def check(table) -> None:
        ids = table.column("event_id").to_pylist()
        assert [i for i, c in collections.Counter(ids).items() if c > 1] == []
        assert set(ids) == acknowledged
        assert table.column("seq").to_pylist() == list(range(len(ids)))

    table = ray.get(handle.read.remote(-1, 10**9))
    check(table)
    # A batch written just before a kill may come back (after Ray's or our retry) as duplicates:
    # written once, acknowledged once, never counted as accepted twice.
    assert reported_accepted <= table.num_rows == len(acknowledged)
    assert ray.get(handle.last_seq.remote()) == table.num_rows - 1

    # what followers poll with: the same rows as Arrow IPC bytes, from the WAL and, below, from Parquet
    assert RemoteLogSource(handle).read(-1, 10**9).equals(table)
    assert RemoteLogSource(handle, types=["impression"], columns=["member_id"]).read(-1, 10**9).equals(
        ray.get(handle.read.remote(-1, 10**9, ["impression"], ["member_id"])))

    ray.get(handle.compact.remote(include_active=True))
    check(ray.get(handle.read.remote(-1, 10**9)))
    assert RemoteLogSource(handle).read(49, 120).equals(ray.get(handle.read.remote(49, 120)))
    on_disk = events_dataset(root / "events").to_table()
    check(on_disk.sort_by("seq"))
    assert sorted(set(on_disk.column("day").to_pylist())) == ["2025-01-01", "2025-01-02", "2025-01-03"]

    os.kill(ray.get(handle.pid.remote()), signal.SIGKILL)  # recovery from Parquet alone
    check(ray.get(handle.read.remote(-1, 10**9)))
    ray.kill(handle, no_restart=True)


def test_get_or_create_returns_the_running_actor_and_guards_its_root(ray_cluster, tmp_path):
    ray = ray_cluster
    name = f"event-log-named-{uuid.uuid4().hex[:8]}"
    first = start_event_log(tmp_path / "a", name=name, namespace="marquee-test")
    again = start_event_log(tmp_path / "a", name=name, namespace="marquee-test")
    assert ray.get(first.pid.remote()) == ray.get(again.pid.remote())
    with pytest.raises(ValueError, match="already serves"):
        start_event_log(tmp_path / "b", name=name, namespace="marquee-test")
    ray.kill(first, no_restart=True)


def test_append_with_retry_resends_the_same_events_after_a_lost_ack(ray_cluster, tmp_path):
    ray = ray_cluster
    root = tmp_path / "eventlog"
    root.mkdir()
    marker = root / "die-after-write"
    marker.touch()

    class DiesAfterWrite:
        """Dies right after a durable write, before its ack goes out, while the marker exists.
        Defined here so Ray pickles it by value (workers cannot import test modules)."""

        def __init__(self, root: str):
            from state.eventlog import EventLog

            self.log = EventLog(root)

        def append(self, events):
            result = self.log.append(events)
            if marker.exists():
                marker.unlink()
                os._exit(1)
            return result

    # No automatic task retries here: the client helper has to do the retrying.
    handle = ray.remote(DiesAfterWrite).options(max_restarts=-1, max_task_retries=0, num_cpus=0).remote(str(root))
    batch = make_batch(0, 50)
    result = append_with_retry(handle, batch, backoff_s=0.05)
    assert (result.accepted, result.duplicates, result.last_seq) == (0, 50, 49)
    assert not marker.exists()
    ray.kill(handle, no_restart=True)


def test_long_poll_wakes_waiters_on_append_and_never_holds_appends_up(ray_cluster, tmp_path):
    """wait_beyond (what idle followers call) answers at once when the log is ahead, blocks
    while it is not, wakes every waiter when a batch is durable, and runs beside the appends:
    eight followers waiting do not delay a write."""
    ray = ray_cluster
    handle = start_event_log(tmp_path / "eventlog", name=f"event-log-wait-{uuid.uuid4().hex[:8]}",
                             namespace="marquee-test")
    source = RemoteLogSource(handle)
    began = time.monotonic()
    assert source.wait_beyond(-2, 10.0) == -1  # an empty log is ahead of "nothing seen"
    assert time.monotonic() - began < 5.0

    waiters = [handle.wait_beyond.remote(-1, 20.0) for _ in range(8)]
    ready, _ = ray.wait(waiters, num_returns=len(waiters), timeout=0.5)
    assert ready == []  # nothing appended: they wait
    began = time.monotonic()
    assert ray.get(handle.append.remote(make_batch(0, 50)), timeout=10).last_seq == 49
    appended_in = time.monotonic() - began
    assert ray.get(waiters, timeout=10) == [49] * 8
    woken_in = time.monotonic() - began
    assert appended_in < 5.0 and woken_in < 5.0  # not the waiters' 20 s

    began = time.monotonic()
    assert source.wait_beyond(49, 0.5) == 49  # nothing new: back after its own timeout
    assert 0.5 <= time.monotonic() - began < 5.0
    assert source.read(40, 100).column("seq").to_pylist() == list(range(41, 50))
    ray.kill(handle, no_restart=True)
