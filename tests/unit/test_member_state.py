"""MemberState semantics with tiny hand-built event tables (no Ray)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors import member_state as ms
from actors.member_state import (
    ContinueWatching,
    MemberSnapshot,
    MemberState,
    MemberStateError,
    MemberStateService,
)
from marquee.schema import TITLE_SCHEMA, Event, events_to_table

T0 = 1_700_000_000_000  # a fixed epoch-ms origin; offsets below are in seconds


class Log:
    """Builds STORED_EVENT_SCHEMA tables; seq is assigned in call order, like the event log."""

    def __init__(self):
        self.seq = 0
        self.events: list[Event] = []
        self.seqs: list[int] = []

    def add(self, member, title, etype, at, value=None, episode=None):
        self.seq += 1
        raw = {
            "event_id": f"e{self.seq}", "member_id": member, "title_id": title, "type": etype,
            "timestamp": T0 + at * 1000, "value": value,
            "payload": {"episode": episode} if episode is not None else None,
        }
        self.events.append(Event.parse(raw))
        self.seqs.append(self.seq)
        return self

    def table(self, since: int = 0) -> pa.Table:
        keep = [i for i, s in enumerate(self.seqs) if s > since]
        return events_to_table([self.events[i] for i in keep], [self.seqs[i] for i in keep])


class FakeSource:
    """The event log's reader contract over an in-memory table, counting calls."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.calls: list[tuple[int, int]] = []

    def read(self, since_seq: int, limit: int) -> pa.Table:
        self.calls.append((since_seq, limit))
        rows = self.table.filter(pa.compute.greater(self.table.column("seq"), since_seq))
        return rows.sort_by("seq").slice(0, limit)


def titles_table() -> pa.Table:
    """Movie 1 and 2; series 900 with season 10 (3 episodes) and season 11 (2 episodes)."""
    rows = [
        (1, "movie", None, None, 1), (2, "movie", None, None, 1),
        (10, "series", 900, 1, 3), (11, "series", 900, 2, 2),
    ]
    return pa.table(
        {
            "title_id": [r[0] for r in rows], "name": [f"t{r[0]}" for r in rows],
            "genres": [["drama"]] * len(rows), "release_year": [2000] * len(rows),
            "release_date": [None] * len(rows), "maturity": [0] * len(rows),
            "runtime_min": [90] * len(rows), "countries": [["US"]] * len(rows),
            "kind": [r[1] for r in rows], "series_id": [r[2] for r in rows],
            "season": [r[3] for r in rows], "episodes": [r[4] for r in rows],
        },
        schema=TITLE_SCHEMA,
    )


def state_of(log: Log, **kw) -> MemberState:
    state = MemberState(**kw)
    state.apply(log.table())
    return state


# -- continue watching ----------------------------------------------------------------------------


def test_play_then_progress_enters_continue_watching_with_progress():
    state = state_of(Log().add(7, 1, "play", 0).add(7, 1, "progress", 10, value=0.4))
    assert state.get(7).continue_watching == [ContinueWatching(1, 0.4, T0 + 10_000, None, None)]


def test_play_without_value_keeps_previous_progress_or_zero():
    log = Log().add(7, 1, "progress", 0, value=0.3).add(7, 1, "play", 5).add(7, 2, "play", 6)
    cw = {c.title_id: c.progress for c in state_of(log).get(7).continue_watching}
    assert cw == {1: 0.3, 2: 0.0}


def test_continue_watching_is_ordered_most_recent_first():
    log = Log().add(7, 1, "play", 0).add(7, 2, "play", 5).add(7, 1, "progress", 9, value=0.5)
    assert [c.title_id for c in state_of(log).get(7).continue_watching] == [1, 2]


@pytest.mark.parametrize("finish", [("completion", 1.0), ("progress", 0.95), ("progress", 0.99)])
def test_finishing_a_movie_leaves_continue_watching_and_enters_recently_watched(finish):
    etype, value = finish
    log = Log().add(7, 1, "play", 0).add(7, 2, "play", 1).add(7, 1, etype, 5, value=value)
    snap = state_of(log).get(7)
    assert [c.title_id for c in snap.continue_watching] == [2]
    assert snap.recently_watched[0] == 1


def test_progress_just_below_threshold_stays_in_continue_watching():
    snap = state_of(Log().add(7, 1, "progress", 0, value=0.94)).get(7)
    assert [c.progress for c in snap.continue_watching] == [0.94]


def test_rewatch_after_completion_reenters_at_zero():
    log = Log().add(7, 1, "completion", 0, value=1.0).add(7, 1, "play", 10)
    assert [(c.title_id, c.progress) for c in state_of(log).get(7).continue_watching] == [(1, 0.0)]


def test_completing_an_episode_moves_series_to_next_episode():
    log = Log().add(7, 10, "progress", 0, value=0.5, episode=1).add(7, 10, "completion", 5, value=1.0, episode=1)
    snap = state_of(log, titles=titles_table()).get(7)
    assert snap.continue_watching == [ContinueWatching(10, 0.0, T0 + 5_000, 900, 2)]


def test_completing_the_last_episode_of_a_season_leaves_continue_watching():
    log = Log().add(7, 10, "play", 0, episode=2).add(7, 10, "completion", 5, value=1.0, episode=3)
    snap = state_of(log, titles=titles_table()).get(7)
    assert snap.continue_watching == []
    assert snap.recently_watched == [10]


def test_series_keeps_one_entry_for_the_latest_season_and_episode():
    log = (
        Log().add(7, 10, "progress", 0, value=0.2, episode=3)
        .add(7, 11, "progress", 10, value=0.6, episode=1)
        .add(7, 1, "play", 5)
    )
    snap = state_of(log, titles=titles_table()).get(7)
    assert snap.continue_watching == [
        ContinueWatching(11, 0.6, T0 + 10_000, 900, 1),
        ContinueWatching(1, 0.0, T0 + 5_000, None, None),
    ]


def test_without_titles_an_episode_completion_advances_to_the_next_episode():
    log = Log().add(7, 10, "completion", 0, value=1.0, episode=3)
    assert state_of(log).get(7).continue_watching == [ContinueWatching(10, 0.0, T0, None, 4)]


def test_play_without_episode_resumes_the_episode_in_progress():
    log = Log().add(7, 10, "progress", 0, value=0.7, episode=2).add(7, 10, "play", 9)
    snap = state_of(log, titles=titles_table()).get(7)
    assert snap.continue_watching == [ContinueWatching(10, 0.7, T0 + 9_000, 900, 2)]


# -- out of order, idempotence ----------------------------------------------------------------------


def test_latest_timestamp_wins_for_progress_within_a_batch():
    log = Log().add(7, 1, "progress", 20, value=0.8).add(7, 1, "progress", 10, value=0.3)
    assert [c.progress for c in state_of(log).get(7).continue_watching] == [0.8]


def test_late_older_event_in_a_later_batch_does_not_override():
    log = Log().add(7, 1, "progress", 20, value=0.8).add(7, 2, "completion", 20, value=1.0)
    state = state_of(log)
    log.add(7, 1, "progress", 10, value=0.3).add(7, 2, "play", 5)  # delivered late, happened earlier
    state.apply(log.table(since=2))
    snap = state.get(7)
    assert [(c.title_id, c.progress) for c in snap.continue_watching] == [(1, 0.8)]


def test_reapplying_the_same_rows_changes_nothing():
    log = Log().add(7, 1, "play", 0).add(7, 2, "my_list_add", 1).add(7, 3, "thumb", 2, value=1)
    state = state_of(log)
    before = state.get(7)
    assert state.apply(log.table()) == 0
    assert state.get(7) == before
    assert state.applied_seq == 3


def test_apply_skips_rows_at_or_below_applied_seq_in_a_mixed_batch():
    log = Log().add(7, 1, "my_list_add", 0)
    state = state_of(log)
    log.add(7, 2, "my_list_add", 1)
    assert state.apply(log.table()) == 1
    assert state.get(7).my_list == [2, 1]


def test_a_replayed_row_with_an_old_seq_is_ignored_even_if_its_content_is_new():
    state = state_of(Log().add(7, 1, "my_list_add", 0).add(7, 1, "my_list_remove", 5))
    stale = Log().add(7, 9, "my_list_add", 100)  # seq 1, already applied
    assert state.apply(stale.table()) == 0
    assert state.get(7).my_list == []


# -- my list, thumbs, recently watched ------------------------------------------------------------


def test_my_list_is_most_recent_first_and_latest_wins():
    log = (
        Log().add(7, 1, "my_list_add", 0).add(7, 2, "my_list_add", 1).add(7, 3, "my_list_add", 2)
        .add(7, 2, "my_list_remove", 3).add(7, 3, "my_list_remove", 1)  # older than its add: ignored
    )
    assert state_of(log).get(7).my_list == [3, 1]


def test_readding_moves_a_title_to_the_front_of_my_list():
    log = Log().add(7, 1, "my_list_add", 0).add(7, 2, "my_list_add", 1).add(7, 1, "my_list_add", 2)
    assert state_of(log).get(7).my_list == [1, 2]


def test_thumbs_latest_wins_and_zero_clears():
    log = (
        Log().add(7, 1, "thumb", 0, value=1).add(7, 1, "thumb", 5, value=-1)
        .add(7, 2, "thumb", 0, value=1).add(7, 2, "thumb", 5, value=0)
        .add(7, 3, "thumb", 9, value=-1).add(7, 3, "thumb", 4, value=1)
    )
    assert state_of(log).get(7).thumbs == {1: -1, 3: -1}


def test_recently_watched_is_deduped_most_recent_first_and_bounded():
    log = Log()
    for i, title in enumerate([1, 2, 3, 1, 4, 5, 6]):
        log.add(7, title, "play", i)
    assert state_of(log, recent_limit=3).get(7).recently_watched == [6, 5, 4]
    assert state_of(log).get(7).recently_watched == [6, 5, 4, 1, 3, 2]


def test_recently_watched_stays_correct_when_trimmed_across_batches():
    state, log = MemberState(recent_limit=2), Log()
    for i in range(10):
        log.add(7, 100 + i, "play", 100 + i)
    state.apply(log.table())
    log.add(7, 1, "play", 0).add(7, 50, "play", 500)  # one very old, one newest
    state.apply(log.table(since=10))
    assert state.get(7).recently_watched == [50, 109]


def test_members_are_independent():
    log = Log().add(7, 1, "my_list_add", 0).add(8, 2, "my_list_add", 0).add(8, 3, "thumb", 1, value=1)
    a, b = state_of(log).get_many([7, 8])
    assert (a.my_list, a.thumbs, b.my_list, b.thumbs) == ([1], {}, [2], {3: 1})


def test_unknown_member_gets_an_empty_snapshot():
    state = state_of(Log().add(7, 1, "play", 0))
    assert state.get(12345) == MemberSnapshot(12345, [], [], {}, [], known=False)


def test_impressions_and_searches_make_a_member_known_without_state():
    log = Log().add(7, 1, "impression", 0)
    log.events.append(Event.parse({"event_id": "s", "member_id": 8, "type": "search", "timestamp": T0}))
    log.seqs.append(2)
    state = MemberState()
    assert state.apply(log.table()) == 2
    assert state.get(7) == MemberSnapshot(7, [], [], {}, [], known=True)
    assert state.get(8).known


def test_missing_columns_are_named():
    with pytest.raises(MemberStateError, match="payload, seq"):
        MemberState().apply(Log().add(7, 1, "play", 0).table().drop_columns(["payload", "seq"]))


def test_titles_without_series_columns_are_rejected():
    with pytest.raises(MemberStateError, match="series_id"):
        MemberState(titles=pa.table({"title_id": [1], "episodes": [1]}))


def test_timestamps_may_be_plain_int64_milliseconds():
    table = Log().add(7, 1, "progress", 0, value=0.2).add(7, 1, "progress", 9, value=0.6).table()
    table = table.set_column(4, "timestamp", table.column("timestamp").cast(pa.int64()))
    assert state_of_table(table).get(7).continue_watching[0].progress == 0.6


def state_of_table(table: pa.Table) -> MemberState:
    state = MemberState()
    state.apply(table)
    return state


# -- catch up -----------------------------------------------------------------------------------------


def test_catch_up_pulls_in_batches_until_empty():
    log = Log()
    for i in range(7):
        log.add(i % 2, i, "my_list_add", i)
    source = FakeSource(log.table())
    state = MemberState()
    assert state.catch_up(source, batch=3) == 7
    assert state.applied_seq == 7
    assert source.calls == [(-1, 3), (3, 3), (6, 3), (7, 3)]
    assert state.get(0).my_list == [6, 4, 2, 0]
    assert state.catch_up(source, batch=3) == 0


def test_catch_up_accepts_a_plain_callable():
    source = FakeSource(Log().add(7, 1, "play", 0).table())
    state = MemberState()
    assert state.catch_up(source.read) == 1


def test_catch_up_rejects_a_source_that_ignores_since():
    table = Log().add(7, 1, "play", 0).table()
    state = MemberState()
    state.apply(table)
    with pytest.raises(MemberStateError, match="contract"):
        state.catch_up(lambda since, limit: table)


# -- snapshots --------------------------------------------------------------------------------------


def rich_log() -> Log:
    return (
        Log().add(7, 1, "progress", 0, value=0.4).add(7, 2, "completion", 1, value=1.0)
        .add(7, 10, "completion", 2, value=1.0, episode=1).add(7, 3, "my_list_add", 3)
        .add(7, 4, "my_list_add", 4).add(7, 4, "my_list_remove", 5).add(7, 5, "thumb", 6, value=-1)
        .add(7, 6, "thumb", 6, value=0).add(8, 1, "impression", 7)
    )


def test_save_load_round_trip(tmp_path):
    state = state_of(rich_log(), titles=titles_table(), recent_limit=4)
    state.save(tmp_path / "s.parquet")
    loaded = MemberState.load(tmp_path / "s.parquet", titles=titles_table())
    assert loaded.applied_seq == state.applied_seq == 9
    assert loaded.recent_limit == 4
    assert loaded.get_many([7, 8, 9]) == state.get_many([7, 8, 9])


def test_loaded_state_keeps_its_tombstones(tmp_path):
    """A finished movie stays finished after reload when an older event arrives late."""
    log = Log().add(7, 1, "completion", 10, value=1.0)
    state_of(log).save(tmp_path / "s.parquet")
    loaded = MemberState.load(tmp_path / "s.parquet")
    log.add(7, 1, "progress", 5, value=0.5)
    loaded.apply(log.table(since=1))
    assert loaded.get(7).continue_watching == []


def test_crash_mid_save_leaves_the_old_snapshot_readable(tmp_path, monkeypatch):
    path = tmp_path / "s.parquet"
    old = state_of(Log().add(7, 1, "my_list_add", 0))
    old.save(path)
    newer = state_of(rich_log())

    def crash(table, where, **kw):  # half a file reaches the disk, then the process dies
        where.write(b"PAR1 half a file")
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(ms.pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        newer.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["s.parquet"]  # the temp file is gone
    assert MemberState.load(path).get(7) == old.get(7)


def test_crash_before_rename_leaves_the_old_snapshot_readable(tmp_path, monkeypatch):
    path = tmp_path / "s.parquet"
    old = state_of(Log().add(7, 1, "my_list_add", 0))
    old.save(path)
    monkeypatch.setattr(ms.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
    with pytest.raises(OSError):
        state_of(rich_log()).save(path)
    monkeypatch.undo()
    assert MemberState.load(path).applied_seq == 1


def test_loading_something_else_names_the_problem(tmp_path):
    pq.write_table(pa.table({"x": [1]}), tmp_path / "other.parquet")
    with pytest.raises(MemberStateError, match="format"):
        MemberState.load(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(MemberStateError, match="unreadable"):
        MemberState.load(tmp_path / "junk.parquet")
    with pytest.raises(FileNotFoundError, match="no member-state snapshot"):
        MemberState.load(tmp_path / "absent.parquet")


def test_snapshot_dicts_are_json_ready():
    snap = state_of(rich_log(), titles=titles_table()).get(7)
    assert json.loads(json.dumps(snap.to_dict()))["my_list"] == [3]


# -- the service (polling, snapshot cadence) without Ray -----------------------------------------------


def test_service_catches_up_snapshots_and_rebuilds_after_restart(tmp_path):
    log = rich_log()
    source = FakeSource(log.table())
    service = MemberStateService(tmp_path, source, titles_table(), snapshot_every=5, start_polling=False)
    assert service.applied_seq() == 9
    assert service.info()["snapshot_seq"] == 9  # 9 events >= snapshot_every
    before = service.get_many([7, 8])
    log.add(7, 2, "my_list_add", 50)  # arrives after the snapshot
    source.table = log.table()
    service.sync()
    expected = service.get_many([7, 8])
    assert expected != before

    restarted = MemberStateService(tmp_path, source, titles_table(), snapshot_every=5, start_polling=False)
    assert restarted.loaded_seq == 9  # rebuilt from the snapshot, then caught up from the log
    assert restarted.get_many([7, 8]) == expected


def test_service_poller_applies_new_events(tmp_path):
    log = Log().add(7, 1, "my_list_add", 0)
    source = FakeSource(log.table())
    service = MemberStateService(tmp_path, source, poll_interval_s=0.01)
    try:
        log.add(7, 2, "my_list_add", 1)
        source.table = log.table()
        for _ in range(500):  # wait for the poller (bounded), then assert on behaviour, not time
            if service.applied_seq() == 2:
                break
            service._stop.wait(0.01)
        assert service.get(7).my_list == [2, 1]
    finally:
        service.stop()


def test_service_survives_a_failing_source(tmp_path):
    class Broken:
        def read(self, since, limit):
            raise ConnectionError("log is restarting")

    service = MemberStateService(tmp_path, Broken(), start_polling=False)
    assert "log is restarting" in service.info()["last_error"]
    assert service.get(7).known is False


def test_service_rejects_nonsense_settings(tmp_path):
    with pytest.raises(MemberStateError, match="poll_interval_s"):
        MemberStateService(tmp_path, None, poll_interval_s=0)


def test_importing_the_module_does_not_import_ray():
    import subprocess
    import sys

    code = "import sys, actors.member_state; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
