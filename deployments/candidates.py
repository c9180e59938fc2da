"""Candidate generation for one homepage: every configured source, each under its own policy.

Sources are CandidateSource components (contracts.py), named in HomepageConfig.sources: the
model's (sequence, recency_ease, embedding, trending, content) score the member's live history;
the row sources (because_you_watched, top_in_country, trending_now, new_releases, cold_titles)
read precomputed lists and give Candidates per row. Each runs under its policy (timeout,
fail-open); one that raises or overruns is dropped and named in `degraded`, and the ranker sees
its features as missing. Output is the ranker's feature matrix for every candidate plus the
candidates each row needs, so the ranker can run here (fused) or in its own deployment (split).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as futures
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from deployments.catalog import ServingCatalog
from deployments.contracts import Candidate, CandidateSource, HomepageContext
from deployments.model import LiveMember, ServingModel
from models.histories import Histories
from models.pipeline_config import PipelineConfig

# the model's sources, as training names them (their candidate depths are training settings)
MODEL_SOURCES = tuple(PipelineConfig.__dataclass_fields__["depth"].default_factory())
ROW_SOURCES = ("because_you_watched", "top_in_country", "trending_now", "new_releases", "cold_titles")
FAULTS = ("raise", "slow")


MAX_IN_FLIGHT = 2  # runs of one source at once (per stage); a hung source holds at most this many threads
_IN_FLIGHT_LOCK = threading.Lock()


def source_pool() -> futures.ThreadPoolExecutor:
    """Threads for the sources: enough for every source of a few concurrent requests plus the
    bounded runs of hung ones."""
    return futures.ThreadPoolExecutor(max_workers=48, thread_name_prefix="source")


class SourceFault(RuntimeError):
    """Raised by a source on purpose (the `faults` chaos setting)."""


@dataclass(frozen=True)
class SourcePolicy:
    timeout_ms: float = 250.0
    fail_open: bool = True  # False: losing this source fails the personalized page (popular rows serve)

    def __post_init__(self) -> None:
        if not self.timeout_ms > 0:
            raise ValueError(f"timeout_ms must be > 0, got {self.timeout_ms}")


@dataclass(frozen=True)
class RetrievalConfig:
    """The candidate stage's settings, derived from HomepageConfig (page_config.py parses and
    checks them; here only what the stage itself relies on)."""

    sources: tuple[str, ...] = MODEL_SOURCES + ROW_SOURCES  # which run, in this order
    policies: Mapping[str, SourcePolicy] = field(default_factory=dict)
    default_policy: SourcePolicy = SourcePolicy()
    because_seeds: int = 3
    because_depth: int = 20
    row_depth: int = 25  # titles per row source sent to the ranker: rows show 10 after rules
    cold_titles: int = 20  # titles nobody has played yet, matched to the member by content
    cold_title_weight: float = 1.0  # times the genre match; the page scales it by the median ranker score
    editorial_boost: Mapping[int, float] = field(default_factory=dict)  # title_id -> added score
    faults: Mapping[str, str] = field(default_factory=dict)  # chaos: source -> "raise" | "slow"
    slow_fault_s: float = 2.0

    def __post_init__(self) -> None:
        for name, fault in self.faults.items():
            if fault not in FAULTS:
                raise ValueError(f"faults.{name}: expected one of {FAULTS}, got {fault!r}")
        for name, policy in self.policies.items():
            if not isinstance(policy, SourcePolicy):
                raise ValueError(f"policies.{name}: expected a SourcePolicy, got {type(policy).__name__}")

    def policy(self, source: str) -> SourcePolicy:
        return self.policies.get(source, self.default_policy)


@dataclass(frozen=True, slots=True)
class SourceRequest:
    """What every source of one request may read."""

    ctx: HomepageContext
    histories: Histories  # the member's live history, on the model's title index
    seeds: list[int]  # "because you watched" seed titles, most recent first


class ModelSource:
    """One of the model's sources: a score per model title for the member's live history."""

    inline = False

    def __init__(self, model: ServingModel, name: str):
        self.model, self.name = model, name

    def __call__(self, request: SourceRequest) -> np.ndarray:
        return self.model.score_source(self.name, request.histories)


class BecauseYouWatched:
    """Titles most like each seed by the item-item model: one row per seed."""

    name, inline = "because_you_watched", True

    def __init__(self, model: ServingModel, catalog: ServingCatalog, depth: int):
        self.model, self.catalog, self.depth = model, catalog, depth

    def __call__(self, request: SourceRequest) -> dict[str, list[Candidate]]:
        rows = {}
        for seed in request.seeds:
            similar = self.model.similar(seed, self.depth)
            reason = f"because you watched {self.catalog.titles[seed].name}"
            rows[f"because_you_watched:{seed}"] = [Candidate(t, self.name, s, reason) for t, s in similar]
        return rows


class PopularList:
    """A precomputed list of the catalog (top in the member's country, trending, new releases)."""

    inline = True

    def __init__(self, name: str, row: str, read: Callable[[HomepageContext], list[tuple[int, float]]], depth: int):
        self.name, self.row, self.read, self.depth = name, row, read, depth

    def __call__(self, request: SourceRequest) -> dict[str, list[Candidate]]:
        return {self.row: [Candidate(t, self.name, s) for t, s in self.read(request.ctx)[: self.depth]]}


class ColdTitles:
    """Titles with no plays yet, by genre match (cosine, times `weight`) to the member's history
    or onboarding tastes; editorial boosts order them too (and are added on the page)."""

    name, inline = "cold_titles", True

    def __init__(self, model: ServingModel, catalog: ServingCatalog, limit: int, weight: float,
                 boost: Mapping[int, float]):
        self.catalog, self.limit, self.weight = catalog, limit, weight
        self._cold = [t for t in sorted(catalog.titles) if t not in model.index_of]
        # unit genre vectors of the cold titles, once: scoring them is one product per page
        self._genre_position = {g: i for i, g in enumerate(catalog.genres)}
        cold = np.zeros((len(self._cold), len(self._genre_position)))
        for row, tid in enumerate(self._cold):
            for g in catalog.titles[tid].genres:
                cold[row, self._genre_position[g]] = 1.0
        self._cold_genres = cold / np.maximum(np.linalg.norm(cold, axis=1, keepdims=True), 1e-12)
        self._boost = np.array([boost.get(t, 0.0) for t in self._cold])

    def __call__(self, request: SourceRequest) -> dict[str, list[Candidate]]:
        return {"cold_titles": [Candidate(t, self.name, s) for t, s in self.ranked(request.ctx)]}

    def ranked(self, ctx: HomepageContext) -> list[tuple[int, float]]:
        if not self._cold:
            return []
        catalog = self.catalog
        profile = np.zeros(len(self._genre_position))
        for rank, tid in enumerate(_history(ctx)[:50]):
            info = catalog.titles.get(tid)
            for g in info.genres if info is not None else ():
                profile[self._genre_position[g]] += np.exp(-rank / 20.0)
        for g in ctx.preferred_genres:
            if g in self._genre_position:
                profile[self._genre_position[g]] += 1.0
        norm = np.linalg.norm(profile)
        match = self._cold_genres @ profile / norm if norm > 0 else np.zeros(len(self._cold))
        score = self.weight * match
        order = np.lexsort((self._cold, -(score + self._boost)))[: self.limit]
        return [(int(self._cold[i]), float(score[i])) for i in order]


def build_sources(model: ServingModel, catalog: ServingCatalog, config: RetrievalConfig) -> list[CandidateSource]:
    """The configured sources on one model, in config order (page_builder checked the names)."""
    row_sources: dict[str, Callable[[], CandidateSource]] = {
        "because_you_watched": lambda: BecauseYouWatched(model, catalog, config.because_depth),
        "top_in_country": lambda: PopularList("top_in_country", "top_in_country",
                                              lambda ctx: catalog.top_for(ctx.country), config.row_depth),
        "trending_now": lambda: PopularList("trending_now", "trending", lambda ctx: catalog.trending, config.row_depth),
        "new_releases": lambda: PopularList("new_releases", "new_releases", lambda ctx: catalog.new_releases,
                                            config.row_depth),
        "cold_titles": lambda: ColdTitles(model, catalog, config.cold_titles, config.cold_title_weight,
                                          config.editorial_boost),
    }
    sources: list[CandidateSource] = []
    for name in config.sources:
        if name in row_sources:
            sources.append(row_sources[name]())
        elif name in model.source_names:
            sources.append(ModelSource(model, name))
    return sources


@dataclass
class Retrieved:
    """Candidates of one request, ready for the ranker (picklable: it may cross a handle)."""

    model_version: str
    title_ids: np.ndarray  # one per ranker row
    features: np.ndarray
    proposed_by: dict[int, tuple[str, ...]]  # model candidates: the sources that proposed each
    reasons: dict[int, str]  # title -> "because you watched X" where the item-item model knows
    rows: dict[str, list[Candidate]]  # row sources: "top_in_country", "because_you_watched:{id}", ...
    degraded: list[str]
    failed_closed: list[str]  # sources whose policy is fail-closed and that failed
    timings_ms: dict[str, float]
    boost: dict[int, float] = field(default_factory=dict)  # editorial boosts of these candidates
    scores: np.ndarray | None = None  # set when the ranker ran fused, right after generation


@dataclass
class _SourceRun:
    """One request's sources under way: when they started, the pooled ones' futures, and the
    inline ones' (ok, value)."""

    started: float
    pending: dict[str, futures.Future] = field(default_factory=dict)
    here: dict[str, tuple[bool, object]] = field(default_factory=dict)
    expired: set[str] = field(default_factory=set)  # pooled, not back by their own deadline


@dataclass
class _Request:
    """One request's member batch and source jobs, from its start (t0) on."""

    t0: float
    batch: Any
    jobs: dict[str, Callable[[], object]]


class Retrieval:
    """The candidate stage on one model: `__call__(ctx) -> Retrieved`."""

    def __init__(self, model: ServingModel, catalog: ServingCatalog, config: RetrievalConfig | None = None,
                 executor: futures.ThreadPoolExecutor | None = None):
        self.model, self.catalog = model, catalog
        self.config = config or RetrievalConfig()
        self._pool = executor or source_pool()
        self._in_flight: dict[str, int] = {}
        self.sources = build_sources(model, catalog, self.config)
        self._inline = frozenset(s.name for s in self.sources if s.inline)
        # on an event loop these run on the pool even if inline: the injected fault's sleep must
        # not hold the loop
        self._slowed = frozenset(n for n, fault in self.config.faults.items() if fault == "slow")
        self._row_sources = [s.name for s in self.sources if not isinstance(s, ModelSource)]
        # configured model sources this model does not have: asked for, never run, so named
        self._missing = sorted(set(self.config.sources) - set(ROW_SOURCES) - set(model.source_names))

    def _guarded(self, name: str, fn: Callable[[], object]) -> Callable[[], object]:
        fault = self.config.faults.get(name)

        def run():
            if fault == "raise":
                raise SourceFault(f"source {name} failed (injected fault)")
            if fault == "slow":
                time.sleep(self.config.slow_fault_s)
            return fn()
        return run

    def _run_all(self, jobs: dict[str, Callable[[], object]], inline: frozenset[str] = frozenset()
                 ) -> tuple[dict[str, object], list[str], list[str]]:
        """Run every source on its own pool thread and wait for each at most its own timeout
        (from the start). A source that raised or overran is dropped and named; the others are
        unaffected. A source still busy from earlier requests (hung) is not started again past
        MAX_IN_FLIGHT, so a hang holds a bounded number of threads and recovers when it ends.
        Sources named in `inline` (in-memory lookups) run in this thread while the others run:
        a thread hand-off would cost more than they do; an error or an overrun still drops them.
        Returns (results, degraded, failed_closed)."""
        return self._gather(jobs, self._start(jobs, inline))

    async def _run_all_async(self, jobs: dict[str, Callable[[], object]], inline: frozenset[str] = frozenset()
                             ) -> tuple[dict[str, object], list[str], list[str]]:
        """`_run_all` for a caller on an event loop: the wait for the pooled sources is awaited,
        so a slow source holds this request only, never the loop (other pages go on meanwhile).
        Each pooled source is waited for until its own deadline, as `_run_all` does; one not
        back by then is dropped even if it finishes before the others. A source given the
        injected "slow" fault runs on the pool here, so the fault sleeps there, not on the loop."""
        run = self._start(jobs, inline - self._slowed)
        waiting = {asyncio.wrap_future(f): name for name, f in run.pending.items()}
        due = {w: self._deadline(run, name) for w, name in waiting.items()}
        try:
            outstanding = set(waiting)
            while outstanding:
                earliest = min(due[w] for w in outstanding) - time.monotonic()
                if earliest > 0:
                    _, outstanding = await asyncio.wait(outstanding, timeout=earliest,
                                                        return_when=asyncio.FIRST_COMPLETED)
                now = time.monotonic()
                for waited in [w for w in outstanding if due[w] <= now]:
                    run.expired.add(waiting[waited])  # past its own deadline: dropped in _gather
                    outstanding.discard(waited)
        finally:  # also when this request is cancelled mid-wait
            for waited in waiting:
                if waited.done() and not waited.cancelled():
                    waited.exception()  # seen: a raising source is no "never retrieved" warning
                else:
                    waited.cancel()  # a queued source never runs; a running one ends on its own
        return self._gather(jobs, run)

    def _start(self, jobs: dict[str, Callable[[], object]], inline: frozenset[str]) -> _SourceRun:
        """Submit the pooled sources, then run the inline ones here meanwhile."""
        run = _SourceRun(started=time.monotonic())
        for name, fn in jobs.items():
            if name in inline:
                continue
            with _IN_FLIGHT_LOCK:
                busy = self._in_flight.get(name, 0)
                if busy >= MAX_IN_FLIGHT:
                    continue  # dropped in _gather, without a thread
                self._in_flight[name] = busy + 1
            future = self._pool.submit(self._guarded(name, fn))
            future.add_done_callback(lambda _, name=name: self._finished(name))
            run.pending[name] = future
        for name in inline & set(jobs):
            began = time.monotonic()
            try:
                value = self._guarded(name, jobs[name])()
                overran = time.monotonic() - began > self.config.policy(name).timeout_ms / 1000.0
                run.here[name] = (not overran, value)
            except Exception as exc:  # the source's own error: dropped and named below
                run.here[name] = (False, exc)
        return run

    def _deadline(self, run: _SourceRun, name: str) -> float:
        """When source `name` of this run is due (time.monotonic): its own timeout from the start."""
        return run.started + self.config.policy(name).timeout_ms / 1000.0

    def _gather(self, jobs: dict[str, Callable[[], object]], run: _SourceRun
                ) -> tuple[dict[str, object], list[str], list[str]]:
        """Each source's verdict: its result if it came in time, else dropped and named (a pooled
        one waited for here at most what is left of its own timeout)."""
        pending, here = run.pending, run.here
        results: dict[str, object] = {}
        degraded, closed = [], []
        for name in jobs:
            policy = self.config.policy(name)
            if name in here:
                ok, value = here[name]
                if ok:
                    results[name] = value
                else:
                    degraded.append(name)
                    if not policy.fail_open:
                        closed.append(name)
                continue
            future = pending.get(name)
            left = self._deadline(run, name) - time.monotonic()
            try:
                if future is None:
                    raise TimeoutError(f"{name}: still busy from earlier requests")
                if name in run.expired:
                    raise TimeoutError(f"{name}: not back by its deadline")
                results[name] = future.result(timeout=max(left, 0.0))
            except Exception:  # timeout or the source's own error: drop it, name it
                if future is not None:
                    future.cancel()  # not started yet: never runs
                degraded.append(name)
                if not policy.fail_open:
                    closed.append(name)
        return results, degraded, closed

    def _finished(self, name: str) -> None:
        with _IN_FLIGHT_LOCK:
            self._in_flight[name] -= 1

    def __call__(self, ctx: HomepageContext) -> Retrieved:
        request = self._request(ctx)
        return self._retrieved(request, *self._run_all(request.jobs, inline=self._inline))

    async def generate(self, ctx: HomepageContext) -> Retrieved:
        """`__call__` on an event loop: the sources' wait is awaited (see `_run_all_async`)."""
        request = self._request(ctx)
        return self._retrieved(request, *await self._run_all_async(request.jobs, inline=self._inline))

    def _request(self, ctx: HomepageContext) -> _Request:
        t0 = time.perf_counter()
        model, cfg, catalog = self.model, self.config, self.catalog
        live = LiveMember(ctx.member_id, _history(ctx), ctx.titles_played, ctx.first_event_ms)
        batch = model.batch([live])
        histories = batch.histories
        seeds = [t for t in dict.fromkeys(ctx.recently_watched) if t in catalog.titles][: cfg.because_seeds]
        request = SourceRequest(ctx, histories, seeds)
        jobs: dict[str, Callable[[], object]] = {s.name: partial(s, request) for s in self.sources}
        return _Request(t0, batch, jobs)

    def _retrieved(self, request: _Request, results: dict[str, object], degraded: list[str],
                   closed: list[str]) -> Retrieved:
        model, cfg = self.model, self.config
        batch, histories = request.batch, request.batch.histories
        if self._missing:
            degraded += self._missing
            closed += [name for name in self._missing if not cfg.policy(name).fail_open]
        t1 = time.perf_counter()

        rows: dict[str, list[Candidate]] = {}
        for name in self._row_sources:
            if name in results:
                rows.update(results[name])

        scores = {name: results.get(name) for name in model.source_names}
        include = model.include_mask(1, [[c.title_id for cands in rows.values() for c in cands]])
        candidates = model.candidates(batch, scores, include)
        title_ids = model.title_ids[candidates.titles]
        proposed = self._proposed_by(candidates)
        reasons = self._because(histories, candidates.titles)
        t2 = time.perf_counter()
        return Retrieved(
            model_version=model.version,
            title_ids=title_ids,
            features=candidates.features,
            proposed_by=proposed,
            reasons=reasons,
            rows=rows,
            degraded=sorted(degraded),
            failed_closed=sorted(closed),
            timings_ms={"sources": round((t1 - request.t0) * 1e3, 2), "features": round((t2 - t1) * 1e3, 2)},
            boost=dict(cfg.editorial_boost),
        )

    def _proposed_by(self, candidates) -> dict[int, tuple[str, ...]]:
        """Which model sources put each candidate in their top `depth` (for the explanation),
        read from the rank features the ranker sees, so both agree on it."""
        depth = self.model.builder.depth
        names = [name for name in self.model.source_names if depth.get(name, 0) > 0]
        if not names:
            return {}
        columns = [candidates.names.index(f"{name}_rank") for name in names]
        within = candidates.features[:, columns] < np.array([depth[name] for name in names])
        codes = within @ (1 << np.arange(len(names)))  # one bit per source: one code per row
        named = {int(code): tuple(n for bit, n in enumerate(names) if code >> bit & 1) for code in np.unique(codes)}
        titles = self.model.title_ids[candidates.titles].tolist()
        return {title: named[code] for title, code in zip(titles, codes.tolist()) if code}

    def _because(self, histories, titles: np.ndarray) -> dict[int, str]:
        """For each candidate, the history title that contributes most through the item-item
        weights: "because you watched X"."""
        ease = self.model.builder.sources.get("recency_ease")
        if ease is None:
            return {}
        seeds = ease.because_many(histories, titles)
        text: dict[int, str | None] = {}
        for seed in np.unique(seeds[seeds >= 0]).tolist():
            info = self.catalog.titles.get(int(self.model.title_ids[seed]))
            text[seed] = None if info is None else f"because you watched {info.name}"
        candidate_ids = self.model.title_ids[titles].tolist()
        return {tid: text[seed] for tid, seed in zip(candidate_ids, seeds.tolist())
                if seed >= 0 and text[seed] is not None}


class CandidateStage:
    """Candidate generation on the holder's current model: the stage object a placement runs
    (in the gateway's replica, or in the Retrieval deployment). The Retrieval is rebuilt when
    the model or the config changes (cheap), so a hot swap is picked up by the next request."""

    def __init__(self, holder: Any, catalog: ServingCatalog, config: RetrievalConfig):
        self.holder, self.catalog, self.config = holder, catalog, config  # holder: a ModelHolder
        self._built: tuple[Any, Any, Retrieval] | None = None
        self._lock = threading.Lock()
        # one pool for every Retrieval this stage builds: a rebuild must not leave threads behind
        self._pool = source_pool()

    def reconfigure(self, config: RetrievalConfig) -> None:
        self.config = config

    def model_for(self, version: str) -> ServingModel | None:
        """The model that built features of `version`, while this stage still holds it: a hot
        swap between candidate generation and ranking must not load anything in a request."""
        built = self._built
        if built is not None and built[0].version == version:
            return built[0]
        model = self.holder.model
        return model if model is not None and model.version == version else None

    def __call__(self, ctx: HomepageContext) -> Retrieved:
        return self._retrieval()(ctx)

    async def generate(self, ctx: HomepageContext) -> Retrieved:
        """The same on an event loop (the fused placement): no thread hand-off for the page's
        own work, the sources' wait awaited."""
        return await self._retrieval().generate(ctx)

    def _retrieval(self) -> Retrieval:
        model = self.holder.model
        if model is None:
            raise RuntimeError("no model version is loaded yet")
        built = self._built
        if built is None or built[0] is not model or built[1] is not self.config:
            with self._lock:
                built = self._built = (model, self.config,
                                       Retrieval(model, self.catalog, self.config, executor=self._pool))
        return built[2]


def _history(ctx: HomepageContext) -> tuple[int, ...]:
    """What the member's tastes are read from: plays, most recent first, then liked titles."""
    return tuple(dict.fromkeys((*ctx.recently_watched, *ctx.liked)))
