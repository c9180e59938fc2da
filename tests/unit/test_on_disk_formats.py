"""An event log and a member-state snapshot written by the code before the split (commit d695432,
actors/events.py and actors/member_state.py) read with state/eventlog and state/member_state,
and the new code writes the same files. The fixture, tests/fixtures/format_v1, was written once
by that code (generate.py there says how): a log left mid-compaction (segment 0 in Parquet over
two days, segment 1 with a commit record and temp Parquet after a crash, segment 2 sealed in the
WAL, segment 3 active) and a format-"2" snapshot of the same events.

The fixture predates the request_id column (Part 6): every reader reads it with request_id null,
and so are files of that older schema built here (OLD_STORED_EVENT_SCHEMA: today's without the
column), for each reader: WAL segments, compacted Parquet, import_table, dataset Parquet."""

from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feature_data import members_table, titles_table

from features.definitions import FeatureSpec, Vocab, partial_aggregate
from marquee.dataset import (
    DatasetError,
    conform,
    conform_events,
    events_dataset,
    load_dataset,
    write_dataset,
    write_events,
)
from marquee.schema import (
    ADDED_EVENT_COLUMNS,
    EVENT_SCHEMA,
    STORED_EVENT_SCHEMA,
    Event,
    decision_event,
    events_to_table,
    parse_decision,
)
from state.eventlog import EventLog
from state.eventlog.layout import LogLayout
from state.eventlog.wal import FILE_HEADER, MAGIC, append_record, read_segment
from state.member_state import MemberState, MemberStateService

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "format_v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RAW_EVENTS = EXPECTED["events"]
OLD_ROWS = [{**row, "request_id": None} for row in EXPECTED["rows"]]  # what the old rows read as now
OLD_STORED_EVENT_SCHEMA = STORED_EVENT_SCHEMA.remove(STORED_EVENT_SCHEMA.get_field_index("request_id"))
OLD_EVENT_SCHEMA = EVENT_SCHEMA.remove(EVENT_SCHEMA.get_field_index("request_id"))


def rows(table: pa.Table) -> list[dict]:
    """Table rows as the fixture's expected.json holds them (timestamps as epoch ms)."""
    ts = table.schema.get_field_index("timestamp")
    return table.set_column(ts, "timestamp", table.column("timestamp").cast(pa.int64())).to_pylist()


def files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "LOCK"}


@pytest.fixture
def old_log(tmp_path) -> Path:
    root = tmp_path / "eventlog"
    shutil.copytree(FIXTURE / "eventlog", root)  # opening rolls the compaction forward: not in place
    return root


def test_an_old_event_log_reads_every_event_once_in_seq_order(old_log):
    with EventLog(old_log) as log:
        recovery = log.stats()["recovery"]
        assert recovery["compactions_rolled_forward"] == 1  # the old commit record was understood
        assert recovery["wal_events_replayed"] == 7  # segments 2 and 3; segment 1 came from Parquet
        assert log.last_seq == 14
        assert rows(log.read(-1, 1000)) == OLD_ROWS
        assert rows(log.read(9, 3)) == OLD_ROWS[10:13]


def test_an_old_event_log_knows_its_ids_and_appends_after_them(old_log):
    old_active = (old_log / "wal" / "000000000003.wal").read_bytes()
    with EventLog(old_log) as log:
        replay = log.append(RAW_EVENTS)
        assert (replay.accepted, replay.duplicates, replay.last_seq) == (0, 15, 14)
        fresh = dict(RAW_EVENTS[0], event_id="fx-new")
        assert log.append([fresh]).last_seq == 15
        # the old active segment's header holds the old schema: the new event went to a new one
        assert log.stats()["active_segment"] == 4
        assert (old_log / "wal" / "000000000003.wal").read_bytes() == old_active
        assert log.compact(include_active=True) == 8  # segments 2, 3 and 4 (the new event)
    with EventLog(old_log) as log:
        assert rows(log.read(-1, 1000))[:15] == OLD_ROWS
        assert log.stats()["wal_events"] == 0
    on_disk = events_dataset(old_log / "events").to_table().sort_by("seq")
    assert on_disk.column("seq").to_pylist() == list(range(16))
    days = {p.parent.name for p in (old_log / "events").glob("day=*/*.parquet")}
    assert days == {"day=2023-11-14", "day=2023-11-15", "day=2023-11-16", "day=2023-11-18"}


def test_the_new_code_writes_the_files_the_old_code_wrote_plus_the_request_id_column(tmp_path):
    """The same appends, seal points and crash as generate.py: the same files under the same
    names, the commit record byte for byte; WAL segments and Parquet files hold the same rows,
    which differ from the old ones only by the added column, all null (the WAL header names the
    schema each segment was written in)."""

    class Crash(Exception):
        pass

    def crash(step):
        if step == "committed":
            raise Crash(step)

    root = tmp_path / "eventlog"
    with EventLog(root, segment_max_events=4) as log:
        log.append(RAW_EVENTS[:4])
        log.compact()
        log.append(RAW_EVENTS[4:8])
        log.append(RAW_EVENTS[8:12])
        log.append(RAW_EVENTS[12:15])
        log.compaction_hook = crash
        with pytest.raises(Crash):
            log.compact()
    old, new = files(FIXTURE / "eventlog"), files(root)
    assert sorted(new) == sorted(old)
    for name, path in old.items():
        if name.endswith(".json"):
            assert new[name].read_bytes() == path.read_bytes(), f"{name} differs from the old format"
        elif name.endswith(".wal"):
            first_seq = 4 * int(Path(name).stem)  # segments of 4 events
            old_read = read_segment(path, first_seq, is_last=False)
            new_read = read_segment(new[name], first_seq, is_last=False)
            assert (old_read.current_format, new_read.current_format) == (False, True)
            assert pa.Table.from_batches(new_read.batches).equals(pa.Table.from_batches(old_read.batches)), name
            assert all(b.column("request_id").null_count == b.num_rows for b in new_read.batches), name
        else:  # Parquet (final or temp): same rows and a null request_id; the writer stamps its version
            table = pq.read_table(new[name])
            assert table.schema == STORED_EVENT_SCHEMA and table.column("request_id").null_count == table.num_rows
            assert table.drop_columns(["request_id"]).equals(pq.read_table(path), check_metadata=True), name


def test_an_old_member_state_snapshot_loads_to_the_same_members():
    path = FIXTURE / "member_state" / "member_state.parquet"
    state = MemberState.load(path)
    assert state.applied_seq == 14
    for member_id, expected in EXPECTED["members"].items():
        assert json.loads(json.dumps(state.get(int(member_id)).to_dict())) == expected
    assert state.to_table().equals(pq.read_table(path), check_metadata=True)  # and saves it unchanged


def test_the_new_state_of_the_old_events_is_the_old_snapshot(old_log):
    with EventLog(old_log) as log:
        state = MemberState()
        state.catch_up(log)
    old = pq.read_table(FIXTURE / "member_state" / "member_state.parquet")
    assert state.to_table().equals(old, check_metadata=True)


def test_the_consumer_resumes_from_an_old_snapshot_without_reapplying(tmp_path, old_log):
    snapshot_dir = tmp_path / "member_state"
    shutil.copytree(FIXTURE / "member_state", snapshot_dir)
    with EventLog(old_log) as log:
        log.append([dict(RAW_EVENTS[1], event_id="fx-later", timestamp=RAW_EVENTS[14]["timestamp"] + 1)])
        service = MemberStateService(snapshot_dir, log, start_polling=False)
        try:
            assert (service.loaded_seq, service.applied_seq()) == (14, 15)
            assert service.get(2).continue_watching[0].updated_ms == RAW_EVENTS[14]["timestamp"] + 1
        finally:
            service.stop()


# -- the request_id column (Part 6): readers of files written before it ----------------------------

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z


def decision(i: int, member_id: int = 1) -> dict:
    return decision_event(f"req-{i}", member_id, T0 + i, "tv", "US", "linucb", 2,
                          [(10, "10-1", 0.5, "top10", 0), (11, "11-0", 0.25, "top10", 1)], {"artwork": "b"},
                          {"hour": 22, "member": [0.5, 0.25]})


def old_rows(n: int, first_seq: int = 0) -> pa.Table:
    """n events in the schema before request_id (STORED_EVENT_SCHEMA without it), seqs from first_seq."""
    events = [Event.parse({"event_id": f"old-{first_seq + i}", "member_id": 1 + i % 3, "title_id": 10 + i,
                           "type": "play", "timestamp": T0 + i, "device": "tv"}) for i in range(n)]
    table = events_to_table(events, list(range(first_seq, first_seq + n))).drop_columns(["request_id"])
    assert table.schema == OLD_STORED_EVENT_SCHEMA
    return table


def write_old_wal(path: Path, table: pa.Table) -> None:
    """A WAL segment as the code before request_id wrote it: its header holds the old schema."""
    schema_bytes = OLD_STORED_EVENT_SCHEMA.serialize().to_pybytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(MAGIC + FILE_HEADER.pack(len(schema_bytes), zlib.crc32(schema_bytes)) + schema_bytes)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        append_record(fd, table.to_batches()[0], table.column("seq")[0].as_py(), fsync=False)
    finally:
        os.close(fd)


def test_the_added_columns_are_nullable_and_at_the_end():
    assert ADDED_EVENT_COLUMNS == ("request_id",)
    field = EVENT_SCHEMA.field("request_id")
    assert field.type == pa.string() and field.nullable
    assert STORED_EVENT_SCHEMA.names[-2:] == ["request_id", "seq"]


def test_an_old_wal_segment_reads_with_null_request_ids_and_is_never_appended_to(tmp_path):
    root = tmp_path / "log"
    old_wal = LogLayout(root).wal_path(0)
    write_old_wal(old_wal, old_rows(3))
    before = old_wal.read_bytes()
    with EventLog(root) as log:
        table = log.read(-1, 100)
        assert table.schema == STORED_EVENT_SCHEMA and table.column("request_id").to_pylist() == [None] * 3
        assert table.column("event_id").to_pylist() == ["old-0", "old-1", "old-2"]
        # new records go to a new segment in today's schema, never after the old header
        assert log.stats()["active_segment"] == 1
        log.append([decision(0), dict(RAW_EVENTS[0], event_id="new-1", request_id="req-0")])
        assert old_wal.read_bytes() == before
    with EventLog(root) as log:  # both segments replay, each by its own header
        table = log.read(-1, 100)
        assert table.column("request_id").to_pylist() == [None, None, None, "req-0", "req-0"]
        assert parse_decision(table.slice(3, 1).to_pylist()[0]).items[1].propensity == 0.25
        assert log.compact(include_active=True) == 5
    with EventLog(root) as log:
        assert log.read(-1, 100).column("request_id").to_pylist() == [None, None, None, "req-0", "req-0"]


def test_an_old_compacted_segment_reads_with_null_request_ids_beside_new_ones(tmp_path):
    root = tmp_path / "log"
    layout = LogLayout(root)
    layout.make_dirs()
    path = layout.parquet_path("2023-11-14", 0)
    path.parent.mkdir(parents=True)
    pq.write_table(old_rows(4), path)
    with EventLog(root, segment_max_events=2) as log:
        assert log.last_seq == 3 and log.append(RAW_EVENTS[:1]).accepted == 1
        log.append([decision(1)])
        log.compact(include_active=True)
        table = log.read(-1, 100)
        assert table.schema == STORED_EVENT_SCHEMA
        assert table.column("request_id").to_pylist() == [None] * 5 + ["req-1"]
        assert log.read(1, 2).column("event_id").to_pylist() == ["old-2", "old-3"]  # a slice of the old file
        replay = log.append([{"event_id": "old-2", "member_id": 1, "title_id": 1, "type": "play", "timestamp": T0}])
        assert replay.duplicates == 1  # the seen-id index was rebuilt from the old file
    on_disk = events_dataset(root / "events").to_table().sort_by("seq")
    assert on_disk.column("request_id").to_pylist() == [None] * 5 + ["req-1"]


def test_import_table_takes_history_of_the_old_schema(tmp_path):
    history = old_rows(5).drop_columns(["seq"])
    assert history.schema == OLD_EVENT_SCHEMA
    with EventLog(tmp_path / "log") as log:
        result = log.import_table(history)
        assert (result.accepted, result.rejected) == (5, [])
        assert log.read(-1, 100).column("request_id").null_count == 5
        assert log.import_table(history).duplicates == 5


def test_dataset_events_of_the_old_schema_read_with_null_request_ids(tmp_path):
    old_day = tmp_path / "events" / "day=2023-11-14"
    old_day.mkdir(parents=True)
    pq.write_table(old_rows(3), old_day / "part-0.parquet")  # the layout of an old dataset
    new = conform_events(events_to_table([Event.parse(decision(7))], [3]))
    write_events(new, tmp_path / "events", basename="part-new-{i}.parquet")
    table = events_dataset(tmp_path / "events").to_table().sort_by("seq")
    assert table.column("request_id").to_pylist() == [None, None, None, "req-7"]
    assert events_dataset(tmp_path / "events").to_table(columns=["request_id"]).num_rows == 4
    # writing old-schema rows (a producer of before) fills the column with nulls
    assert write_events(old_rows(2, first_seq=10), tmp_path / "more") == 2
    assert events_dataset(tmp_path / "more").to_table().column("request_id").null_count == 2


def test_a_whole_old_dataset_loads_and_its_events_read(tmp_path):
    out = tmp_path / "ds"
    artwork = pa.table({"artwork_id": ["10-1"], "title_id": pa.array([10], pa.int64()), "theme": ["action"]})
    write_dataset(out, titles=titles_table({10: ["Drama"], 11: ["Comedy"], 12: ["Drama"]}), artwork=artwork,
                  members=members_table({1: "US", 2: "FR", 3: "US"}), events=old_rows(3), manifest={"source": "t"})
    for part in (out / "events").rglob("*.parquet"):  # rewrite it as the old code wrote it
        pq.write_table(pq.read_table(part).drop_columns(["request_id"]), part)
    events = load_dataset(out).events()
    assert events.column("request_id").null_count == 3 and events.column("event_id").null_count == 0


def test_conform_fills_only_the_added_event_columns():
    assert conform_events(old_rows(2)).column("request_id").null_count == 2
    with pytest.raises(DatasetError, match="missing column"):
        conform(old_rows(2), STORED_EVENT_SCHEMA, "events")  # other tables: a missing column is an error
    with pytest.raises(DatasetError, match="missing column.*country"):
        conform_events(old_rows(2).drop_columns(["country"]))


def test_features_of_old_schema_events_equal_those_of_the_same_events_today():
    vocab, spec = Vocab.from_tables(titles_table({10: ["Drama"], 11: ["Comedy"], 12: ["Drama"]})), FeatureSpec()
    old = partial_aggregate(old_rows(3), vocab, spec)
    new = partial_aggregate(conform_events(old_rows(3)), vocab, spec)
    assert all(old[kind].equals(new[kind]) for kind in old)
