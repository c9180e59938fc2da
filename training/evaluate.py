"""`marquee eval`: the pipeline and the strongest simple peers on the same split, side by side.

The protocol is fixed (training/protocol.py) so numbers compare across runs and datasets. Every
model fits on the same TrainData and is scored by the same code; the pipeline is the model named
`pipeline`. Datasets: `movielens:PATH` (either layout) or `world:DIR` (a Marquee dataset).
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
from models.protocol import evaluate, temporal_split
from models.ranker_features import StoreLink
from models.retrieval import TitleContent


@dataclass
class EvalData:
    """Interactions (member_id, title_id, timestamp, strong) plus what titles are."""

    name: str
    interactions: pa.Table
    titles: pa.Table  # title_id, genres (list<string>), release_year, maturity


def load_eval_data(spec: str) -> EvalData:
    """`movielens:PATH` or `world:DIR` (any Marquee dataset directory)."""
    parsed = DatasetSpec.parse(spec, allow_bare_world=False)
    location = str(parsed.location)
    if parsed.kind == "movielens":
        from producers.movielens.importer import load_movielens

        ml = load_movielens(location)
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
        return EvalData(f"movielens:{Path(location).name}", interactions, titles)
    from marquee.dataset import load_dataset

    dataset = load_dataset(location)
    events = dataset.events(columns=["member_id", "title_id", "timestamp", "type"])
    plays = events.filter(pc.equal(events.column("type"), "play"))
    done = events.filter(pc.equal(events.column("type"), "completion"))
    done_keys = set(zip(done.column("member_id").to_pylist(), done.column("title_id").to_pylist()))
    strong = [(m, t) in done_keys for m, t in zip(plays.column("member_id").to_pylist(),
                                                    plays.column("title_id").to_pylist())]
    interactions = pa.table({
        "member_id": plays.column("member_id"),
        "title_id": plays.column("title_id"),
        "timestamp": plays.column("timestamp"),
        "strong": pa.array(strong),
    })
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


def run_eval(spec: str, *, models: list[str] | None = None, engine: str = "local", seed: int = 7,
             features: str | Path | None = None, progress=None) -> dict:
    """Fit every model on the same split and evaluate; returns the JSON-ready report."""
    from models.peers import default_peers
    from models.pipeline_config import PipelineConfig
    from training.pipeline import Pipeline

    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    say = progress or (lambda message: None)
    data = load_eval_data(spec)
    split = temporal_split(data.interactions)
    train = split.train_data()
    content = title_content(data.titles, split.title_ids)
    store = StoreLink(str(features), split.member_ids, split.title_ids) if features else None
    pipeline = Pipeline(PipelineConfig(engine=engine, seed=seed), content, store)
    candidates = {**default_peers(seed), "pipeline": pipeline}
    chosen = models or list(candidates)
    unknown = [m for m in chosen if m not in candidates]
    if unknown:
        raise ValueError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(candidates)}")
    report: dict = {
        "dataset": data.name,
        "protocol": {"holdout": 10, "min_interactions": 20, "k_ndcg": 10, "k_recall": 20},
        "members_evaluated": int(len(split.test_members)),
        "members": int(split.n_members),
        "titles": int(split.n_titles),
        "train_interactions": int(split.train.nnz),
        "models": {},
    }
    for name in chosen:
        say(f"eval: fitting {name} ...")
        started = time.perf_counter()
        model = candidates[name].fit(train)
        fit_s = time.perf_counter() - started
        metrics = evaluate(split, model.score, title_genres=content.genres)
        report["models"][name] = {**_json_numbers(metrics.as_dict()), "fit_s": round(fit_s, 2),
                                  "eval_s": round(time.perf_counter() - started - fit_s, 2)}
        say(f"eval: {name} ndcg@10={metrics.ndcg_at_10:.4f} recall@20={metrics.recall_at_20:.4f}")
    peers = {k: v for k, v in report["models"].items() if k != "pipeline"}
    if "pipeline" in report["models"] and peers:
        best = max(peers, key=lambda k: peers[k]["ndcg@10"])
        report["best_peer"] = best
        report["pipeline_vs_best_peer_ndcg"] = round(
            report["models"]["pipeline"]["ndcg@10"] / max(peers[best]["ndcg@10"], 1e-12), 4)
    return report


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
                        help="offline feature store of this dataset (marquee features --out DIR): "
                             "the ranker also reads its member/title features, point in time")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cli_main(args: argparse.Namespace) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    try:
        report = run_eval(args.dataset, models=models, engine=args.engine, seed=args.seed,
                          features=args.features,
                          progress=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as exc:
        print(f"marquee eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, sort_keys=True, allow_nan=False))
    else:
        for name, metrics in report["models"].items():
            print(f"{name:12s} ndcg@10 {metrics['ndcg@10']:.4f}  recall@20 {metrics['recall@20']:.4f}  "
                  f"coverage {metrics['coverage@10']:.3f}  fit {metrics['fit_s']:.1f}s")
    return 0
