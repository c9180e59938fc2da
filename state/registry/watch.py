"""Waiting for the PROMOTED pointer to move: a long-poll for serving replicas (they hot-swap to
what it names). The pointer is one small file replaced by a rename, so polling it is cheap and
needs no lock."""

from __future__ import annotations

import time
from typing import Callable


def wait_for_change(read_version: Callable[[], str | None], since_version: str | None,
                    timeout_s: float = 0.0, poll_s: float = 0.05) -> str | None:
    """Poll `read_version` until it differs from `since_version` or `timeout_s` passed; return
    the version it last read (unchanged after a timeout)."""
    deadline = time.monotonic() + max(timeout_s, 0.0)
    while True:
        current = read_version()
        if current != since_version or time.monotonic() >= deadline:
            return current
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
