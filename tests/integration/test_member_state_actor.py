"""MemberStateActor on a local Ray cluster: catch-up from a log actor, polling, and a rebuild after
the actor is killed (snapshot + catch-up equals the state before the kill).

The event log is a tiny fake actor of our own that honours the read(since_seq, limit) contract,
so these tests do not depend on actors/events.py.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from actors.member_state import start_member_state
from marquee.names import NAMESPACE
from marquee.schema import Event, events_to_table
from state.member_state import MemberStateError

T0 = 1_700_000_000_000
ROOT = Path(__file__).resolve().parents[2]


def make_events(start_seq: int, count: int) -> pa.Table:
    """Deterministic mix of plays, progress, completions, thumbs and my-list edits for 5 members."""
    kinds = [
        ("play", None), ("progress", 0.5), ("my_list_add", None), ("thumb", 1.0),
        ("completion", 1.0), ("my_list_remove", None), ("progress", 0.2),
    ]
    events, seqs = [], []
    for seq in range(start_seq, start_seq + count):
        etype, value = kinds[seq % len(kinds)]
        events.append(Event.parse({
            "event_id": f"e{seq}", "member_id": seq % 5, "title_id": seq % 11, "type": etype,
            "timestamp": T0 + seq * 1000, "value": value,
        }))
        seqs.append(seq)
    return events_to_table(events, seqs)


@pytest.fixture(scope="module")
def fake_log_class(ray_cluster):
    # Defined here (pickled by value) and free of module globals: workers cannot import tests.
    @ray_cluster.remote(num_cpus=0)
    class FakeLog:
        def __init__(self, empty: pa.Table):
            self.table = empty

        def append(self, table: pa.Table) -> int:
            self.table = pa.concat_tables([self.table, table])
            return self.table.num_rows

        def read(self, since_seq: int, limit: int, types=None, columns=None) -> pa.Table:  # all: a superset
            import pyarrow.compute as pc

            rows = self.table.filter(pc.greater(self.table.column("seq"), since_seq))
            return rows.slice(0, limit)

        def read_ipc(self, since_seq: int, limit: int, types=None, columns=None) -> bytes:  # as the real log
            from state.eventlog.wire import table_to_ipc

            return table_to_ipc(self.read(since_seq, limit, types, columns))

    return FakeLog


def wait_for_seq(ray, actor, seq: int) -> None:
    """Poll the actor until it has applied `seq` (bounded by a count, not a clock)."""
    for _ in range(300):
        if ray.get(actor.applied_seq.remote()) >= seq:
            return
        time.sleep(0.02)
    raise AssertionError(f"member state never reached seq {seq}")


def wait_for_restart(ray, actor, old_pid: int) -> None:
    """ray.kill lands asynchronously: wait until calls reach the restarted process."""
    for _ in range(600):
        if ray.get(actor.info.remote())["pid"] != old_pid:
            return
        time.sleep(0.1)
    raise AssertionError("member state actor was not restarted in a new process")


def test_actor_catches_up_polls_and_rebuilds_after_kill(ray_cluster, fake_log_class, tmp_path):
    ray = ray_cluster
    log = fake_log_class.remote(make_events(1, 0))
    ray.get(log.append.remote(make_events(1, 40)))
    actor = start_member_state(
        tmp_path, log, poll_interval_s=0.05, snapshot_every=25, name="member-state-test-restart",
    )
    assert ray.get(actor.sync.remote()) == 40
    assert ray.get(actor.info.remote())["snapshot_seq"] == 40  # 40 >= snapshot_every

    ray.get(log.append.remote(make_events(41, 10)))  # after the snapshot: only the log has them
    wait_for_seq(ray, actor, 50)  # the background poller picks them up
    members = list(range(6))
    before = ray.get(actor.get_many.remote(members))
    assert [s.known for s in before] == [True] * 5 + [False]
    assert any(s.continue_watching for s in before) and any(s.my_list for s in before)

    old_pid = ray.get(actor.info.remote())["pid"]
    ray.kill(actor, no_restart=False)
    wait_for_restart(ray, actor, old_pid)
    ray.get(actor.sync.remote())  # the new process: snapshot loaded, now catch up from the log
    info = ray.get(actor.info.remote())
    assert info["loaded_seq"] == 40 and info["applied_seq"] == 50  # snapshot, then the log
    assert ray.get(actor.get_many.remote(members)) == before
    ray.kill(actor, no_restart=True)


def test_actor_without_a_log_serves_its_snapshot_and_direct_applies(ray_cluster, tmp_path):
    ray = ray_cluster
    actor = start_member_state(tmp_path, None, name="member-state-test-nolog")
    assert ray.get(actor.apply.remote(make_events(1, 14))) == 14
    assert ray.get(actor.snapshot.remote()) == 14
    expected = ray.get(actor.get.remote(3))
    assert expected.known and ray.get(actor.get.remote(99)).known is False

    old_pid = ray.get(actor.info.remote())["pid"]
    ray.kill(actor, no_restart=False)
    wait_for_restart(ray, actor, old_pid)
    assert ray.get(actor.get.remote(3)) == expected
    ray.kill(actor, no_restart=True)


def test_start_member_state_is_a_named_actor_in_the_marquee_namespace(ray_cluster, tmp_path):
    ray = ray_cluster
    actor = start_member_state(tmp_path, None, name="member-state-test-named")
    ray.get(actor.ping.remote())
    again = start_member_state(tmp_path, None, name="member-state-test-named")  # connects
    assert ray.get(again.applied_seq.remote()) == -1
    found = ray.get_actor("member-state-test-named", namespace=NAMESPACE)
    assert ray.get(found.ping.remote())
    with pytest.raises(MemberStateError, match="already serves"):  # one actor name, one directory
        start_member_state(tmp_path / "elsewhere", None, name="member-state-test-named")
    ray.kill(actor, no_restart=True)


@pytest.mark.parametrize("module", ["actors.member_state", "actors.events", "state.member_state", "state.eventlog"])
def test_importing_a_state_module_does_not_import_ray(module):
    # A fresh interpreter per module (a process start: not a unit test).
    code = f"import sys, {module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} imported ray"
