"""One daemon thread that calls `refresh` every `poll_s` seconds until stopped: how a replica
follows a hot value (the promoted model, the artwork policy, the experiments file) without a
restart. A refresh that raises is logged and retried at the next poll; the watcher never dies."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, refresh: Callable[[], object], poll_s: float, name: str) -> None:
        self.refresh, self.poll_s, self.name = refresh, poll_s, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=self.name, daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.refresh()
            except Exception:
                log.exception("%s: refresh failed; the next poll tries again", self.name)

    def stop(self) -> None:
        self._stop.set()
