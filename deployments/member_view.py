"""Member state read inside the serving process: a follower of the event log, not an actor call
per page.

Why: asking the member-state actor for a member's snapshot cost a Ray actor call per homepage
(measured at 8 clients on the single profile: about 1 ms of the actor's CPU and 0.5 ms of the
replica's per page, a tenth of the whole page on 2 cores). A replica instead keeps its own
MemberStateService (state/member_state): it loads the actor's latest snapshot (Parquet, read
only: the actor alone writes it) and follows the event log by sequence number as the actor does,
same event types, same columns, same poll interval, same recent limit, so a read is an in-memory
lookup and gives what the actor gives once both have applied the same sequence number.

What it costs: every replica holds every member's recent state and polls the log; two replicas
may differ by up to a poll (0.2 s), as the actor itself trails the log by a poll. The cluster
profile keeps the actor: at scale the state per replica grows with members, and a node without
the actor's snapshot directory would replay the whole log at start.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

from actors.member_state import member_event_source
from marquee.home import Paths
from marquee.names import MEMBER_RECENT_LIMIT
from state.member_state import MemberStateService, read_titles
from state.member_state.views import MemberSnapshot

MEMBER_STATE_SOURCES = ("local", "actor")  # where a replica reads member state from
# Rows applied per read: a page's read waits on the lock an apply holds, in the event loop's
# thread, so a burst of ingest (or the catch-up at start) is applied in short steps, not in the
# actor's 50,000-row ones.
APPLY_BATCH = 2_000


class _FollowedLog:
    """The event log as the consumer's EventSource, the actor handle resolved at every read (the
    log may start after the replica, or restart)."""

    def __init__(self, log_handle: Callable[[], Any]):
        self.log_handle = log_handle
        self._handle: Any = None
        self._source: Any = None

    def read(self, since_seq: int, limit: int) -> pa.Table:
        return self._current().read(since_seq, limit)

    def wait_beyond(self, seq: int, timeout_s: float) -> int:
        return self._current().wait_beyond(seq, timeout_s)

    def _current(self) -> Any:
        handle = self.log_handle()
        if handle is None:
            raise LookupError("the event log is not running")
        if handle is not self._handle:  # the actor's source, rebuilt only when the handle changes
            self._handle, self._source = handle, member_event_source(handle)
        return self._source


class LocalMemberView:
    """`await view(member_id) -> MemberSnapshot`, the homepage's member reader. Until its first
    catch-up with the log succeeds it raises LookupError (the page is served degraded,
    `member_state`), rather than calling every member new."""

    def __init__(self, home: str | Path, dataset: str | Path, log_handle: Callable[[], Any], *,
                 poll_interval_s: float = 0.2):
        self.service = MemberStateService(
            Paths(Path(home)).member_state, _FollowedLog(log_handle), read_titles(Path(dataset) / "titles.parquet"),
            poll_interval_s=poll_interval_s, recent_limit=MEMBER_RECENT_LIMIT, write_snapshots=False,
            batch=APPLY_BATCH)

    async def __call__(self, member_id: int) -> MemberSnapshot:
        if not self.service.synced:
            raise LookupError(f"member state has not caught up with the event log yet ({self.service.last_error})")
        return self.service.get(member_id)

    def stop(self) -> None:
        self.service.stop()
