"""The durable, idempotent event log: the system's memory of record, without Ray.

    layout.py       every file of a log's root, named once
    wal.py          the WAL segment format (CRC-checked Arrow record batches) and torn-tail reads
    compaction.py   sealed segments into day-partitioned Parquet, crash-safe by a commit record
    seen_ids.py     idempotency by event id: exact ids for the WAL, 64-bit hashes for Parquet
    log.py          EventLog: append, bulk import, read by seq, compaction, recovery on open

The Ray actor that serves one log to the cluster is actors/events.py.
"""

from state.eventlog.errors import LogCorruption, LogLocked
from state.eventlog.log import AppendResult, EventLog, Rejection

__all__ = ["AppendResult", "EventLog", "LogCorruption", "LogLocked", "Rejection"]
