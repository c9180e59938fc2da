"""Model bundles for tests: a small fitted pipeline written as a real bundle, and bundle
manifests with no model behind them (for registry mechanics that only read the catalog)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feature_data import random_dataset
from models.bundle import (FORMAT, FORMAT_VERSION, DatasetIdentity, ModelBundle, dataset_name, registry_files,
                           write_bundle)
from models.pipeline_config import PipelineConfig
from models.protocol import Split, temporal_split
from models.ranker_features import StoreLink
from state.registry import Registry
from training.evaluate import EvalData, load_eval_data, title_content
from training.features import run_feature_job
from training.pipeline import Pipeline

WORLD = DatasetIdentity.of_titles("world:world", range(1, 26))
MOVIELENS = DatasetIdentity.of_titles("movielens:ml-100k", range(1, 1683))


@dataclass
class Fitted:
    root: Path
    dataset: Path
    data: EvalData
    split: Split
    pipeline: Pipeline

    def bundle(self, name: str | None = None, extra_titles: tuple[int, ...] = ()) -> ModelBundle:
        """This fit as a bundle; `extra_titles` widens the catalog it claims (another catalog)."""
        catalog = np.concatenate([self.data.titles.column("title_id").to_numpy(), np.array(extra_titles, np.int64)])
        name = name or dataset_name(self.dataset)  # as retrain names a Marquee dataset
        return self.pipeline.bundle(name, catalog, self.split.title_ids, self.split.member_ids)


def fit_small_pipeline(root: Path, *, with_store: bool = True) -> Fitted:
    """30 members x 25 titles through the feature job (arrow engine) and an 8-round pipeline."""
    dataset, _ = random_dataset(root / "ds", n_events=6000, n_members=30, n_titles=25, days=12, seed=3)
    data = load_eval_data(f"world:{dataset}")
    split = temporal_split(data.interactions)
    link = None
    if with_store:
        result = run_feature_job(dataset, root / "features", engine="arrow")
        link = StoreLink(str(root / "features"), split.member_ids, split.title_ids, result.version)
    config = PipelineConfig(rounds=8, depth={"sequence": 8, "recency_ease": 8, "embedding": 5, "trending": 3,
                                             "content": 3})
    pipeline = Pipeline(config, title_content(data.titles, split.title_ids), link).fit(split.train_data())
    return Fitted(root, dataset, data, split, pipeline)


def register_bundle(registry: Registry, bundle: ModelBundle, out: Path, **kw) -> str:
    write_bundle(bundle, out)
    kw.setdefault("metrics", {})
    kw.setdefault("data_window", {})
    kw.setdefault("feature_schema_hash", "test")
    return registry.register(registry_files(out), **kw).version


def manifest_only(dataset: DatasetIdentity = WORLD) -> bytes:
    """A bundle manifest naming `dataset` and no files: enough for promote's catalog check."""
    import json

    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dataset": dataset.to_dict(),
                "features": {"names": [], "schema_hash": ""}, "config": {}, "versions": {}, "builder": {},
                "sources": [], "boosters": {}, "arrays": {}, "files": {}}
    return json.dumps(manifest).encode()
