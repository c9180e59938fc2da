"""An event log and a member-state snapshot written by the code before the split (commit d695432,
actors/events.py and actors/member_state.py) read with state/eventlog and state/member_state,
and the new code writes the same files. The fixture, tests/fixtures/format_v1, was written once
by that code (generate.py there says how): a log left mid-compaction (segment 0 in Parquet over
two days, segment 1 with a commit record and temp Parquet after a crash, segment 2 sealed in the
WAL, segment 3 active) and a format-"2" snapshot of the same events."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from marquee.dataset import events_dataset
from state.eventlog import EventLog
from state.member_state import MemberState, MemberStateService

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "format_v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RAW_EVENTS = EXPECTED["events"]


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
        assert rows(log.read(-1, 1000)) == EXPECTED["rows"]
        assert rows(log.read(9, 3)) == EXPECTED["rows"][10:13]


def test_an_old_event_log_knows_its_ids_and_appends_after_them(old_log):
    with EventLog(old_log) as log:
        replay = log.append(RAW_EVENTS)
        assert (replay.accepted, replay.duplicates, replay.last_seq) == (0, 15, 14)
        fresh = dict(RAW_EVENTS[0], event_id="fx-new")
        assert log.append([fresh]).last_seq == 15
        assert log.compact(include_active=True) == 8  # segments 2 and 3 (with the new event)
    with EventLog(old_log) as log:
        assert rows(log.read(-1, 1000))[:15] == EXPECTED["rows"]
        assert log.stats()["wal_events"] == 0
    on_disk = events_dataset(old_log / "events").to_table().sort_by("seq")
    assert on_disk.column("seq").to_pylist() == list(range(16))
    days = {p.parent.name for p in (old_log / "events").glob("day=*/*.parquet")}
    assert days == {"day=2023-11-14", "day=2023-11-15", "day=2023-11-16", "day=2023-11-18"}


def test_the_new_code_writes_the_files_the_old_code_wrote(tmp_path):
    """The same appends, seal points and crash as generate.py: the WAL segments and the commit
    record are byte for byte the old ones (Arrow IPC bytes are those of the installed pyarrow, the
    version that wrote the fixture), and the Parquet files hold the same rows under the same names."""

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
        if name.endswith(".wal") or name.endswith(".json"):
            assert new[name].read_bytes() == path.read_bytes(), f"{name} differs from the old format"
        else:  # Parquet (final or temp): same schema and rows; the writer stamps its own version
            assert pq.read_table(new[name]).equals(pq.read_table(path), check_metadata=True), name


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
