"""The log's wire form to followers (state/eventlog/wire.py): the rows a follower decodes are
the rows the log read, whatever the table's shape."""

import pyarrow as pa
import pytest

from marquee.schema import STORED_EVENT_SCHEMA
from state.eventlog.wire import table_from_ipc, table_to_ipc


def _events(n: int) -> pa.Table:
    rows = [{"seq": i, "event_id": f"e-{i}", "member_id": i % 7, "title_id": None if i % 3 else i,
             "type": "play" if i % 2 else "impression", "timestamp": 1_700_000_000_000 + i,
             "payload": None if i % 4 else '{"a":"\u00e9"}'} for i in range(n)]
    columns = {field.name: [row.get(field.name) for row in rows] for field in STORED_EVENT_SCHEMA}
    return pa.table(columns, schema=STORED_EVENT_SCHEMA)


def test_round_trip_keeps_rows_schema_and_nulls():
    table = _events(50)
    back = table_from_ipc(table_to_ipc(table))
    assert back.schema.equals(STORED_EVENT_SCHEMA, check_metadata=True)
    assert back.equals(table)
    assert back.column("title_id").null_count == table.column("title_id").null_count > 0


def test_empty_table_and_slices_round_trip():
    empty = STORED_EVENT_SCHEMA.empty_table()
    assert table_from_ipc(table_to_ipc(empty)).equals(empty)
    table = _events(100)
    part = table.slice(37, 11)  # as the log hands out a WAL batch from the middle
    data = table_to_ipc(part)
    assert table_from_ipc(data).equals(part)
    assert len(data) < len(table_to_ipc(table))  # a slice sends its rows, not its parent's buffers
    chunked = pa.concat_tables([table.slice(0, 10), table.slice(60, 5)])  # compacted + WAL pieces
    assert table_from_ipc(table_to_ipc(chunked)).equals(chunked)


def test_projected_columns_round_trip():
    projected = _events(20).select(["seq", "type", "member_id"])
    assert table_from_ipc(table_to_ipc(projected)).equals(projected)


def test_what_is_not_an_ipc_stream_is_refused_by_name():
    with pytest.raises(TypeError, match="Arrow IPC stream, got Table"):
        table_from_ipc(_events(1))
    with pytest.raises(pa.ArrowInvalid):
        table_from_ipc(b"not arrow")
