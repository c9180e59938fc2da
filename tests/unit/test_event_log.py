"""EventLog without Ray: durability, idempotency, per-event rejection, torn tails, crash-safe
compaction, reads across Parquet and WAL."""

from __future__ import annotations

import collections
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import state.eventlog.seen_ids as seen_ids_module
from marquee.dataset import events_dataset
from marquee.schema import (
    STORED_EVENT_SCHEMA,
    Event,
    EventError,
    decision_event,
    parse_decision,
)
from state.eventlog import AppendResult, EventLog, LogCorruption, LogLocked, Rejection

DAY_MS = 86_400_000
T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def event(i: int, *, day: int = 0, **overrides) -> dict:
    raw = {
        "event_id": f"ev-{i}",
        "member_id": i % 97,
        "title_id": i % 31,
        "type": "play",
        "timestamp": T0 + day * DAY_MS + i,
        "country": "US",
        "device": "tv",
    }
    raw.update(overrides)
    return raw


def batch(start: int, n: int, *, days: int = 1) -> list[dict]:
    return [event(i, day=(i - start) * days // n) for i in range(start, start + n)]


def all_rows(log: EventLog) -> pa.Table:
    return log.read(-1, limit=10**9)


def assert_exactly_once(table: pa.Table, expected_ids: set[str]) -> None:
    ids = table.column("event_id").to_pylist()
    counts = collections.Counter(ids)
    assert [i for i, c in counts.items() if c > 1] == []
    assert set(ids) == expected_ids
    assert table.column("seq").to_pylist() == list(range(table.num_rows))


def wal_files(root: Path) -> list[Path]:
    return sorted((root / "wal").glob("*.wal"))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "eventlog"


# -- appending -----------------------------------------------------------------------------------


def test_accepted_events_get_dense_seqs_from_zero(root):
    with EventLog(root) as log:
        assert log.last_seq == -1
        first = log.append(batch(0, 5))
        second = log.append(batch(5, 3))
        assert (first.accepted, first.last_seq) == (5, 4)
        assert (second.accepted, second.last_seq) == (3, 7)
        table = all_rows(log)
    assert table.schema == STORED_EVENT_SCHEMA
    assert_exactly_once(table, {f"ev-{i}" for i in range(8)})


def test_mixed_batch_keeps_good_events_and_names_each_bad_one(root):
    bad_type = event(1, type="watch")
    missing_member = event(2)
    del missing_member["member_id"]
    bad_thumb = event(4, type="thumb", value=3)
    raw_batch = [event(0), bad_type, missing_member, "not an event", bad_thumb, {"event_id": 7}, event(6)]
    with EventLog(root) as log:
        result = log.append(raw_batch)
        ids = all_rows(log).column("event_id").to_pylist()

    def reason(raw) -> str:
        with pytest.raises(EventError) as info:
            Event.parse(raw)
        return str(info.value)

    assert result.accepted == 2 and result.duplicates == 0 and result.last_seq == 1
    assert result.rejected == [
        Rejection(1, "ev-1", reason(bad_type)),
        Rejection(2, "ev-2", "member_id: required"),
        Rejection(3, None, "event must be an object, got str"),
        Rejection(4, "ev-4", reason(bad_thumb)),
        Rejection(5, None, reason({"event_id": 7})),
    ]
    assert reason(bad_type).startswith("type: expected one of")
    assert ids == ["ev-0", "ev-6"]


def test_an_all_bad_batch_writes_nothing(root):
    with EventLog(root) as log:
        result = log.append([{"event_id": "x"}, 42])
        assert (result.accepted, len(result.rejected), result.last_seq) == (0, 2, -1)
        assert log.stats()["wal_events"] == 0


def test_repeated_id_within_a_batch_is_a_duplicate_of_the_first(root):
    first, again = event(1, member_id=10), event(1, member_id=99)
    with EventLog(root) as log:
        result = log.append([first, again, event(2)])
        table = all_rows(log)
    assert (result.accepted, result.duplicates) == (2, 1)
    assert table.column("member_id").to_pylist() == [10, 2]


def test_replayed_batch_changes_nothing(root):
    events = batch(0, 50)
    with EventLog(root) as log:
        log.append(events)
        replay = log.append(events)
        assert replay == AppendResult(accepted=0, duplicates=50, rejected=[], last_seq=49)
        partly_new = log.append(events[40:] + batch(50, 5))
        assert (partly_new.accepted, partly_new.duplicates, partly_new.last_seq) == (5, 10, 54)
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(55)})


def test_replay_is_detected_after_reopen_and_after_compaction(root):
    events = batch(0, 30, days=3)
    with EventLog(root) as log:
        log.append(events)
    with EventLog(root) as log:
        assert log.append(events).duplicates == 30
        assert log.compact(include_active=True) == 30
        assert log.append(events).duplicates == 30
    with EventLog(root) as log:  # hashed tier rebuilt from Parquet
        assert log.stats()["seen_ids_hashed"] == 30
        result = log.append(events + [event(30)])
        assert (result.accepted, result.duplicates, result.last_seq) == (1, 30, 30)
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(31)})


def test_a_hash_collision_with_a_compacted_id_never_drops_a_new_event(root, monkeypatch):
    # Every id hashes to 0: each new event collides with every compacted one and must be
    # confirmed against the Parquet event ids (not found -> accepted).
    monkeypatch.setattr(seen_ids_module, "id_hashes", lambda ids, n: np.zeros(n, dtype=np.int64))
    with EventLog(root) as log:
        log.append(batch(0, 10))
        log.compact(include_active=True)
        result = log.append(batch(5, 10))
        assert (result.accepted, result.duplicates) == (5, 5)
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(15)})


def test_append_rejects_a_non_list(root):
    with EventLog(root) as log, pytest.raises(TypeError, match="list of event objects"):
        log.append({"event_id": "x"})


def test_works_without_fsync_when_asked(root):
    with EventLog(root, fsync=False) as log:
        log.append(batch(0, 10))
    with EventLog(root, fsync=False) as log:
        assert log.last_seq == 9


def test_one_writer_per_root(root):
    with EventLog(root):
        with pytest.raises(LogLocked, match="another EventLog"):
            EventLog(root, lock_timeout_s=0)
    with EventLog(root, lock_timeout_s=0) as log:  # released on close
        assert log.last_seq == -1


# -- segments, compaction and reads ----------------------------------------------------------------


def test_segments_seal_at_the_limit_and_compact_into_day_partitions(root):
    with EventLog(root, segment_max_events=100) as log:
        for start in range(0, 250, 50):
            log.append(batch(start, 50, days=2))
        stats = log.stats()
        assert (stats["wal_segments"], stats["active_segment_events"]) == (3, 50)
        assert log.compact() == 200
        stats = log.stats()
        assert (stats["compacted_events"], stats["wal_events"], stats["seen_ids_exact"]) == (200, 50, 50)
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(250)})
    table = events_dataset(root / "events").to_table()
    assert table.num_rows == 200
    assert sorted(set(table.column("day").to_pylist())) == ["2023-11-14", "2023-11-15"]
    assert sorted(table.column("seq").to_pylist()) == list(range(200))


def test_auto_compact_rolls_a_segment_when_it_seals(root):
    with EventLog(root, segment_max_events=40, auto_compact=True) as log:
        log.append(batch(0, 30))
        log.append(batch(30, 30))
        assert log.stats()["compacted_events"] == 60
        assert log.stats()["wal_events"] == 0


@pytest.mark.parametrize("since", [-1, 0, 39, 40, 55, 79, 80, 101, 119, 200])
@pytest.mark.parametrize("limit", [1, 7, 45, 1000])
def test_read_spans_parquet_and_wal(tmp_path, since, limit):
    with EventLog(tmp_path / "log", segment_max_events=40) as log:
        for start in range(0, 100, 20):
            log.append(batch(start, 20, days=2))
        log.compact()  # seqs 0..79 in Parquet (two segments), 80..119 in the WAL
        log.append(batch(100, 20, days=2))
        assert (log.stats()["compacted_events"], log.stats()["wal_events"]) == (80, 40)
        table = log.read(since, limit)
    expected = list(range(since + 1, min(since + 1 + limit, 120)))
    assert table.column("seq").to_pylist() == expected
    assert table.column("event_id").to_pylist() == [f"ev-{s}" for s in expected]
    assert table.schema == STORED_EVENT_SCHEMA


@pytest.mark.parametrize("since", [-1, 0, 3, 17, 18, 40, 58, 59])
@pytest.mark.parametrize("limit", [1, 4, 25, 1000])
def test_read_finds_its_batch_among_many_small_wal_batches_and_segments(tmp_path, since, limit):
    """Many one- to three-event appends over several unsealed and sealed WAL segments, and a
    reopen (the index of batch first seqs rebuilt from disk): every read is the same slice."""
    with EventLog(tmp_path / "log", segment_max_events=7) as log:
        i = 0
        while i < 60:
            n = 1 + i % 3
            log.append(batch(i, min(n, 60 - i)))
            i += n
        before = log.read(since, limit)
    with EventLog(tmp_path / "log", segment_max_events=7) as log:
        after = log.read(since, limit)
    expected = list(range(since + 1, min(since + 1 + limit, 60)))
    assert before.column("seq").to_pylist() == expected == after.column("seq").to_pylist()
    assert after.column("event_id").to_pylist() == [f"ev-{s}" for s in expected]


def test_a_follower_reads_only_the_types_and_columns_it_names(tmp_path):
    with EventLog(tmp_path / "log") as log:
        kinds = ["play", "impression", "search", "play", "impression", "impression"]
        log.append([event(i, type=kind, **({"title_id": None} if kind == "search" else {}))
                    for i, kind in enumerate(kinds)])
        plays = log.read(-1, 100, types=["play"], columns=["member_id"])
        assert plays.column_names == ["member_id", "type", "seq"]  # seq and type always come
        # the plays, and the last row read whatever its type: a follower's seq moves past it
        assert plays.column("seq").to_pylist() == [0, 3, 5]
        assert plays.column("type").to_pylist() == ["play", "play", "impression"]
        assert log.read(0, 2, types=["search"]).column("seq").to_pylist() == [2]  # rows 1-2 read
        assert log.read(-1, 100, types=["play", "impression", "search"]).equals(log.read(-1, 100))
        assert log.read(5, 100, types=["play"]).num_rows == 0
        with pytest.raises(ValueError, match=r"columns: unknown column\(s\) \['memberid'\]"):
            log.read(-1, 100, columns=["memberid"])


def test_read_rejects_a_non_positive_limit(root):
    with EventLog(root) as log, pytest.raises(ValueError, match="limit"):
        log.read(-1, 0)


# -- crashes -------------------------------------------------------------------------------------


def _cut_last_record(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "inside header":
        path.write_bytes(data[: _last_record_offset(path) + 5])
    elif how == "inside payload":
        path.write_bytes(data[:-100])
    elif how == "flipped byte":
        data = bytearray(data)
        data[-10] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "garbage appended":
        path.write_bytes(data + b"\x07" * 13)


def _last_record_offset(path: Path) -> int:
    """Offset of the last record: walk the record headers (magic, schema header, records)."""
    data = path.read_bytes()
    head = 8 + 8
    (schema_len,) = struct.unpack_from("<I", data, 8)
    offset, last = head + schema_len, None
    while offset < len(data):
        length = struct.unpack_from("<I", data, offset)[0]
        last, offset = offset, offset + 20 + length
    return last


@pytest.mark.parametrize("how", ["inside header", "inside payload", "flipped byte"])
def test_a_torn_wal_tail_is_truncated_and_the_rest_survives(root, how):
    with EventLog(root) as log:
        log.append(batch(0, 10))
        log.append(batch(10, 10))
        log.append(batch(10, 15))  # 5 new events in the last record
    _cut_last_record(wal_files(root)[-1], how)
    with EventLog(root) as log:
        assert log.last_seq == 19
        assert log.stats()["recovery"]["torn_tail_bytes_truncated"] > 0
        resent = log.append(batch(10, 15))  # the lost, never-acknowledged batch, sent again
        assert (resent.accepted, resent.duplicates, resent.last_seq) == (5, 10, 24)
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(25)})
    with EventLog(root) as log:
        assert log.stats()["recovery"]["torn_tail_bytes_truncated"] == 0
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(25)})


def test_garbage_after_the_last_record_is_truncated(root):
    with EventLog(root) as log:
        log.append(batch(0, 10))
    _cut_last_record(wal_files(root)[-1], "garbage appended")
    with EventLog(root) as log:
        assert log.stats()["recovery"]["torn_tail_bytes_truncated"] == 13
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(10)})


def test_damage_inside_a_sealed_segment_refuses_to_open(root):
    with EventLog(root, segment_max_events=10) as log:
        log.append(batch(0, 10))
        log.append(batch(10, 10))
    sealed = wal_files(root)[0]
    _cut_last_record(sealed, "flipped byte")
    with pytest.raises(LogCorruption, match="sealed segment"):
        EventLog(root, segment_max_events=10)


# (step name, which occurrence): the segment spans two days, so two Parquet files are written
# and renamed.
COMPACTION_STEPS = [
    ("parquet_written", 1),
    ("parquet_written", 2),
    ("committed", 1),
    ("renamed", 1),
    ("renamed", 2),
    ("wal_deleted", 1),
    ("commit_deleted", 1),
]


class SimulatedCrash(Exception):
    pass


@pytest.mark.parametrize("step,occurrence", COMPACTION_STEPS)
def test_a_crash_at_any_compaction_step_loses_and_duplicates_nothing(root, step, occurrence):
    expected = {f"ev-{i}" for i in range(60)}
    log = EventLog(root, segment_max_events=40)
    log.append(batch(0, 40, days=2))  # sealed segment 0
    log.append(batch(40, 20))  # active segment 1
    seen = collections.Counter()

    def crash(name: str) -> None:
        seen[name] += 1
        if name == step and seen[name] == occurrence:
            raise SimulatedCrash(name)

    log.compaction_hook = crash
    with pytest.raises(SimulatedCrash):
        log.compact()
    log.close()  # the process "died": nothing else is cleaned up

    with EventLog(root, segment_max_events=40) as log:
        assert_exactly_once(all_rows(log), expected)
        assert log.append(batch(0, 60)).duplicates == 60
        on_disk = events_dataset(root / "events").to_table().num_rows
        assert on_disk in (0, 40)  # all of the segment in Parquet, or none of it
        assert log.stats()["compacted_events"] == on_disk
        log.compact(include_active=True)
    with EventLog(root, segment_max_events=40) as log:
        assert_exactly_once(all_rows(log), expected)
    table = events_dataset(root / "events").to_table()
    assert sorted(table.column("event_id").to_pylist()) == sorted(expected)
    assert list((root / "compaction").iterdir()) == []
    assert [p.name for p in root.glob("events/day=*/.*")] == []


@pytest.mark.parametrize("step,occurrence", COMPACTION_STEPS)
def test_a_failed_compaction_is_redone_by_the_same_log(root, step, occurrence):
    """An error (disk full, say) that does not kill the process: appends go on, and the next
    compact() finishes the job."""
    expected = {f"ev-{i}" for i in range(70)}
    with EventLog(root, segment_max_events=40) as log:
        log.append(batch(0, 40, days=2))
        failures = collections.Counter()

        def fail_once(name: str) -> None:
            failures[name] += 1
            if name == step and failures[name] == occurrence:
                raise OSError("simulated disk error")

        log.compaction_hook = fail_once
        with pytest.raises(OSError, match="simulated"):
            log.compact()
        assert log.append(batch(40, 30)).accepted == 30
        assert log.compact() == 40
        assert_exactly_once(all_rows(log), expected)
    with EventLog(root, segment_max_events=40) as log:
        assert_exactly_once(all_rows(log), expected)
        assert log.stats()["compacted_events"] == 40
    assert sorted(events_dataset(root / "events").to_table().column("event_id").to_pylist()) == sorted(
        f"ev-{i}" for i in range(40)
    )


def test_auto_compaction_failure_does_not_fail_the_acknowledged_append(root, caplog):
    with EventLog(root, segment_max_events=20, auto_compact=True) as log:
        log.compaction_hook = lambda name: (_ for _ in ()).throw(OSError("simulated disk error"))
        result = log.append(batch(0, 20))
        assert (result.accepted, result.last_seq) == (20, 19)
        assert "compaction failed" in caplog.text
        log.compaction_hook = None
        assert log.compact() == 20
        assert_exactly_once(all_rows(log), {f"ev-{i}" for i in range(20)})


def test_import_table_refuses_rows_append_would_refuse_and_keeps_the_rest(tmp_path):
    """A bulk import holds to the same event rules as append (one definition, checked a column at
    a time): a play without a title and a progress fraction above 1 are named and left out."""
    from marquee.schema import events_to_table

    good = [Event.parse({"event_id": f"g{i}", "member_id": 1, "title_id": i, "type": "play",
                         "timestamp": 1_767_225_600_000 + i}) for i in range(3)]
    table = events_to_table(good)
    rows = table.to_pylist()
    no_title = {**rows[0], "event_id": "no-title", "title_id": None}
    too_far = {**rows[1], "event_id": "too-far", "type": "progress", "value": 1.5}
    bad = pa.Table.from_pylist([no_title, too_far], schema=table.schema)
    log = EventLog(tmp_path / "log", fsync=False)
    result = log.import_table(pa.concat_tables([table, bad]))
    assert result.accepted == 3
    assert [(r.index, r.event_id) for r in result.rejected] == [(3, "no-title"), (4, "too-far")]
    assert "title_id" in result.rejected[0].reason and "value" in result.rejected[1].reason
    assert sorted(log.read(-1).column("event_id").to_pylist()) == ["g0", "g1", "g2"]
    log.close()


def test_import_table_is_durable_ordered_and_idempotent(tmp_path):
    """Bulk history goes through the same WAL and dedupe as append: a second import adds nothing,
    and live events appended afterwards continue the seqs."""
    from marquee.schema import events_to_table

    history = events_to_table([
        Event.parse({"event_id": f"h{i}", "member_id": 1, "title_id": i, "type": "play",
                     "timestamp": 1_767_225_600_000 + (9 - i) * 1000})
        for i in range(10)
    ])
    log = EventLog(tmp_path / "log", fsync=False, segment_max_events=4, auto_compact=True)
    first = log.import_table(history, batch_rows=3)
    assert (first.accepted, first.duplicates, first.last_seq) == (10, 0, 9)
    again = log.import_table(history.slice(2, 5))
    assert (again.accepted, again.duplicates) == (0, 5)
    live = log.append([{"event_id": "live", "member_id": 1, "title_id": 3, "type": "play",
                        "timestamp": 1_767_225_700_000}, {"event_id": "h3"}])
    assert (live.accepted, live.last_seq) == (1, 10)
    log.close()
    reopened = EventLog(tmp_path / "log", fsync=False)
    table = reopened.read(-1)
    assert table.column("seq").to_pylist() == list(range(11))
    assert table.column("event_id").to_pylist() == [f"h{i}" for i in range(9, -1, -1)] + ["live"]
    reopened.close()


# -- decisions and request ids (Part 6) --------------------------------------------------------------


def page_decision(request_id: str, member_id: int = 3, propensity: float = 0.5) -> dict:
    return decision_event(request_id, member_id, T0, "tv", "US", "egreedy", 4,
                          [(1, "1-0", propensity, "trending", 0), (2, "2-1", 1.0, "trending", 1)], {"rows": "A"},
                          {"hour": 22, "member": [0.5]})


def test_the_server_appends_decisions_once_per_request_and_they_read_back(root):
    with EventLog(root) as log:
        first = log.append([page_decision("r1"), page_decision("r2"),
                            event(1, type="impression", request_id="r1"), event(2, request_id="r1")])
        assert (first.accepted, first.rejected) == (4, [])
        retry = log.append([page_decision("r1")])  # the recorder resending after a lost ack
        assert (retry.accepted, retry.duplicates) == (0, 1)
        forged = page_decision("r3")  # decision_event refuses a zero propensity; the log does too
        forged["payload"] = forged["payload"].replace('"1-0",0.5', '"1-0",0.0')
        bad = log.append([forged])
        assert bad.accepted == 0 and bad.rejected[0].reason.startswith("payload.items[0].propensity:")
        log.compact(include_active=True)
    with EventLog(root) as log:
        table = log.read(-1)
    assert table.column("request_id").to_pylist() == ["r1", "r2", "r1", "r1"]
    decisions = [parse_decision(row) for row in table.to_pylist() if row["type"] == "decision"]
    assert [(d.request_id, d.seq, d.item(1).propensity, d.experiments) for d in decisions] == [
        ("r1", 0, 0.5, {"rows": "A"}), ("r2", 1, 0.5, {"rows": "A"})]


def test_a_play_may_not_take_a_decisions_id_in_append_or_import(root):
    from marquee.schema import events_to_table

    forged = event(1, event_id="decision-r1")
    with EventLog(root) as log:
        result = log.append([forged])
        assert result.accepted == 0 and result.rejected[0].reason.startswith("event_id:")
        table = events_to_table([Event.parse(page_decision("r1"))])
        rows = table.to_pylist()
        bad = pa.Table.from_pylist([{**rows[0], "type": "play", "title_id": 1}], schema=table.schema)
        imported = log.import_table(pa.concat_tables([table, bad]))
        assert imported.accepted == 1 and imported.rejected[0].reason.startswith("event_id:")
        assert log.read(-1).column("type").to_pylist() == ["decision"]
