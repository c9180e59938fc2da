"""Which model version a replica serves, and the hot swap to a new one.

A replica follows the registry's promoted pointer (or a version pinned through user_config).
A new version is loaded and warmed up on a background thread while the old one keeps serving;
the swap is one reference assignment, so no request is dropped or sees half a model. A version
that fails to load is recorded and skipped: the old one stays. So is a version trained on another
catalog than the one this replica serves (`catalog`): it is refused at load, and status() (the
/healthz model block) names both catalogs. A failed version is tried again after a back-off
(RETRY_FIRST_S, doubling up to RETRY_MAX_S), not on every poll: a failure can be passing (a file
read while the disk was full, say), and a replica must not keep an old model for ever because of
one bad read.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from deployments.follower import Follower
from deployments.model import ModelLoadError, ServingModel
from models.bundle import DatasetIdentity
from state.registry import POINTER_FILE, RegistryReader

log = logging.getLogger("marquee.model")
FOLLOW_PROMOTED = "promoted"
RETRY_FIRST_S = 30.0  # a version that failed to load is tried again after this, then twice as long...
RETRY_MAX_S = 600.0  # ...up to this


class ModelHolder:
    def __init__(self, registry_root: str | Path, target: str = FOLLOW_PROMOTED,
                 loader: Callable[..., ServingModel] = ServingModel.load, poll_s: float = 0.5,
                 catalog: DatasetIdentity | None = None, clock: Callable[[], float] = time.monotonic):
        self.registry_root = Path(registry_root)
        self.target = target
        self.catalog = catalog  # what this replica serves; passed to the loader, which refuses others
        self.loader, self.poll_s = loader, poll_s
        self.model: ServingModel | None = None
        self.last_error: str | None = None
        self._failures: dict[str, tuple[int, float]] = {}  # version -> (failures so far, retry at)
        self._clock = clock
        self.swaps = 0
        self._lock = threading.Lock()
        self._follower = Follower(self.refresh, poll_s, "model-watch")

    @property
    def version(self) -> str | None:
        model = self.model
        return model.version if model is not None else None

    def wanted(self) -> str | None:
        if self.target != FOLLOW_PROMOTED:
            return self.target
        if not (self.registry_root / POINTER_FILE).exists():
            return None
        return RegistryReader(self.registry_root).promoted_version()

    def retarget(self, target: str) -> None:
        """Follow the promoted pointer ("promoted") or pin a version; takes effect on the next
        refresh (call refresh() to apply it now)."""
        if target != self.target:
            self._failures.clear()
        self.target = target

    @property
    def failed(self) -> set[str]:
        """The versions that failed to load (each retried after its back-off)."""
        return set(self._failures)

    def refresh(self) -> bool:
        """Load the wanted version if it differs from the served one; True if it swapped."""
        with self._lock:
            try:
                wanted = self.wanted()
            except Exception as exc:
                self.last_error = f"registry unreadable: {exc}"
                return False
            if wanted is None or wanted == self.version:
                return False
            if wanted in self._failures and self._clock() < self._failures[wanted][1]:
                return False
            started = time.monotonic()
            try:
                model = self.loader(self.registry_root, wanted, catalog=self.catalog)
            except ModelLoadError as exc:
                count = self._failures.get(wanted, (0, 0.0))[0] + 1
                delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (count - 1))
                self._failures[wanted] = (count, self._clock() + delay)
                self.last_error = str(exc)
                log.error("model %s failed to load (%d time(s); next try in %.0f s); still serving %s: %s",
                          wanted, count, delay, self.version, exc)
                return False
            self._failures.pop(wanted, None)
            self.model = model  # the swap: requests in flight keep the object they already hold
            self.swaps += 1
            self.last_error = None
            refreeze_gc()
            log.info("serving model %s (loaded in %.2f s)", wanted, time.monotonic() - started)
            return True

    def start(self) -> "ModelHolder":
        """Load now (best effort), then keep following the target on a daemon thread."""
        self.refresh()
        self._follower.start()
        return self

    def stop(self) -> None:
        self._follower.stop()

    def status(self) -> dict:
        return {"version": self.version, "target": self.target, "last_error": self.last_error,
                "failed_versions": sorted(self.failed), "swaps": self.swaps,
                "catalog": self.catalog.to_dict() if self.catalog is not None else None}


def served_catalog(dataset_dir: str | Path, title_ids) -> DatasetIdentity:
    """The catalog a replica serves: its dataset's name and the fingerprint of its title ids."""
    return DatasetIdentity.of_dataset_dir(dataset_dir, title_ids)


def refreeze_gc() -> None:
    """Keep a new model out of the cyclic collector's full scans, as the process start was.

    Serve replicas freeze the GC once their constructor ran (RAY_SERVE_FREEZE_GC_ON_STARTUP), so
    the first model is exempt from full collections; a model swapped in later would not be, and
    a full collection scanning it stalled every request of the replica for ~40 ms (measured
    here). So, only in a process that froze its GC: unfreeze (the old model's cycles become
    collectable), collect once, freeze again. One pause per swap instead of one every few
    hundred requests."""
    if gc.get_freeze_count() == 0:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
