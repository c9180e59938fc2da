"""The recommendation pipeline: candidate sources -> multi-objective XGBoost ranker.

Fitting is two-stage, as in production: the ranker learns from what the sources proposed on an
inner split (each member's last `holdout` training interactions are the labels, the sources fit
on the rest), then the sources refit on everything and the ranker orders their candidates. Labels:
play (the title was in the held-out interactions) and completion (a strong interaction: completed
on the world, rated 4+ on MovieLens); the final score is a weighted sum of both likelihoods.
"""

from __future__ import annotations


import numpy as np
import pyarrow as pa

from models.bundle import ModelBundle
from models.pipeline_config import PipelineConfig
from models.protocol import TrainData
from models.ranker_features import Candidates, FeatureBuilder, SnapshotFeatures, StoreLink
from models.retrieval import (
    ContentBased,
    Embeddings,
    RecencyEASE,
    RecentPopularity,
    SequentialCooccurrence,
    TitleContent,
)


def build_sources(content: TitleContent | None, seed: int) -> dict:
    sources = {
        "sequence": SequentialCooccurrence(),
        "recency_ease": RecencyEASE(),
        "embedding": Embeddings(seed=seed),
        "trending": RecentPopularity(days=7),
    }
    if content is not None:
        sources["content"] = ContentBased(content)
    return sources


def _ray_trainer():
    """train_ray sized to what the cluster can give now: a worker asking for more CPUs than are
    free (serving actors hold fractions) would wait forever for its placement group."""
    import math

    import ray

    from training.xgb_train import train_ray

    if not ray.is_initialized():
        ray.init()
    free = ray.available_resources().get("CPU", 1.0)
    cpus = max(1, min(int(math.floor(free + 1e-9)), int(ray.cluster_resources().get("CPU", 1))))
    return lambda table, spec: train_ray(table, spec, num_workers=1, cpus_per_worker=cpus)


def holdout_last(data: TrainData, holdout: int, min_rows: int) -> tuple[TrainData, dict[int, set[int]], dict[int, set[int]]]:
    """Inner split of training data: (data without each active member's last `holdout` rows,
    held-out titles per member, held-out strong titles per member)."""
    counts = np.bincount(data.members, minlength=data.shape[0])
    from_end = data.position_from_end()
    held = (counts[data.members] > min_rows) & (from_end < holdout)
    kept = TrainData.from_rows(data.members[~held], data.titles[~held], data.timestamps[~held], data.shape,
                               None if data.strong is None else data.strong[~held])
    labels: dict[int, set[int]] = {}
    strong: dict[int, set[int]] = {}
    strong_rows = data.strong
    for i in np.flatnonzero(held):
        member, title = int(data.members[i]), int(data.titles[i])
        labels.setdefault(member, set()).add(title)
        if strong_rows is not None and strong_rows[i]:
            strong.setdefault(member, set()).add(title)
    return kept, labels, strong


def _label(candidates: Candidates, sets: dict[int, set[int]]) -> np.ndarray:
    return np.fromiter((t in sets.get(m, ()) for m, t in zip(candidates.members.tolist(), candidates.titles.tolist())),
                       dtype=np.float32, count=len(candidates.members))


def _table(candidates: Candidates, **labels: np.ndarray) -> pa.Table:
    columns = {name: candidates.features[:, i] for i, name in enumerate(candidates.names)}
    columns["member"] = candidates.members
    columns.update(labels)
    return pa.table(columns)


class Pipeline:
    """fit(data) -> self; score(members) ranks every title (candidates first, ranker order)."""

    def __init__(self, config: PipelineConfig | None = None, content: TitleContent | None = None,
                 store: StoreLink | None = None):
        self.config = config or PipelineConfig()
        self.content = content
        self.store = store  # offline feature store: its member/title features join the ranker's

    def _builder(self, data: TrainData) -> FeatureBuilder:
        sources = build_sources(self.content, self.config.seed)
        for source in sources.values():
            source.fit(data)
        depth = {name: d for name, d in self.config.depth.items() if name in sources}
        return FeatureBuilder(data, sources, depth, strong=data.strong, store=self.store)

    def fit(self, data: TrainData) -> "Pipeline":
        from training.xgb_train import TrainSpec, train_local

        cfg = self.config
        inner, labels, strong_labels = holdout_last(data, cfg.holdout, cfg.min_interactions)
        builder = self._builder(inner)
        candidates = builder.build(np.array(sorted(labels)))
        self.feature_names_ = candidates.names
        play = _label(candidates, labels)
        table = _table(candidates, play=play, completion=_label(candidates, strong_labels) if strong_labels else play)
        train = _ray_trainer() if cfg.engine == "ray" else train_local
        self.boosters_ = {}
        self.training_ = {"rows": table.num_rows, "positives": float(play.sum()), "seconds": {}}
        for objective in ("play", "completion"):
            spec = TrainSpec(features=self.feature_names_, label=objective, params={**cfg.params, "seed": cfg.seed},
                             num_boost_round=cfg.rounds, seed=cfg.seed)
            result = train(table, spec)
            self.boosters_[objective] = result.booster
            self.training_["seconds"][objective] = round(result.seconds, 3)
        self.serving_ = self._builder(data)
        return self

    def bundle(self, dataset_name: str, catalog_title_ids: np.ndarray, title_ids: np.ndarray,
               member_ids: np.ndarray) -> ModelBundle:
        """What serving needs of this fitted pipeline, bound to the catalog it was trained on
        (`catalog_title_ids`: every title of that catalog; `title_ids`/`member_ids`: the fitted
        indices' external ids). The feature store, if linked, is frozen into a snapshot at the
        model's as-of, so the served model reads the features it was trained with."""
        builder = self.serving_
        snapshot = None
        if builder.store is not None:
            as_of = int(builder.data.timestamps.max()) if len(builder.data.timestamps) else 0
            snapshot = SnapshotFeatures(builder.store, as_of)
        served = FeatureBuilder(builder.data, builder.sources, builder.depth,
                                strong=builder.data.strong if builder._strong_key is not None else None,
                                store=builder.store, snapshot=snapshot)
        return ModelBundle(self.feature_names_, self.config, self.boosters_, served, title_ids, member_ids,
                           catalog_title_ids, dataset_name, dict(getattr(self, "training_", {})))

    def rank(self, members: np.ndarray) -> tuple[Candidates, np.ndarray]:
        """Candidates for `members` and their blended ranker scores."""
        import xgboost

        candidates = self.serving_.build(members)
        matrix = xgboost.DMatrix(candidates.features, feature_names=self.feature_names_)
        play = self.boosters_["play"].predict(matrix)
        completion = self.boosters_["completion"].predict(matrix)
        return candidates, self.config.play_weight * play + self.config.completion_weight * completion

    def score(self, members: np.ndarray) -> np.ndarray:
        members = np.asarray(members)
        candidates, blended = self.rank(members)
        out = np.full((len(members), self.serving_.data.shape[1]), -1e9)
        position = {int(m): i for i, m in enumerate(members)}
        rows = np.fromiter((position[int(m)] for m in candidates.members), dtype=np.int64, count=len(candidates.members))
        out[rows, candidates.titles] = blended
        return out
