"""Placement is configuration: where the candidate and scoring stages of a page run.

`fused` (one small machine): both stages run in the gateway's replica, on its event loop: the
page's own work holds the GIL either way, so a worker thread per page only added two thread
hand-offs (measured: +13% pages/s under uvicorn, +20% under Serve at 8 clients without them);
the pooled sources' wait is awaited, so a slow source holds its own page, not the loop. `split` (a
cluster): each stage is its own deployment, reached through a DeploymentHandle. Both give the
pipeline (homepage.py) the same `Stages` object, so it runs the same code in either placement;
`PLACEMENTS` maps the configured name to what builds it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deployments.candidates import CandidateStage, Retrieved
from deployments.catalog import ServingCatalog
from deployments.contracts import HomepageContext, Scorer
from deployments.model_holder import ModelHolder, served_catalog
from deployments.page_config import HotValues
from deployments.ranking import Ranker

log = logging.getLogger("marquee.placement")
STAGE_HANDLES = ("candidates", "scorer")  # the split placement's deployments, by role


class LocalStages:
    """Fused: the stage objects run here."""

    def __init__(self, candidates: CandidateStage, scorer: Scorer, status: Callable[[], dict]):
        self.candidate_stage, self.scorer, self._status = candidates, scorer, status

    async def candidates(self, ctx: HomepageContext) -> Retrieved:
        retrieved = await self.candidate_stage.generate(ctx)
        try:
            retrieved.scores = self.scorer.score(retrieved.model_version, retrieved.features)
        except Exception:  # left to `scores`: it fails again there and is named
            log.exception("fused ranking failed")
        return retrieved

    async def scores(self, retrieved: Retrieved) -> np.ndarray:
        if retrieved.scores is not None:
            return retrieved.scores
        return await asyncio.to_thread(self.scorer.score, retrieved.model_version, retrieved.features)

    async def model_status(self) -> dict:
        return self._status()


class RemoteStages:
    """Split: the same stage objects, each in its own deployment behind a DeploymentHandle."""

    def __init__(self, candidates: Any, scorer: Any):
        self.candidate_handle, self.scorer_handle = candidates, scorer

    async def candidates(self, ctx: HomepageContext) -> Retrieved:
        return await self.candidate_handle.remote(ctx)

    async def scores(self, retrieved: Retrieved) -> np.ndarray:
        return await self.scorer_handle.score.remote((retrieved.model_version, retrieved.features))

    async def model_status(self) -> dict:
        return await self.candidate_handle.status.remote()


@dataclass
class ModelStages:
    """A model holder and the candidate stage on it: what a model-holding replica keeps."""

    holder: ModelHolder
    candidates: CandidateStage

    @classmethod
    def start(cls, registry_root: Path, dataset: str | Path, catalog: ServingCatalog, hot: HotValues) -> "ModelStages":
        holder = ModelHolder(registry_root, hot.model_version,  # refuses another catalog's model
                             catalog=served_catalog(dataset, catalog.titles)).start()
        return cls(holder, CandidateStage(holder, catalog, hot.page.retrieval()))

    def apply(self, hot: HotValues) -> None:
        """The model target and candidate settings of a new (already validated) hot config."""
        self.candidates.reconfigure(hot.page.retrieval())
        self.holder.retarget(hot.model_version)
        self.holder.refresh()


def fused(registry_root: Path, dataset: str | Path, catalog: ServingCatalog, hot: HotValues,
          handles: Mapping[str, Any]):
    if handles:
        raise ValueError(f"placement 'fused' runs every stage here; got stage handles {sorted(handles)}")
    model = ModelStages.start(registry_root, dataset, catalog, hot)
    ranker = Ranker(registry_root, model.holder, lookup=model.candidates.model_for)
    return LocalStages(model.candidates, ranker, model.holder.status), model.apply


def split(registry_root: Path, dataset: str | Path, catalog: ServingCatalog, hot: HotValues,
          handles: Mapping[str, Any]):
    missing = [role for role in STAGE_HANDLES if role not in handles]
    if missing or set(handles) - set(STAGE_HANDLES):
        raise ValueError(f"placement 'split' needs exactly the stage handles {list(STAGE_HANDLES)}, "
                         f"got {sorted(handles)}")
    return RemoteStages(handles["candidates"], handles["scorer"]), (lambda hot: None)  # they reconfigure themselves


# placement -> (registry root, dataset, catalog, hot values, stage handles)
#           -> (Stages, apply(hot values) to this replica's stages)
PLACEMENTS = {"fused": fused, "split": split}
