"""`marquee eval`: the pipeline and the strongest simple peers on the same split, side by side.

The protocol is fixed (models/protocol.py) so numbers compare across runs and datasets. Every
model's settings are chosen on the validation split with the same budget (training/tuning.py);
then it fits on the full training data and is scored on test once. The pipeline is the model
named `pipeline`. Datasets: `movielens:PATH` (either layout) or `world:DIR` (a Marquee dataset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from marquee.dataset_spec import DatasetSpec
from marquee.home import Paths
from models import sasrec
from models.protocol import evaluate, temporal_split, validation_split
from models.ranker_features import StoreLink
from models.retrieval import TitleContent
from producers.movielens.importer import add_drop_unknown_items_flag, dropped_unknown_items_note
from training.point_in_time import build_training_store, completions, strong_as_of_point_in_time
from training.sources import marquee_dataset_dir
from training.tuning import (
    CONFIGS_PER_MODEL,
    SASREC_CONFIGS,
    SELECTED_BY,
    ModelGrid,
    budget_of,
    peer_grids,
    pipeline_grid,
    sasrec_grid,
    tune,
)


@dataclass
class EvalData:
    """Interactions (member_id, title_id, timestamp, strong) plus what titles are."""

    name: str
    interactions: pa.Table
    titles: pa.Table  # title_id, genres (list<string>), release_year, maturity
    dropped_ratings_unknown_item: int | None = None  # movielens: ratings of items not in the movie file
    unknown_item_ids: tuple[int, ...] = ()


def load_eval_data(spec: str, *, drop_unknown_items: bool = False) -> EvalData:
    """`movielens:PATH` or `world:DIR` (any Marquee dataset directory)."""
    parsed = DatasetSpec.parse(spec, allow_bare_world=False)
    location = str(parsed.location)
    if parsed.kind == "movielens":
        from producers.movielens.importer import load_movielens

        ml = load_movielens(location, drop_unknown_items=drop_unknown_items)
        ratings = ml.ratings
        interactions = pa.table({
            "member_id": ratings.column("user_id"),
            "title_id": ratings.column("item_id"),
            "timestamp": ratings.column("timestamp"),
            "strong": pc.greater_equal(ratings.column("rating"), 4.0),  # a liked title
        })
        items = ml.items
        titles = pa.table({
            "title_id": items.column("item_id"),
            "genres": items.column("genres"),
            "release_year": items.column("year"),
            "maturity": pa.array(np.zeros(items.num_rows, dtype=np.int8)),
        })
        return EvalData(f"movielens:{Path(location).name}", interactions, titles,
                        ml.stats["dropped_ratings_unknown_item"], tuple(ml.unknown_item_ids))
    from marquee.dataset import load_dataset

    dataset = load_dataset(location)
    events = dataset.events(columns=["member_id", "title_id", "timestamp", "type"])
    plays = events.filter(pc.equal(events.column("type"), "play"))
    # strong = completed by the member's point in time (a later completion is not known then)
    interactions = strong_as_of_point_in_time(plays.select(["member_id", "title_id", "timestamp"]),
                                              completions(events))
    titles = dataset.titles.select(["title_id", "genres", "release_year", "maturity"])
    return EvalData(f"world:{Path(location).name}", interactions, titles)


def title_content(titles: pa.Table, title_ids: np.ndarray) -> TitleContent:
    """TitleContent aligned to the split's title indices (unknown titles get empty content)."""
    position = {int(t): i for i, t in enumerate(titles.column("title_id").to_pylist())}
    vocabulary = sorted({g for gs in titles.column("genres").to_pylist() for g in (gs or [])})
    genre_index = {g: i for i, g in enumerate(vocabulary)}
    genres = titles.column("genres").to_pylist()
    years = titles.column("release_year").to_pylist()
    maturity = titles.column("maturity").to_pylist()
    rows, cols, year_out, maturity_out = [], [], np.full(len(title_ids), np.nan), np.zeros(len(title_ids), dtype=int)
    for i, title in enumerate(title_ids):
        at = position.get(int(title))
        if at is None:
            continue
        for g in genres[at] or []:
            rows.append(i)
            cols.append(genre_index[g])
        year_out[i] = years[at] if years[at] is not None else np.nan
        maturity_out[i] = maturity[at] or 0
    matrix = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(title_ids), max(len(vocabulary), 1)))
    return TitleContent(matrix, year_out, maturity_out)


def model_grids(content: TitleContent, store: StoreLink | None, *, engine: str, seed: int) -> dict[str, ModelGrid]:
    """Every model `marquee eval` knows, each with its defaults and its tuning grid."""
    from models.pipeline_config import PipelineConfig
    from training.pipeline import Pipeline

    def build_pipeline(settings: dict) -> Pipeline:
        base = PipelineConfig()
        config = PipelineConfig(engine=engine, seed=seed, rounds=settings["rounds"], depth=dict(settings["depth"]),
                                params={**base.params, "max_depth": settings["max_depth"]})
        return Pipeline(config, content, store)

    base = PipelineConfig()
    grids = {**peer_grids(seed),
             "pipeline": pipeline_grid(build_pipeline, {"rounds": base.rounds, "max_depth": base.params["max_depth"],
                                                        "depth": dict(base.depth)})}
    if sasrec.available():
        grids["sasrec"] = sasrec_grid(lambda s: sasrec.SASRec(**s, random_state=seed))
    return grids


def run_eval(spec: str, *, models: list[str] | None = None, engine: str = "local", seed: int = 7,
             features: str | Path | None = None, tune_settings: bool = True,
             grids: dict[str, ModelGrid] | None = None, progress=None,
             drop_unknown_items: bool = False) -> dict:
    """Tune every model on the validation split (unless `tune_settings` is off: defaults), refit
    it on the full training data with the chosen settings, and score the test split once.
    `grids` replaces the stated grids (tests use tiny ones); returns the JSON-ready report."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    say = progress or (lambda message: None)
    data = load_eval_data(spec, drop_unknown_items=drop_unknown_items)
    if data.dropped_ratings_unknown_item:
        say(f"eval: {dropped_unknown_items_note(data.dropped_ratings_unknown_item, list(data.unknown_item_ids))}")
    split = temporal_split(data.interactions)
    validation = validation_split(split)
    train = split.train_data()
    content = title_content(data.titles, split.title_ids)
    store = None
    if features:  # built here from the split's training events only: no held-out row of anyone
        say(f"eval: building the feature store from the training events into {features}")
        built = build_training_store(marquee_dataset_dir(spec, Paths(), drop_unknown_items=drop_unknown_items), split, Path(features), engine="arrow")
        store = StoreLink(str(features), split.member_ids, split.title_ids, built.version)
    known = grids if grids is not None else model_grids(content, store, engine=engine, seed=seed)
    every = [*known] if "sasrec" in known else [*known, "sasrec"]
    chosen = models or every
    unknown = [m for m in chosen if m not in every]
    if unknown:
        raise ValueError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(every)}")
    report: dict = {
        "dataset": data.name,
        "dataset_loading": {"drop_unknown_items": drop_unknown_items,
                            "dropped_ratings_unknown_item": data.dropped_ratings_unknown_item,
                            "unknown_item_ids": list(data.unknown_item_ids[:20])},
        "protocol": {"holdout": 10, "min_interactions": 20, "k_ndcg": 10, "k_recall": 20},
        "members_evaluated": int(len(split.test_members)),
        "members": int(split.n_members),
        "titles": int(split.n_titles),
        "train_interactions": int(split.train.nnz),
        "tuning": {
            "tuned": tune_settings, "selected_by": SELECTED_BY, "seed": seed,
            "configs_per_model": CONFIGS_PER_MODEL, "budget": budget_of({m: known[m] for m in chosen if m in known}),
            "validation": {"holdout": 10, "members": int(len(validation.test_members)),
                           "train_interactions": int(validation.train.nnz)},
            "note": "popularity has no setting (1 configuration); "
                    f"sasrec gets {len(SASREC_CONFIGS)} (minutes a fit here)",
        },
        "models": {},
        "skipped": {},
    }
    for name in chosen:
        if name not in known:
            say(f"eval: {sasrec.MISSING}")
            report["skipped"][name] = sasrec.MISSING
            continue
        report["models"][name] = _run_model(known[name], split, validation, train, content, tune_settings, say)
    peers = {k: v for k, v in report["models"].items() if k != "pipeline"}
    if "pipeline" in report["models"] and peers:
        best = max(peers, key=lambda k: peers[k]["test"]["ndcg@10"])
        report["best_peer"] = best
        report["pipeline_vs_best_peer_ndcg"] = round(
            report["models"]["pipeline"]["test"]["ndcg@10"] / max(peers[best]["test"]["ndcg@10"], 1e-12), 4)
    return report


def _run_model(grid: ModelGrid, split, validation, train, content: TitleContent, tune_settings: bool, say) -> dict:
    """Tune on validation (or take the defaults), then one fit on all training and one test score."""
    started = time.perf_counter()
    entry: dict = {"tuned": tune_settings}
    if tune_settings:
        say(f"eval: tuning {grid.name} on validation ({len(grid.configs)} configurations) ...")
        tuned = tune(grid, validation, progress=say)
        settings = tuned.settings
        entry["validation"] = {"ndcg@10": round(tuned.best.ndcg_at_10, 5), "recall@20": round(tuned.best.recall_at_20, 5),
                               "members": int(len(validation.test_members))}
        entry["grid"] = [trial.as_dict() for trial in tuned.trials]
    else:
        settings = grid.defaults
        entry["validation"] = None
        entry["grid"] = []
    entry["settings"] = settings
    entry["tune_s"] = round(time.perf_counter() - started, 2)
    say(f"eval: fitting {grid.name} {settings} on all training ...")
    started = time.perf_counter()
    model = grid.build(settings).fit(train)
    entry["fit_s"] = round(time.perf_counter() - started, 2)
    metrics = evaluate(split, model.score, title_genres=content.genres)
    entry["eval_s"] = round(time.perf_counter() - started - entry["fit_s"], 2)
    entry["test"] = _json_numbers(metrics.as_dict())
    say(f"eval: {grid.name} test ndcg@10={metrics.ndcg_at_10:.4f} recall@20={metrics.recall_at_20:.4f}")
    return entry


def _json_numbers(metrics: dict) -> dict:
    """NaN is not JSON (strict parsers reject `NaN`): an undefined metric, such as diversity with
    no genres or no evaluated members, is reported as null."""
    return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in metrics.items()}


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="movielens:PATH (either layout) or world:DIR")
    parser.add_argument("--models", default=None, help="comma-separated subset (default: all peers and pipeline)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="train the pipeline's ranker with plain xgboost or Ray Train")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--features", default=None,
                        help="directory to build a feature store in from the split's training "
                             "events only (no held-out row of anyone): the ranker also reads its "
                             "member/title features, point in time")
    parser.add_argument("--no-tune", action="store_true",
                        help="skip tuning on validation: every model fits once with its defaults (quick)")
    add_drop_unknown_items_flag(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cli_main(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    try:
        report = run_eval(args.dataset, models=models, engine=args.engine, seed=args.seed,
                          features=args.features, tune_settings=not args.no_tune,
                          progress=lambda m: print(m, file=sys.stderr, flush=True),
                          drop_unknown_items=args.drop_unknown_items)
    except (ValueError, FileNotFoundError) as exc:
        print(f"marquee eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, sort_keys=True, allow_nan=False))
    else:
        for name, entry in report["models"].items():
            test, valid = entry["test"], entry["validation"]
            shown = f"validation ndcg@10 {valid['ndcg@10']:.4f}  " if valid else ""
            print(f"{name:12s} {shown}test ndcg@10 {test['ndcg@10']:.4f}  recall@20 {test['recall@20']:.4f}  "
                  f"coverage {test['coverage@10']:.3f}  settings {json.dumps(entry['settings'], sort_keys=True)}")
        for name, why in report["skipped"].items():
            print(f"{name:12s} {why}")
    return 0
