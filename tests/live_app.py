"""Helpers for tests against the session's running Serve app (`serve_app`): wait for a
condition, ask every gateway replica through /healthz, read the event-log actor."""

from __future__ import annotations

import os
import textwrap
import time

import httpx
import pyarrow as pa
import ray

from marquee.names import EVENT_LOG_ACTOR, NAMESPACE


def write_followed_file(path, text: str) -> None:
    """Write a file the replicas follow by size and mtime, with an mtime surely new."""
    path.write_text(textwrap.dedent(text))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def wait_for(predicate, timeout_s: float = 30.0, every_s: float = 0.3, what: str = "the condition"):
    """predicate()'s first truthy value within timeout_s, else AssertionError naming `what`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


def all_replicas(client: httpx.Client, check) -> bool:
    """Ask /healthz often enough to see both gateway replicas, each passing `check` on its
    `experiments` status."""
    seen = {}
    for _ in range(30):
        body = client.get("/healthz").json()
        seen[body["pid"]] = check(body.get("experiments") or {})
        if len(seen) >= 2:
            break
    return len(seen) >= 2 and all(seen.values())


def event_log_table() -> pa.Table:
    """Every row of the running system's event log."""
    log = ray.get_actor(EVENT_LOG_ACTOR, namespace=NAMESPACE)
    return ray.get(log.read.remote(-1, 10_000_000))
