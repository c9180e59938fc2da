"""The homepage pipeline: member state -> candidates -> scorer -> rows -> decorators -> response.

deployments/page_builder.py builds it from a HomepageConfig. The candidate and scoring stages
arrive as one `Stages` object (placement.py): fused, they run in this replica; split, behind
DeploymentHandles; this code is the same either way. Nothing a member sends or a stage does
turns into an error page: an unreachable member state gives a cold-start page, failed sources
are dropped and named in `degraded`, and if candidate generation fails as a whole the
precomputed popular rows serve.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from deployments.artwork import PageArtwork
from deployments.candidates import Retrieved
from deployments.catalog import ServingCatalog
from deployments.contracts import Decorator, HomepageContext, Row, ScoredItem
from deployments.rows import Page, RowBuilder
from experiments.interleaving import Interleaved, interleaving_payload, seed_of, team_draft
from marquee.schema import MATURITY_LABELS, MAX_MATURITY, decision_event

log = logging.getLogger("marquee.homepage")
MemberFn = Callable[[int], Awaitable[Any]]


class Stages(Protocol):
    """The candidate and scoring stages, wherever they run (placement.py)."""

    async def candidates(self, ctx: HomepageContext) -> Retrieved: ...

    async def scores(self, retrieved: Retrieved) -> np.ndarray: ...

    async def model_status(self) -> dict: ...

ROW_TEXT = {"top_in_country": "Top in {country}", "trending": "Trending now", "new_releases": "New on Marquee",
            "cold_titles": "New to the catalog", "my_list": "In your list", "continue_watching": "Pick up where you left off"}
MODEL_SOURCE_TEXT = {"sequence": "Members who watch what you watch also watched this",
                     "embedding": "Picked for your tastes", "content": "Matches the genres you like",
                     "trending": "Popular right now", "recency_ease": "Picked for your tastes"}


@dataclass(frozen=True)
class HomepageRequest:
    member_id: int
    country: str | None = None
    device: str = "tv"
    maturity: str | None = None  # a label of MATURITY_LABELS overriding the profile's
    rows: int = 10
    titles_per_row: int = 10
    request_id: str = ""


@dataclass
class Timer:
    stages: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, started: float) -> float:
        now = time.perf_counter()
        self.stages[name] = round(self.stages.get(name, 0.0) + (now - started) * 1e3, 2)
        return now


@dataclass(frozen=True)
class Scoring:
    """Who orders the candidates: one scorer, or two interleaved (team draft, in the rows
    `interleaved_rows` names by plan row id, expanded rows included; the rest of the page is
    A's). `experiment` names the interleaving
    experiment in the decision record, so its analysis finds the teams."""

    scorers: tuple[str, ...] = ("ranker",)  # (scorer,) or (A, B)
    interleaved_rows: frozenset[str] = frozenset()
    experiment: str | None = None

    @property
    def interleaving(self) -> bool:
        return len(self.scorers) == 2


class Homepage:
    """`await homepage(request, experiments) -> dict`: one member's page, JSON-ready."""

    def __init__(self, catalog: ServingCatalog, rows: RowBuilder, decorators: Sequence[Decorator],
                 stages: Stages, member: MemberFn, fallback_rows: RowBuilder,
                 retrieval_timeout_s: float = 2.0, member_timeout_s: float = 1.0,
                 record: Callable[[dict], None] | None = None, scoring: Scoring = Scoring()):
        self.catalog, self.rows, self.decorators = catalog, rows, tuple(decorators)
        self.record = record  # takes the page's decision record (DecisionRecorder.record)
        self.stages, self.member, self.fallback_rows = stages, member, fallback_rows
        self.retrieval_timeout_s, self.member_timeout_s = retrieval_timeout_s, member_timeout_s
        self.scoring = scoring

    async def __call__(self, request: HomepageRequest, experiments: dict[str, str] | None = None) -> dict:
        timer, degraded = Timer(), []
        started = t = time.perf_counter()
        request_id = request.request_id or uuid.uuid4().hex
        snapshot = None
        try:
            snapshot = await asyncio.wait_for(self.member(request.member_id), self.member_timeout_s)
        except Exception:
            degraded.append("member_state")
        t = timer.add("member", t)
        ctx = self.context(request, snapshot, request_id)

        versions: dict[str, str] = {}
        retrieved = None
        popular_only = self.scoring.scorers == ("popular_rows",)  # no model asked, nothing degraded
        if popular_only:
            versions["ranker"] = "popular_rows"
        else:
            try:
                retrieved = await asyncio.wait_for(self.stages.candidates(ctx), self.retrieval_timeout_s)
            except Exception:
                degraded.append("candidates")
        t = timer.add("candidates", t)
        if retrieved is not None:
            degraded += retrieved.degraded
            versions["retrieval"] = retrieved.model_version
            for name, ms in retrieved.timings_ms.items():
                timer.stages[f"candidates.{name}"] = ms
        by_scorer: dict[str, dict[str, list[ScoredItem]]] | None = None
        if retrieved is not None and not retrieved.failed_closed and _has_candidates(retrieved):
            try:
                scores = await self.scores(retrieved)
                versions["ranker"] = "|".join(retrieved.model_version if name == "ranker" else name
                                              for name in self.scoring.scorers)
                by_scorer = {name: self.sources(ctx, retrieved, s) for name, s in scores.items()}
            except Exception:
                degraded.append("ranker")
            t = timer.add("rank", t)
        fallback = by_scorer is None and not popular_only
        sources = self.popular_sources(ctx) if by_scorer is None else by_scorer[self.scoring.scorers[0]]
        if fallback:
            degraded.append("personalization")
        drafts: list[Interleaved] | None = None
        try:
            page = self.rows.build_page(ctx, sources)
            if by_scorer is not None and self.scoring.interleaving:
                page, drafts = self.interleave(ctx, page, self.rows.build_page(ctx, by_scorer[self.scoring.scorers[1]]))
        except Exception:  # e.g. a hot value that slipped past validation: still serve a page
            log.exception("row building failed; serving the popular rows")
            degraded.append("rows")
            fallback, drafts = True, None
            page = self.fallback_rows.build_page(ctx, self.popular_sources(ctx))
        t = timer.add("rows", t)
        rows, artwork = self.render(ctx, page)
        if artwork is not None:
            versions["artwork"] = f"{artwork.policy}@{artwork.version}"  # the policy and its learned version
        timer.add("artwork", t)
        total_ms = round((time.perf_counter() - started) * 1e3, 2)
        timer.stages["total"] = total_ms
        degraded = sorted(set(degraded))
        experiments = dict(experiments or {})
        if self.record is not None:
            interleaving = None
            if drafts is not None:
                interleaving = interleaving_payload(self.scoring.experiment, *self.scoring.scorers, drafts)
            self.record(decision_record(ctx, rows, artwork, experiments=experiments, latency_ms=total_ms,
                                        degraded=degraded, interleaving=interleaving))
        return {
            "request_id": request_id,
            "member_id": ctx.member_id,
            "country": ctx.country,
            "device": ctx.device,
            "maturity": ctx.maturity_label,
            # unknown when member state could not be read: that is an outage, not a new member
            "cold_start": None if "member_state" in degraded else not ctx.has_history,
            "fallback": fallback,
            "model_versions": versions,
            "experiments": experiments,
            "degraded": degraded,
            "rows": rows,
            "removed": {"counts": page.removal_counts, "total": len(page.removals)},
            "timings_ms": timer.stages,
        }

    # -- context -------------------------------------------------------------------------------

    def context(self, request: HomepageRequest, snapshot: Any, request_id: str) -> HomepageContext:
        profile = self.catalog.profile(request.member_id)
        country = request.country or (profile.country if profile else self.catalog.default_country)
        if request.maturity is not None:
            maturity = MATURITY_LABELS.index(request.maturity)
        else:
            maturity = profile.maturity if profile else MAX_MATURITY
        fields: dict[str, Any] = {}
        if snapshot is not None and getattr(snapshot, "known", False):
            recent = [int(t) for t in snapshot.recently_watched]
            fields = {
                "watched": frozenset(recent),
                "continue_watching": tuple(int(c.title_id) for c in snapshot.continue_watching),
                "my_list": tuple(int(t) for t in snapshot.my_list),
                "recently_watched": tuple(recent),
                "titles_played": int(getattr(snapshot, "titles_played", 0) or len(recent)),
                "first_event_ms": getattr(snapshot, "first_event_ms", None),
                "preferred_genres": tuple(getattr(snapshot, "preferred_genres", ()) or ()),
                "liked": tuple(int(t) for t, v in snapshot.thumbs.items() if v > 0),
            }
        return HomepageContext(
            member_id=request.member_id, country=country, device=request.device, maturity=maturity,
            now_ms=int(time.time() * 1000), rows_limit=request.rows, titles_per_row=request.titles_per_row,
            request_id=request_id, **fields)

    # -- scoring -------------------------------------------------------------------------------

    async def scores(self, retrieved: Retrieved) -> dict[str, np.ndarray]:
        """Each scorer's scores of the candidates (page_builder.SCORERS): the ranker's from the
        scoring stage, popularity's from the catalog's all-time plays (no model)."""
        out: dict[str, np.ndarray] = {}
        for name in self.scoring.scorers:
            if name == "ranker":
                out[name] = np.asarray(await asyncio.wait_for(self.stages.scores(retrieved), self.retrieval_timeout_s))
            else:
                plays = self.catalog.plays_all
                ids = retrieved.title_ids.tolist()
                out[name] = np.log1p(np.fromiter((plays.get(t, 0.0) for t in ids), dtype=np.float64, count=len(ids)))
        return out

    def interleave(self, ctx: HomepageContext, page: Page, other: Page) -> tuple[Page, list[Interleaved]]:
        """`page` (A's) with each interleaved row replaced by the team draft of A's and B's row of
        the same id (seeded by the request, so a page and its record agree); B's titles already
        elsewhere on A's page are left out, so the page still shows each title once. Returns
        the page and its interleaved rows' drafts."""
        b_rows = {row.row_id: row for row in other.rows}
        drafts: list[Interleaved] = []
        rows = []
        for i, row in enumerate(page.rows):
            b_row = b_rows.get(row.row_id)
            if b_row is None or row.row_id.partition(":")[0] not in self.scoring.interleaved_rows:
                rows.append(row)
                continue
            elsewhere = {t for j, r in enumerate(page.rows) if j != i for t in r.title_ids}
            b_items = [item for item in b_row.items if item.title_id not in elsewhere]
            mixed = team_draft(row.title_ids, [item.title_id for item in b_items], len(row.items),
                               seed_of(f"{ctx.request_id}:{row.row_id}"))
            item_of = {item.title_id: item for item in b_items} | {item.title_id: item for item in row.items}
            rows.append(Row(row.row_id, row.title, tuple(item_of[t] for t in mixed.titles)))
            drafts.append(mixed)
        return dataclasses.replace(page, rows=tuple(rows)), drafts

    # -- sources for the row builder ----------------------------------------------------------

    def sources(self, ctx: HomepageContext, retrieved: Retrieved, scores: np.ndarray) -> dict[str, list[ScoredItem]]:
        if len(scores) != len(retrieved.title_ids):
            raise ValueError(f"ranker returned {len(scores)} scores for {len(retrieved.title_ids)} candidates")
        score_of = dict(zip(retrieved.title_ids.tolist(), scores.tolist()))
        boost, reasons = retrieved.boost, retrieved.reasons
        out: dict[str, list[ScoredItem]] = {}
        personalized = [ScoredItem(tid, score_of[tid] + boost.get(tid, 0.0), names,
                                   (reasons.get(tid) or MODEL_SOURCE_TEXT.get(names[0], "Picked for you"),))
                        for tid, names in retrieved.proposed_by.items()]
        typical = float(np.median(scores)) if len(scores) else 0.0  # cold titles compete at this level
        for cand in retrieved.rows.get("cold_titles", ()):
            personalized.append(ScoredItem(cand.title_id, typical * cand.score + boost.get(cand.title_id, 0.0),
                                           ("cold_titles",), (ROW_TEXT["cold_titles"],)))
        out["personalized"] = personalized
        floor = min(score_of.values(), default=0.0)
        unscored = floor * 0.5  # a row source's title the ranker did not score
        for key, cands in retrieved.rows.items():
            if key == "cold_titles":
                continue
            ordered = key == "top_in_country"
            row_reason = ROW_TEXT.get(key, "").format(country=ctx.country)  # once per row, not per title
            items = []
            for cand in cands:
                reason = cand.reason or row_reason
                score = score_of.get(cand.title_id, unscored) + boost.get(cand.title_id, 0.0)
                items.append(ScoredItem(cand.title_id, score, (cand.source,), (reason,) if reason else ()))
            out[key] = _keep_order(items) if ordered else items
        out["continue_watching"] = _keep_order(
            [ScoredItem(t, score_of.get(t, 1.0), ("continue_watching",), (ROW_TEXT["continue_watching"],))
             for t in ctx.continue_watching], base=max(score_of.values(), default=1.0) + 1.0)
        out["my_list"] = _keep_order(
            [ScoredItem(t, score_of.get(t, floor), ("my_list",), (ROW_TEXT["my_list"],)) for t in ctx.my_list])
        return out

    def popular_sources(self, ctx: HomepageContext) -> dict[str, list[ScoredItem]]:
        """The precomputed popular rows: no model, no candidate source, still a useful page."""
        catalog = self.catalog

        def listed(pairs: Sequence[tuple[int, float]], source: str, text: str) -> list[ScoredItem]:
            return _keep_order([ScoredItem(t, 1.0, (source,), (text,)) for t, _ in pairs], base=1.0)

        top = listed(catalog.top_for(ctx.country), "top_in_country", ROW_TEXT["top_in_country"].format(country=ctx.country))
        return {
            "top_in_country": top,
            "trending": listed(catalog.trending, "trending_now", ROW_TEXT["trending"]),
            "new_releases": listed(catalog.new_releases, "new_releases", ROW_TEXT["new_releases"]),
            "personalized": listed(catalog.by_genre(ctx.preferred_genres) if ctx.preferred_genres
                                   else catalog.popular, "popular", "Popular on Marquee"),
            "continue_watching": listed([(t, 0.0) for t in ctx.continue_watching], "continue_watching",
                                        ROW_TEXT["continue_watching"]),
            "my_list": listed([(t, 0.0) for t in ctx.my_list], "my_list", ROW_TEXT["my_list"]),
        }

    # -- response ------------------------------------------------------------------------------

    def render(self, ctx: HomepageContext, page: Page) -> tuple[list[dict], PageArtwork | None]:
        """The rows as JSON: each title's facts, then what each decorator adds (for the whole
        page at once); and the page's artwork decision, if a decorator made one."""
        titles = self.catalog.titles
        items = [[{"title_id": item.title_id, "name": titles[item.title_id].name, "position": position,
                   "score": round(float(item.score), 6), "genres": list(titles[item.title_id].genres)}
                  for position, item in enumerate(row.items)] for row in page.rows]
        artwork = None
        for decorator in self.decorators:
            made = decorator(ctx, page.rows, items)
            if isinstance(made, PageArtwork):
                artwork = made
        rows = [{"row_id": row.row_id, "title": row.title, "items": row_items}
                for row, row_items in zip(page.rows, items)]
        return rows, artwork


def _has_candidates(retrieved: Retrieved) -> bool:
    return len(retrieved.title_ids) > 0 or any(retrieved.rows.values())


def _keep_order(items: Sequence[ScoredItem], base: float | None = None) -> list[ScoredItem]:
    """Scores that keep the list's own order (a Top 10 is ordered by popularity, not by the
    ranker) but sit on the ranker's scale, so the row still competes fairly for its place."""
    if not items:
        return []
    level = base if base is not None else float(np.mean([i.score for i in items]))
    level = max(level, 1e-6)
    return [item.with_score(level * (1.0 - 1e-3 * i)) for i, item in enumerate(items)]



def decision_record(ctx: HomepageContext, rows: list[dict], artwork: PageArtwork | None,
                    experiments: dict[str, str], **health: Any) -> dict:
    """The server's record of what this page decided (marquee.schema.decision_event): every
    title shown with its artwork arm, propensity, row and position, the policy and its version,
    the experiment assignments and the context the policy saw; `health` (latency_ms, degraded,
    interleaving) as decision_event takes them."""
    items = [(item["title_id"], item["artwork"]["artwork_id"], item["artwork"]["propensity"], row["row_id"],
              item["position"]) for row in rows for item in row["items"]
             if item.get("artwork", {}).get("artwork_id") is not None]
    return decision_event(
        request_id=ctx.request_id, member_id=ctx.member_id, timestamp_ms=ctx.now_ms, device=ctx.device,
        country=ctx.country, policy=artwork.policy if artwork else "none",
        policy_version=artwork.version if artwork else 0, items=items, experiments=experiments,
        context=artwork.context if artwork else {}, **health)
