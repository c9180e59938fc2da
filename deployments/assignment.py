"""Experiments in the serving graph: which variant's pipeline serves a member, and first exposures.

The experiments file (experiments/spec.py; HOME/experiments.yaml) is a hot value. Each gateway
replica follows it (`ExperimentsFile`, a daemon thread polling its size and mtime): a change
reaches every replica without a restart, and a file that does not validate is refused whole, its
problems logged and shown in /healthz, while the version already running keeps serving. With no
file, or none valid yet, no member is in an experiment.

Per request (`ExperimentRouter`): the allocator hashes the member into its variants; the
pipeline of that combination of variants (the base config with each variant's override merged in
layer order) is built once and kept (`VariantPipelines`); the page carries the assignments in
its response and its decision record, and the member's first page in a variant logs an
`exposure` event (marquee.schema.exposure_event). "First" is kept per replica in a bounded set;
the log keeps one exposure per member and variant by its event id, so a replica that restarts,
or a second replica, sending it again changes nothing.

A variant may change what the page does with the candidates (scorer, interleaving, rows,
selectors, filters, decorators, artwork), not the candidate stage's own settings (`sources`,
`candidates`): those run in a stage shared by every member (placement.py), so a per-member value
there could not be honoured. Such an override is refused when the file is read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deployments.follower import Follower
from deployments.homepage import Homepage, HomepageRequest
from deployments.page_builder import check
from deployments.page_config import HomepageConfig, apply_override
from experiments.allocation import Allocator
from experiments.spec import Experiment, SpecError, Variant, load_spec
from marquee.schema import exposure_event

log = logging.getLogger("marquee.experiments")

STAGE_SECTIONS = ("sources", "candidates")  # the shared candidate stage's: the same for every member
MAX_PIPELINES = 64  # combinations of variants kept built per replica (a few per running experiment)
MAX_SEEN = 200_000  # (member, experiment, variant) exposures remembered per replica before starting over

Placements = list[tuple[Experiment, Variant]]
BuildFn = Callable[[HomepageConfig, "str | None"], Homepage]  # (config, interleaving experiment) -> pipeline


def override_validator(base: Callable[[], HomepageConfig]) -> Callable[[dict], None]:
    """How the experiments file checks each variant: a per-member section only, and the
    replica's base config with the override merged in must build (page_builder.check)."""

    def validate(override: dict) -> None:
        shared = [name for name in STAGE_SECTIONS if name in override]
        if shared:
            raise ValueError(f"{shared[0]}: the candidate stage is shared by every member, so an experiment "
                             f"cannot vary it; a variant may override scorer, interleaving, rows, selectors, "
                             f"filters, decorators or artwork")
        check(apply_override(base(), override))

    return validate


class ExperimentsFile:
    """The replica's running experiments file: `allocator` (None: no experiments) and `status()`."""

    def __init__(self, path: str | Path, validate_override: Callable[[dict], None], poll_s: float = 2.0):
        self.path, self.validate_override, self.poll_s = Path(path), validate_override, poll_s
        self.allocator: Allocator | None = None
        self.error: str | None = None  # why the file on disk is not the one running
        self.loaded_at_ms: int | None = None
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) last read
        self._lock = threading.Lock()
        self._follower = Follower(self.refresh, poll_s, "experiments-watch")

    def refresh(self) -> bool:
        """Read the file if it changed since the last look; True when a new version now runs.
        A missing file ends every experiment (deleting it is how they are all stopped)."""
        with self._lock:
            try:
                stat = os.stat(self.path)
            except FileNotFoundError:
                changed = self.allocator is not None or self._seen is not None
                self.allocator, self.error, self._seen = None, None, None
                return changed
            except OSError as exc:
                self.error = f"{self.path}: cannot read ({exc})"
                return False
            seen = (stat.st_mtime_ns, stat.st_size)
            if seen == self._seen:
                return False
            self._seen = seen
            try:
                spec = load_spec(self.path, self.validate_override)
            except (SpecError, ValueError, OSError) as exc:
                self.error = str(exc)
                log.error("experiments file refused, %s keeps serving: %s",
                          self.allocator.version if self.allocator else "no experiment", exc)
                return False
            if self.allocator is not None and spec.fingerprint == self.allocator.spec.fingerprint:
                self.error = None
                return False  # touched, not changed
            self.allocator, self.error = Allocator(spec), None
            self.loaded_at_ms = int(time.time() * 1000)
            log.info("experiments file %s now serving (%d experiments)", spec.version, len(spec.experiments))
            return True

    def follow(self) -> "ExperimentsFile":
        """Read the file now, then keep following it on a daemon thread."""
        self.refresh()
        self._follower.start()
        return self

    def stop(self) -> None:
        self._follower.stop()

    def status(self) -> dict:
        allocator = self.allocator
        return {"file": str(self.path), "version": allocator.version if allocator else None,
                "experiments": sorted(e.name for e in allocator.spec.experiments) if allocator else [],
                "loaded_at_ms": self.loaded_at_ms, "error": self.error}


class VariantPipelines:
    """The pipeline of each combination of variants, built on first use from the base config
    and kept; a combination that does not build is remembered as None (its members get the
    base page, unassigned, and the failure is logged once)."""

    def __init__(self, build: BuildFn, base: HomepageConfig, max_pipelines: int = MAX_PIPELINES):
        self.build, self.base, self.max_pipelines = build, base, max_pipelines
        self._built: dict[tuple, Homepage | None] = {}

    def get(self, placements: Placements) -> Homepage | None:
        key = tuple((e.name, e.salt, v.name) for e, v in placements)
        if key in self._built:
            return self._built[key]
        config, interleaving = self.base, None
        try:
            for experiment, variant in placements:
                config = apply_override(config, variant.override)
                if "interleaving" in variant.override:
                    interleaving = experiment.name
            homepage: Homepage | None = self.build(config, interleaving)
        except (TypeError, ValueError) as exc:
            log.error("variants %s do not build on this replica's config: %s", key, exc)
            homepage = None
        if len(self._built) >= self.max_pipelines:
            self._built.pop(next(iter(self._built)))  # the oldest: combinations are few and stable
        self._built[key] = homepage
        return homepage


class ExperimentRouter:
    """`await router(request) -> dict`: the member's page under their variants."""

    def __init__(self, experiments: ExperimentsFile, default: Homepage, build: BuildFn, base: HomepageConfig,
                 record: Callable[[dict], None] | None, max_seen: int = MAX_SEEN):
        self.experiments, self.build, self.record, self.max_seen = experiments, build, record, max_seen
        self.rebase(default, base)
        self._seen: set[tuple[int, str, str]] = set()

    def rebase(self, default: Homepage, base: HomepageConfig) -> None:
        """A new base config (reconfigure): every variant's pipeline is rebuilt from it."""
        self.default = default
        self.pipelines = VariantPipelines(self.build, base)
        self._for_spec = self.experiments.allocator

    async def __call__(self, request: HomepageRequest) -> dict:
        allocator = self.experiments.allocator
        if allocator is None:
            return await self.default(request)
        if allocator is not self._for_spec:  # a new file: variants may have changed under the same names
            self.pipelines = VariantPipelines(self.build, self.pipelines.base)
            self._for_spec = allocator
        now_ms = int(time.time() * 1000)
        placements = allocator.placements(request.member_id, now_ms)
        homepage = self.pipelines.get(placements) if placements else None
        if homepage is None:
            return await self.default(request)
        page = await homepage(request, {e.name: v.name for e, v in placements})
        self.expose(request.member_id, placements, page["request_id"], now_ms)
        return page

    def expose(self, member_id: int, placements: Placements, request_id: str, now_ms: int) -> None:
        if self.record is None:
            return
        for experiment, variant in placements:
            key = (member_id, experiment.name, variant.name)
            if key in self._seen:
                continue
            if len(self._seen) >= self.max_seen:
                self._seen.clear()  # re-sent exposures are deduplicated by the log
            self._seen.add(key)
            self.record(exposure_event(experiment.name, variant.name, member_id, request_id, now_ms))

    def status(self) -> Mapping[str, Any]:
        return self.experiments.status()
