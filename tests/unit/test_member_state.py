"""MemberState semantics with tiny hand-built event tables (no Ray)."""

from __future__ import annotations

import json
import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marquee.schema import TITLE_SCHEMA, Event, decision_event, events_to_table
from state.member_state import (
    ContinueWatching,
    MemberSnapshot,
    MemberState,
    MemberStateError,
    MemberStateService,
)

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

    def prefer(self, member, genres, at):
        """An onboarding preference event (no title)."""
        self.seq += 1
        raw = {
            "event_id": f"e{self.seq}", "member_id": member, "type": "preference",
            "timestamp": T0 + at * 1000, "payload": {"genres": genres},
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
    assert state.get(7) == MemberSnapshot(7, [], [], {}, [], known=True, first_event_ms=T0)
    assert state.get(8).known


def decision_of(log: Log, member: int, at: int, request_id: str) -> Log:
    """The server's record of a page shown to `member` (titles 1 and 10, with device and country)."""
    log.seq += 1
    log.events.append(Event.parse(decision_event(request_id, member, T0 + at * 1000, "tv", "US", "egreedy", 1,
                                                 [(1, "1-0", 0.5, "trending", 0), (10, "10-1", 0.25, "trending", 1)],
                                                 {}, {"hour": 1})))
    log.seqs.append(log.seq)
    return log


def test_a_decision_changes_no_member_state_but_is_consumed():
    """A page served is nothing the member did: no member becomes known by it, no first-event
    time moves, no register changes; its seq is consumed (catch_up goes on past it)."""
    log = Log().add(7, 1, "progress", 10, value=0.4).add(7, 2, "my_list_add", 11).add(7, 10, "thumb", 12, value=1)
    plain = state_of(log)
    decision_of(log, 7, 0, "r0")  # stamped before anything the member did
    decision_of(log, 7, 20, "r1")
    decision_of(log, 99, 30, "r2")  # a cold-start member shown a page
    state = MemberState()
    assert state.apply(log.table()) == 6 and state.applied_seq == 6
    assert state.get(7) == plain.get(7) and state.get(7).first_event_ms == T0 + 10_000
    assert state.get(7).continue_watching and state.get(7).my_list == [2]  # the member's own events count
    assert state.get(99) == MemberSnapshot(99, [], [], {}, [], known=False)
    assert state.to_table().equals(plain.to_table())  # every register (the metadata's applied_seq aside)


def test_a_batch_of_only_decisions_advances_the_seq_for_catch_up():
    log = Log()
    for i in range(4):
        decision_of(log, 5, i, f"r{i}")
    state = MemberState()
    assert state.catch_up(FakeSource(log.table()), batch=2) == 4  # no "breaks the contract" error
    assert state.applied_seq == 4 and not state.get(5).known


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

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        newer.save(path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["s.parquet"]  # the temp file is gone
    assert MemberState.load(path).get(7) == old.get(7)


def test_crash_before_rename_leaves_the_old_snapshot_readable(tmp_path, monkeypatch):
    path = tmp_path / "s.parquet"
    old = state_of(Log().add(7, 1, "my_list_add", 0))
    old.save(path)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk gone")))
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


# -- serving extras: recent times, first event, played counter, preferences --------------------------


def test_recent_ms_is_parallel_to_recently_watched_most_recent_first():
    log = Log().add(7, 1, "play", 0).add(7, 2, "play", 5).add(7, 3, "play", 3).add(7, 1, "progress", 9, value=0.5)
    snap = state_of(log).get(7)
    assert snap.recently_watched == [1, 2, 3]
    assert snap.recent_ms == [T0 + 9_000, T0 + 5_000, T0 + 3_000]


def test_recent_ms_follows_the_recent_limit():
    log = Log()
    for i in range(6):
        log.add(7, 100 + i, "play", i)
    snap = state_of(log, recent_limit=3).get(7)
    assert snap.recently_watched == [105, 104, 103]
    assert snap.recent_ms == [T0 + 5_000, T0 + 4_000, T0 + 3_000]


def test_first_event_ms_is_the_earliest_event_of_any_type_even_when_late():
    log = Log().add(7, 1, "play", 10).add(7, 2, "impression", 4).add(8, 3, "thumb", 20, value=1)
    state = state_of(log)
    assert (state.get(7).first_event_ms, state.get(8).first_event_ms) == (T0 + 4_000, T0 + 20_000)
    log.prefer(7, ["drama"], 1).add(7, 5, "play", 30)  # an onboarding event delivered late
    state.apply(log.table(since=3))
    assert state.get(7).first_event_ms == T0 + 1_000
    assert state.get(12345).first_event_ms is None


def test_first_event_ms_survives_trimming():
    state, log = MemberState(recent_limit=1), Log()
    for i in range(6):
        log.add(7, 100 + i, "play", i)
    state.apply(log.table())
    assert state.get(7).first_event_ms == T0
    assert state.get(7).recently_watched == [105]


def test_titles_played_counts_distinct_titles_across_playback_types():
    log = (
        Log().add(7, 1, "play", 0).add(7, 1, "progress", 1, value=0.5).add(7, 1, "completion", 2, value=1.0)
        .add(7, 2, "progress", 3, value=0.2).add(7, 3, "completion", 4, value=1.0)
        .add(7, 4, "thumb", 5, value=1).add(7, 5, "my_list_add", 6).add(7, 6, "impression", 7)
    )
    assert state_of(log).get(7).titles_played == 3


def test_titles_played_does_not_shrink_when_recent_is_trimmed():
    state, log = MemberState(recent_limit=2), Log()
    for i in range(10):
        log.add(7, 100 + i, "play", i)
    state.apply(log.table())
    log.add(7, 108, "play", 20).add(7, 200, "play", 21)  # one replay of a recent title, one new
    state.apply(log.table(since=10))
    snap = state.get(7)
    assert snap.recently_watched == [200, 108]
    assert snap.titles_played == 11


def test_titles_played_is_an_upper_bound_after_a_trimmed_title_is_played_again():
    state, log = MemberState(recent_limit=1), Log()
    for i in range(4):
        log.add(7, 100 + i, "play", i)
    state.apply(log.table())  # 100 and 101 are trimmed away
    log.add(7, 100, "play", 10)
    state.apply(log.table(since=4))
    assert state.get(7).titles_played >= 4  # documented: may count title 100 twice


def test_newest_preference_wins_even_when_an_older_one_arrives_later():
    log = Log().prefer(7, ["drama", "comedy"], 10).prefer(7, ["horror"], 20).prefer(7, ["crime"], 15)
    state = state_of(log)
    assert state.get(7).preferred_genres == ["horror"]
    log.prefer(7, ["documentary"], 5)  # older, delivered in a later batch
    state.apply(log.table(since=3))
    assert state.get(7).preferred_genres == ["horror"]
    log.prefer(7, ["anime", "drama"], 30)
    state.apply(log.table(since=4))
    assert state.get(7).preferred_genres == ["anime", "drama"]


def test_preference_ties_on_timestamp_go_to_the_higher_seq():
    log = Log().prefer(7, ["drama"], 10).prefer(7, ["comedy"], 10)
    assert state_of(log).get(7).preferred_genres == ["comedy"]


def test_an_empty_preference_clears_and_duplicates_are_dropped():
    log = Log().prefer(7, ["drama", "comedy", "drama"], 0)
    state = state_of(log)
    assert state.get(7).preferred_genres == ["drama", "comedy"]
    log.prefer(7, [], 5)
    state.apply(log.table(since=1))
    assert state.get(7).preferred_genres == []


def test_preference_without_title_counts_as_applied_and_makes_the_member_known():
    state = MemberState()
    assert state.apply(Log().prefer(9, ["drama"], 0).table()) == 1
    snap = state.get(9)
    assert (snap.known, snap.preferred_genres, snap.titles_played, snap.recently_watched) == (True, ["drama"], 0, [])


def test_a_malformed_bulk_loaded_preference_is_ignored():
    table = Log().prefer(7, ["drama"], 0).prefer(7, ["comedy"], 5).table()
    payload = pa.array(['{"genres":["drama"]}', "not json"], pa.string())
    table = table.set_column(table.schema.get_field_index("payload"), "payload", payload)
    state = state_of_table(table)
    assert state.get(7).preferred_genres == ["drama"]
    assert state.applied_seq == 2


def serving_log() -> Log:
    log = Log().add(7, 1, "impression", 0).prefer(7, ["drama", "comedy"], 1)
    for i in range(8):
        log.add(7, 100 + i, "play", 10 + i)
    return log.prefer(8, ["horror"], 3)


def test_save_load_round_trip_keeps_the_serving_fields(tmp_path):
    state = state_of(serving_log(), recent_limit=2)  # 8 titles played, recent trimmed to 2
    state.save(tmp_path / "s.parquet")
    loaded = MemberState.load(tmp_path / "s.parquet")
    a, b = loaded.get_many([7, 8])
    assert a == state.get(7) and b == state.get(8)
    assert (a.first_event_ms, a.titles_played, a.preferred_genres) == (T0, 8, ["drama", "comedy"])
    assert (a.recently_watched, a.recent_ms) == ([107, 106], [T0 + 17_000, T0 + 16_000])
    assert (b.first_event_ms, b.titles_played, b.preferred_genres) == (T0 + 3_000, 0, ["horror"])


def test_a_loaded_preference_still_loses_to_a_newer_and_beats_an_older_one(tmp_path):
    log = serving_log()
    state_of(log).save(tmp_path / "s.parquet")
    loaded = MemberState.load(tmp_path / "s.parquet")
    log.prefer(7, ["anime"], 0)
    loaded.apply(log.table(since=11))
    assert loaded.get(7).preferred_genres == ["drama", "comedy"]
    log.prefer(7, ["anime"], 50)
    loaded.apply(log.table(since=12))
    assert loaded.get(7).preferred_genres == ["anime"]


def v1_snapshot() -> pa.Table:
    """What the previous version (format "1") wrote: no genres / titles_played columns and a
    known row without a time."""
    rows = [
        (7, "known", None, None, None, None, None, None, None),
        (7, "watch", 1, None, None, 0.4, False, T0, 1),
        (7, "recent", 1, None, None, None, None, T0, 1),
        (7, "recent", 2, None, None, None, None, T0 + 1_000, 2),
        (7, "list", 3, None, None, None, True, T0 + 2_000, 3),
        (7, "thumb", 4, None, None, -1.0, None, T0 + 3_000, 4),
        (8, "known", None, None, None, None, None, None, None),
    ]
    names = ["member_id", "kind", "title_id", "series_id", "episode", "value", "done", "ts", "seq"]
    types = [pa.int64(), pa.string(), pa.int64(), pa.int64(), pa.int64(), pa.float64(), pa.bool_(),
             pa.int64(), pa.int64()]
    schema = pa.schema([pa.field(n, t) for n, t in zip(names, types)]).with_metadata(
        {"marquee.member_state.format": "1", "applied_seq": "5", "recent_limit": "50"}
    )
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)}, schema=schema)


def test_a_format_1_snapshot_loads_with_unknown_new_fields(tmp_path):
    pq.write_table(v1_snapshot(), tmp_path / "v1.parquet")
    state = MemberState.load(tmp_path / "v1.parquet")
    assert state.applied_seq == 5
    a, b = state.get_many([7, 8])
    assert a == MemberSnapshot(
        7, [ContinueWatching(1, 0.4, T0, None, None)], [3], {4: -1}, [2, 1], known=True,
        recent_ms=[T0 + 1_000, T0], first_event_ms=None, titles_played=2, preferred_genres=[],
    )
    assert (b.known, b.first_event_ms, b.titles_played) == (True, None, 0)
    later = Log()
    later.seq = 5
    later.prefer(7, ["drama"], 60).add(7, 9, "play", 61)
    state.apply(later.table())
    a = state.get(7)
    assert (a.preferred_genres, a.titles_played, a.first_event_ms) == (["drama"], 3, T0 + 60_000)


def test_a_snapshot_of_an_unknown_format_is_refused(tmp_path):
    table = v1_snapshot()
    table = table.replace_schema_metadata({**table.schema.metadata, b"marquee.member_state.format": b"9"})
    pq.write_table(table, tmp_path / "v9.parquet")
    with pytest.raises(MemberStateError, match="format '9'"):
        MemberState.load(tmp_path / "v9.parquet")


def test_a_format_2_snapshot_missing_new_columns_is_refused(tmp_path):
    table = state_of(serving_log()).to_table().drop_columns(["genres"])
    pq.write_table(table, tmp_path / "s.parquet")
    with pytest.raises(MemberStateError, match="genres"):
        MemberState.load(tmp_path / "s.parquet")


def test_snapshots_with_serving_fields_pickle_and_are_json_ready():
    snap = state_of(serving_log()).get(7)
    assert pickle.loads(pickle.dumps(snap)) == snap
    assert json.loads(json.dumps(snap.to_dict()))["preferred_genres"] == ["drama", "comedy"]
    assert MemberSnapshot.empty(3).to_dict()["first_event_ms"] is None


def test_service_serves_and_restores_the_serving_fields(tmp_path):
    source = FakeSource(serving_log().table())
    service = MemberStateService(tmp_path, source, snapshot_every=1, recent_limit=3, start_polling=False)
    before = service.get_many([7, 8])
    assert before[0].preferred_genres == ["drama", "comedy"] and before[0].titles_played == 8
    assert service.info()["members"] == 2
    restarted = MemberStateService(tmp_path, source, recent_limit=3, start_polling=False)
    assert restarted.loaded_seq == 11
    assert restarted.get_many([7, 8]) == before
