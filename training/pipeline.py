"""The recommendation pipeline: candidate sources -> multi-objective XGBoost ranker.

Fitting is two-stage, as in production: the ranker learns from what the sources proposed on an
inner split (each member's last `holdout` training interactions are the labels, the sources fit
on the rest), then the sources refit on everything and the ranker orders their candidates. Labels:
play (the title was in the held-out interactions) and completion (a strong interaction: completed
on the world, rated 4+ on MovieLens); the final score is a weighted sum of both likelihoods.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

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


OBJECTIVES = ("play", "completion")  # the ranker's two boosters, fitted in one training run


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


def _start_ray_run():
    """A Ray Train run sized to what the cluster can give now (a worker asking for more CPUs than
    are free, serving actors holding fractions, would wait forever for its placement group),
    started now: its start-up overlaps the retrieval work that builds its rows. It leaves spare
    workers for the next run only on a cluster that outlives this process (one it joined): the
    spares of a cluster that ends with the retrain would only take CPU from its evaluation."""
    import math

    import ray

    from training.ray_train_startup import local_raylet_pid
    from training.xgb_train import RayTrainRun

    if not ray.is_initialized():
        ray.init()
    free = ray.available_resources().get("CPU", 1.0)
    cpus = max(1, min(int(math.floor(free + 1e-9)), int(ray.cluster_resources().get("CPU", 1))))
    return RayTrainRun(num_workers=1, cpus_per_worker=cpus, spares=local_raylet_pid() is None)


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
    columns["title"] = candidates.titles
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

    def ranker_specs(self, feature_names: list[str], nthread: int | None = None) -> dict:
        """The TrainSpec of each objective (the same features, one label each)."""
        from training.xgb_train import TrainSpec

        cfg = self.config
        params = {**cfg.params, "seed": cfg.seed, **({} if nthread is None else {"nthread": nthread})}
        return {objective: TrainSpec(features=list(feature_names), label=objective, params=dict(params),
                                     num_boost_round=cfg.rounds, seed=cfg.seed)
                for objective in OBJECTIVES}

    def ranker_examples(self, data: TrainData) -> pa.Table:
        """The ranker's training rows: the sources fitted on the inner split propose candidates
        for its members; each row has every ranker feature, the member and title indices, and
        both labels (play, completion)."""
        cfg = self.config
        inner, labels, strong_labels = holdout_last(data, cfg.holdout, cfg.min_interactions)
        candidates = self._builder(inner).build(np.array(sorted(labels)))
        play = _label(candidates, labels)
        return _table(candidates, play=play,
                      completion=_label(candidates, strong_labels) if strong_labels else play)

    def fit(self, data: TrainData) -> "Pipeline":
        from training.xgb_train import train_local_many

        cfg = self.config
        started = time.perf_counter()
        # On Ray the training run starts first: Ray Train's start-up (its own processes) needs
        # nothing from the rows, so it runs while the sources below build them.
        run = _start_ray_run() if cfg.engine == "ray" else None
        try:
            table = self.ranker_examples(data)
        except BaseException as exc:
            if run is not None:
                run.abort(f"the ranker's rows could not be built: {exc}")
            raise
        self.feature_names_ = [c for c in table.column_names if c not in ("member", "title", *OBJECTIVES)]
        play = table.column("play").to_numpy()
        self.timeline_ = {"retrieval_inner": time.perf_counter() - started}
        specs = self.ranker_specs(self.feature_names_)
        # Both objectives in one run (one Ray Train start-up). The run mostly waits on other
        # processes or runs xgboost outside the GIL, so the sources refit on all the data
        # meanwhile; neither reads the other's results.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ranker-fit") as pool:
            if run is not None:
                run.feed(table, specs)
                running = pool.submit(run.result, since=started)
            else:
                running = pool.submit(train_local_many, table, specs)
            refit_started = time.perf_counter()
            self.serving_ = self._builder(data)
            self.timeline_["retrieval_full"] = time.perf_counter() - refit_started
            results = running.result()
        self.boosters_ = {objective: results[objective].booster for objective in OBJECTIVES}
        first = results[OBJECTIVES[0]]
        self.training_ = {"rows": table.num_rows, "positives": float(play.sum()), "engine": first.engine,
                          "seconds": {"run": round(first.seconds, 3),
                                      **{o: round(results[o].stages["train"], 3) for o in OBJECTIVES}}}
        if run is not None:  # []: the training worker started without a runtime_env (ray_train_startup)
            self.training_["worker_env_vars"] = run.worker_env_vars
        per_model = ("split", "dmatrix", "train")
        self.ranker_stages_ = {**{k: v for k, v in first.stages.items() if k not in per_model},
                               **{f"{o}.{k}": results[o].stages[k] for o in OBJECTIVES for k in per_model}}
        # from the run's start: overlaps retrieval_inner (on Ray) and retrieval_full
        self.timeline_["ranker_fit"] = time.perf_counter() - started
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
