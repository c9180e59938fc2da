"""A serving process's own view of member state (deployments/member_view.py): it follows the
actor's snapshot read-only and the event log, and gives what the actor's service gives."""

from __future__ import annotations

import asyncio
import time

import pyarrow.parquet as pq
import pytest

import deployments.member_view as member_view
from deployments.member_view import LocalMemberView
from deployments.service import Settings
from marquee.home import Paths
from marquee.names import MEMBER_RECENT_LIMIT
from state.member_state import MemberStateError, MemberStateService
from tests.unit.test_member_state import FakeSource, rich_log, titles_table


def _log_reader(handle):
    """Stands in for member_event_source (a Ray call) in these tests: the test's 'event log
    handle' is a FakeSource, which has the same read contract."""
    return handle


@pytest.fixture
def home(tmp_path):
    dataset = tmp_path / "world"
    dataset.mkdir()
    pq.write_table(titles_table(), dataset / "titles.parquet")
    return tmp_path, dataset


def test_a_follower_loads_the_snapshot_catches_up_and_never_writes_it(tmp_path):
    log = rich_log()
    source = FakeSource(log.table())
    owner = MemberStateService(tmp_path, source, titles_table(), snapshot_every=5, start_polling=False)
    snapshot = owner.snapshot_path
    log.add(7, 2, "my_list_add", 50).add(9, 1, "progress", 51, value=0.3)  # after the snapshot
    source.table = log.table()
    owner.sync()

    follower = MemberStateService(tmp_path, source, titles_table(), snapshot_every=1, start_polling=False,
                                  write_snapshots=False)
    assert follower.synced and follower.loaded_seq == 9  # from the snapshot, then the log
    assert follower.get_many([7, 8, 9]) == owner.get_many([7, 8, 9])
    owner_bytes = snapshot.read_bytes()
    follower.sync()
    with pytest.raises(MemberStateError, match="never writes"):
        follower.snapshot()
    assert snapshot.read_bytes() == owner_bytes  # the follower left the owner's file alone


def test_a_service_that_never_reached_its_source_is_not_synced(tmp_path):
    class Down:
        def read(self, since_seq, limit):
            raise ConnectionError("log restarting")

    service = MemberStateService(tmp_path, Down(), start_polling=False, write_snapshots=False)
    assert not service.synced and "log restarting" in service.last_error


def test_the_view_reads_what_the_actor_would_and_follows_the_log(home, monkeypatch):
    root, dataset = home
    monkeypatch.setattr(member_view, "member_event_source", _log_reader)
    log = rich_log()
    source = FakeSource(log.table())
    # the actor's service, as `marquee up` starts it: it owns the snapshot
    actor = MemberStateService(Paths(root).member_state, source, titles_table(), snapshot_every=5,
                               recent_limit=MEMBER_RECENT_LIMIT, start_polling=False)
    view = LocalMemberView(root, dataset, lambda: source, poll_interval_s=0.01)
    try:
        assert asyncio.run(view(7)) == actor.get(7)
        log.add(7, 2, "my_list_add", 60)
        source.table = log.table()
        actor.sync()
        for _ in range(500):  # the view's poller picks the new event up (bounded wait)
            if asyncio.run(view(7)) == actor.get(7):
                break
            time.sleep(0.01)
        assert asyncio.run(view(7)) == actor.get(7)
        assert 2 in asyncio.run(view(7)).my_list
    finally:
        view.stop()


def test_the_view_refuses_to_answer_before_it_has_caught_up(home, monkeypatch):
    root, dataset = home
    monkeypatch.setattr(member_view, "member_event_source", _log_reader)
    view = LocalMemberView(root, dataset, lambda: None, poll_interval_s=10)  # no event log running
    try:
        with pytest.raises(LookupError, match="has not caught up.*event log is not running"):
            asyncio.run(view(7))  # the homepage serves this degraded, not as a brand-new member
    finally:
        view.stop()


def test_settings_name_the_member_state_sources(tmp_path):
    with pytest.raises(ValueError, match="member_state must be one of \\('local', 'actor'\\)"):
        Settings(home=str(tmp_path), dataset=str(tmp_path), member_state="remote")
