"""The consumer that keeps member state current: it follows the event log by sequence number
(a Kafka-style pull, `read(since_seq, limit)`), so a restarted consumer catches up from its
snapshot's seq and nothing is lost when either side restarts. No Ray; actors/member_state.py runs
it as an actor."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from state.eventlog.follow import follow
from state.member_state.errors import MemberStateError
from state.member_state.model import EventSource, MemberState
from state.member_state.snapshot import SNAPSHOT_FILE, write_snapshot
from state.member_state.views import MemberSnapshot

log = logging.getLogger(__name__)


class MemberStateService:
    """MemberState kept current: loads the latest snapshot, catches up from `source`, then a
    background thread polls every `poll_interval_s` and snapshots every `snapshot_every` applied
    events or `snapshot_interval_s` seconds (whichever first). Thread-safe.

    `write_snapshots=False`: a follower of another's snapshot (a serving replica's own view of
    the actor's state): it loads the snapshot and follows the log, and never writes the file.
    `synced` turns True at the first successful catch-up with the source."""

    def __init__(
        self,
        snapshot_dir: str | Path,
        source: EventSource | None = None,
        titles: pa.Table | None = None,
        *,
        poll_interval_s: float = 0.2,
        snapshot_every: int = 100_000,
        snapshot_interval_s: float = 30.0,
        batch: int = 50_000,
        recent_limit: int = 50,
        start_polling: bool = True,
        write_snapshots: bool = True,
    ):
        if poll_interval_s <= 0 or snapshot_every < 1 or snapshot_interval_s <= 0 or batch < 1:
            raise MemberStateError(
                "poll_interval_s, snapshot_interval_s must be > 0 and snapshot_every, batch >= 1; got "
                f"{poll_interval_s}, {snapshot_interval_s}, {snapshot_every}, {batch}"
            )
        self.snapshot_path = Path(snapshot_dir) / SNAPSHOT_FILE
        self._source = source
        self._poll_interval_s = poll_interval_s
        self._snapshot_every = snapshot_every
        self._snapshot_interval_s = snapshot_interval_s
        self._batch = batch
        self._lock = threading.Lock()  # guards the state
        self._pull_lock = threading.Lock()  # one puller at a time (poller or sync)
        self._snapshot_lock = threading.Lock()  # one writer at a time
        self._stop = threading.Event()
        self.last_error: str | None = None
        self.write_snapshots = write_snapshots
        self.synced = False

        if self.snapshot_path.is_file():
            self._state = MemberState.load(self.snapshot_path, titles=titles, recent_limit=recent_limit)
            log.info("member state: loaded snapshot at seq %d", self._state.applied_seq)
        else:
            self._state = MemberState(titles=titles, recent_limit=recent_limit)
        self.loaded_seq = self._state.applied_seq
        self._snapshot_seq = self._state.applied_seq
        self._snapshot_time = time.monotonic()
        if source is not None:
            try:
                self.sync()
            except Exception as exc:  # keep serving what we have; the poller retries
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("member state: initial catch-up failed: %s", self.last_error)
        self._poller: threading.Thread | None = None
        if source is not None and start_polling:
            self._poller = threading.Thread(target=self._poll, name="member-state-poll", daemon=True)
            self._poller.start()

    def get(self, member_id: int) -> MemberSnapshot:
        with self._lock:
            return self._state.get(member_id)

    def get_many(self, member_ids: list[int]) -> list[MemberSnapshot]:
        with self._lock:
            return self._state.get_many(member_ids)

    def applied_seq(self) -> int:
        return self._state.applied_seq

    def apply(self, events: pa.Table) -> int:
        """Apply rows directly (tests, or a bootstrap from a Parquet event dataset)."""
        with self._lock:
            applied = self._state.apply(events)
        self._maybe_snapshot()
        return applied

    def sync(self) -> int:
        """Catch up with the source now; returns applied_seq."""
        if self._source is not None:
            with self._pull_lock:
                while True:
                    since = self._state.applied_seq
                    rows = self._source.read(since, self._batch)
                    if rows.num_rows == 0:
                        break
                    with self._lock:
                        applied = self._state.apply(rows)
                    if applied == 0:
                        raise MemberStateError(
                            f"event source returned {rows.num_rows} row(s) with seq <= {since}; "
                            "it breaks the read(since_seq, limit) contract"
                        )
            self.synced = True
            self._maybe_snapshot()
        return self._state.applied_seq

    def snapshot(self) -> int:
        """Write a snapshot now; returns the applied_seq it holds."""
        if not self.write_snapshots:
            raise MemberStateError(f"this member state follows {self.snapshot_path} and never writes it")
        with self._snapshot_lock:
            with self._lock:
                table = self._state.to_table()
                seq = self._state.applied_seq
            write_snapshot(table, self.snapshot_path)
            self._snapshot_seq, self._snapshot_time = seq, time.monotonic()
        return seq

    def info(self) -> dict[str, Any]:
        return {
            "applied_seq": self._state.applied_seq,
            "loaded_seq": self.loaded_seq,
            "snapshot_seq": self._snapshot_seq,
            "members": self._state.member_count,
            "snapshot_path": str(self.snapshot_path),
            "last_error": self.last_error,
            "pid": os.getpid(),  # chaos tests tell a restarted process from the old one
        }

    def stop(self) -> None:
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=5)

    def _maybe_snapshot(self) -> None:
        if not self.write_snapshots:
            return
        behind = self._state.applied_seq - self._snapshot_seq
        if behind <= 0:
            return
        # seq counts rows in the log, so the seq distance is the number of events since the snapshot
        due = behind >= self._snapshot_every or time.monotonic() - self._snapshot_time >= self._snapshot_interval_s
        if due:
            self.snapshot()

    def _poll(self) -> None:
        follow(self._source, self.sync, self._stop, self._poll_interval_s, self._report, log)

    def _report(self, error: str | None) -> None:
        self.last_error = error
