"""Member state as a Ray actor: one named, restart-forever actor running a MemberStateService
(state/member_state) that follows the event-log actor by sequence number. A restarted actor
rebuilds itself from its snapshot plus the log. The actor class is built on first use, so
importing this module never imports Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from actors.named import lazy_remote, start_bound_actor
from marquee.home import Paths
from marquee.names import MEMBER_STATE_ACTOR, NAMESPACE
from marquee.schema import CLIENT_EVENT_TYPES
from state.eventlog.wire import table_from_ipc
from state.member_state import MemberStateError, MemberStateService, read_titles
from state.member_state.decode import REQUIRED_COLUMNS
from state.member_state.views import ContinueWatching, MemberSnapshot  # noqa: F401  (for test_homepage)


class RemoteLogSource:
    """Adapts an event-log actor handle (`handle.read_ipc.remote(since, limit, types, columns)`,
    the rows as Arrow IPC bytes) to `EventSource`; `types` / `columns` (None: all) are what this
    follower needs."""

    def __init__(self, handle: Any, timeout_s: float = 60.0, *, types: list[str] | None = None,
                 columns: list[str] | None = None):
        self.handle = handle
        self.timeout_s = timeout_s
        self.types, self.columns = types, columns

    def read(self, since_seq: int, limit: int) -> pa.Table:
        import ray

        data = ray.get(self.handle.read_ipc.remote(since_seq, limit, self.types, self.columns), timeout=self.timeout_s)
        return table_from_ipc(data)

    def wait_beyond(self, seq: int, timeout_s: float) -> int:
        """The log actor's long poll (state/eventlog/follow.py: what an idle follower does)."""
        import ray

        return ray.get(self.handle.wait_beyond.remote(seq, timeout_s), timeout=timeout_s + self.timeout_s)


def member_event_source(handle: Any) -> RemoteLogSource:
    """What member state reads from the log (the actor and every replica-local view alike):
    every event a member made (the server's decision records are most of the log's bytes and
    nothing a member did), and only the columns member state applies."""
    return RemoteLogSource(handle, types=list(CLIENT_EVENT_TYPES), columns=list(REQUIRED_COLUMNS))


class _MemberStateActorImpl(MemberStateService):
    """The body of MemberStateActor: the service, reading from an event-log actor."""

    def __init__(
        self,
        snapshot_dir: str | Path,
        log_handle: Any = None,
        titles_path: str | Path | None = None,
        poll_interval_s: float = 0.2,
        snapshot_every: int = 100_000,
        snapshot_interval_s: float = 30.0,
        recent_limit: int = 50,
        batch: int = 50_000,
    ):
        super().__init__(
            snapshot_dir,
            member_event_source(log_handle) if log_handle is not None else None,
            read_titles(titles_path) if titles_path is not None else None,
            poll_interval_s=poll_interval_s,
            snapshot_every=snapshot_every,
            snapshot_interval_s=snapshot_interval_s,
            batch=batch,
            recent_limit=recent_limit,
        )

    def root(self) -> str:
        """The snapshot directory this actor is bound to."""
        return str(self.snapshot_path.parent)

    def ping(self) -> bool:
        return True


def _build_remote_class():
    import ray

    return ray.remote(_MemberStateActorImpl)


_remote_class = lazy_remote(_build_remote_class)


def __getattr__(name: str):
    """`MemberStateActor` is built on first use so importing this module never imports Ray."""
    if name == "MemberStateActor":
        return _remote_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def start_member_state(
    snapshot_dir: str | Path | None = None,
    log_handle: Any = None,
    titles_path: str | Path | None = None,
    *,
    poll_interval_s: float = 0.2,
    snapshot_every: int = 100_000,
    snapshot_interval_s: float = 30.0,
    name: str = MEMBER_STATE_ACTOR,
    namespace: str = NAMESPACE,
    num_cpus: float = 0.05,
    lifetime: str | None = None,
    recent_limit: int = 50,
) -> Any:
    """Get or create the named member-state actor bound to `snapshot_dir` (default: the home's);
    raises MemberStateError if an actor of that name already serves another directory. It
    restarts forever on failure and rebuilds itself from its snapshot plus the log."""
    if snapshot_dir is None:
        snapshot_dir = Paths().member_state
    return start_bound_actor(
        _remote_class(), snapshot_dir, log_handle,
        str(titles_path) if titles_path is not None else None,
        poll_interval_s, snapshot_every, snapshot_interval_s, recent_limit,
        name=name, namespace=namespace, lifetime=lifetime, error=MemberStateError,
        max_task_retries=3, num_cpus=num_cpus,
    )
