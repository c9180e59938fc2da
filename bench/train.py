"""`marquee bench train`: XGBoost through Ray Train against plain xgboost.train, same rows.

One seeded synthetic ranking-like table (numeric features, a binary label with a learnable
signal, contiguous groups of ~50 rows) is generated ONCE; then each repeat trains it with
`train_local` (plain xgboost.train, the baseline) and `train_ray` (Ray Train's XGBoostTrainer),
with the same params, after one untimed warm-up of each on a small slice. Prints one JSON
object on stdout (progress on stderr): medians over --repeats, `overhead_ratio` =
ray_train_s / plain_s (target <= 1.5 at 1 M rows), the Ray stage breakdown, and a check that
both models agree (AUC of each on a held-out slice). It also records the Ray Train settings
train_ray ran with and the 1-minute load average before and after: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from bench.report import emit, progress

TARGET_OVERHEAD_RATIO = 1.5
GROUP_SIZE = 50
CLUSTER_CPUS = 2  # ray.init(num_cpus=2): the machine this project is measured on


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows (default 1000000)")
    parser.add_argument("--features", type=int, default=30, help="numeric features (default 30)")
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine; times are medians (default 3)")
    parser.add_argument(
        "--objective", default="binary:logistic", choices=("binary:logistic", "rank:ndcg", "rank:pairwise"),
        help="xgboost objective (default binary:logistic); rank:* trains on the group column",
    )
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers (default 1)")
    parser.add_argument("--cpus-per-worker", type=int, default=2, help="CPUs per Ray Train worker (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the result as one compact JSON line")


def cli_main(args: argparse.Namespace) -> int:
    for name in ("rows", "features", "rounds", "repeats", "workers", "cpus_per_worker"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.workers * args.cpus_per_worker > CLUSTER_CPUS:
        print(f"--workers x --cpus-per-worker must fit the benchmark's {CLUSTER_CPUS}-CPU cluster, "
              f"got {args.workers} x {args.cpus_per_worker}", file=sys.stderr)
        return 2
    if args.rows < 2 * GROUP_SIZE:
        print(f"--rows must be >= {2 * GROUP_SIZE}, got {args.rows}", file=sys.stderr)
        return 2
    result = run(
        rows=args.rows,
        features=args.features,
        rounds=args.rounds,
        repeats=args.repeats,
        objective=args.objective,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        seed=args.seed,
    )
    return emit(result, args.json)


_progress = progress("train")


def make_table(rows: int, features: int, seed: int):
    """Seeded ranking-like rows: float32 features f0.., a binary `label` whose log-odds depend on
    a few features (one interaction, one threshold) plus a per-group offset, and contiguous
    `group_id`s of GROUP_SIZE rows."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features), dtype=np.float32)
    group = np.arange(rows, dtype=np.int64) // GROUP_SIZE
    group_offset = rng.normal(0.0, 0.5, size=int(group[-1]) + 1).astype(np.float32)[group]
    signal = 1.5 * x[:, 0] - 1.0 * x[:, 1 % features] + 0.8 * x[:, 2 % features] * x[:, 3 % features]
    signal += 1.0 * (x[:, 4 % features] > 0.5) + group_offset - 1.0
    label = (rng.random(rows, dtype=np.float32) < 1.0 / (1.0 + np.exp(-signal))).astype(np.int8)
    columns = {f"f{i}": x[:, i] for i in range(features)}  # column views: Arrow copies each once
    columns["label"] = label
    columns["group_id"] = group
    return pa.table(columns)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks)."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    if (counts > 1).any():  # average ranks within ties
        average = first + (counts + 1) / 2.0
        ranks[order] = np.repeat(average, counts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def _median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    names = [name for name in runs[0] if all(name in r for r in runs)]
    return {name: round(statistics.median(r[name] for r in runs), 4) for name in names}


def run(
    *,
    rows: int,
    features: int,
    rounds: int,
    repeats: int,
    objective: str = "binary:logistic",
    workers: int = 1,
    cpus_per_worker: int = 2,
    seed: int = 0,
) -> dict:
    import ray

    from training.xgb_train import RAY_TRAIN_DEFAULTS, TrainSpec, predict, train_local, train_ray

    holdout_rows = max(GROUP_SIZE * 20, min(rows // 10, 100_000))
    _progress(f"generating {rows} + {holdout_rows} held-out rows x {features} features (seed {seed})")
    t = time.perf_counter()
    table = make_table(rows + holdout_rows, features, seed)
    train, holdout = table.slice(0, rows), table.slice(rows)
    generate_s = time.perf_counter() - t

    params = {"objective": objective, "tree_method": "hist", "max_depth": 6, "eta": 0.1}
    spec = TrainSpec(
        features=[f"f{i}" for i in range(features)],
        label="label",
        params=params,
        num_boost_round=rounds,
        group="group_id" if objective.startswith("rank:") else None,
        seed=seed,
    )

    load_at_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    _progress(f"ray.init(num_cpus={CLUSTER_CPUS})")
    t = time.perf_counter()
    ray.init(num_cpus=CLUSTER_CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init_s = time.perf_counter() - t
    try:
        # Untimed warm-up on a small slice: a fresh cluster spends its first seconds starting
        # processes (measured: plain xgboost.train 15 s right after ray.init, 7.4 s 10 s later)
        # and the first Ray Train run also starts Ray Data's helper actors once per cluster.
        t = time.perf_counter()
        warm = train.slice(0, min(rows, 20 * GROUP_SIZE * 10))
        train_local(warm, spec)
        train_ray(warm, spec, num_workers=workers, cpus_per_worker=cpus_per_worker)
        warmup_s = time.perf_counter() - t
        _progress(f"warm-up (untimed) {warmup_s:.1f} s")
        plain, on_ray = [], []
        for repeat in range(repeats):  # interleaved, so machine noise hits both engines alike
            local_result = train_local(train, spec)
            plain.append(local_result)
            _progress(f"repeat {repeat + 1}/{repeats}: plain xgboost.train {local_result.seconds:.2f} s")
            ray_result = train_ray(train, spec, num_workers=workers, cpus_per_worker=cpus_per_worker)
            on_ray.append(ray_result)
            _progress(f"repeat {repeat + 1}/{repeats}: Ray Train {ray_result.seconds:.2f} s")
    finally:
        ray.shutdown()
    load_at_end = os.getloadavg()[0]

    labels = holdout.column("label").to_numpy()
    plain_scores = predict(plain[-1].booster, holdout, spec.features)
    ray_scores = predict(on_ray[-1].booster, holdout, spec.features)
    plain_s = statistics.median(r.seconds for r in plain)
    ray_train_s = statistics.median(r.seconds for r in on_ray)
    auc_plain, auc_ray = auc(labels, plain_scores), auc(labels, ray_scores)
    return {
        "benchmark": "train",
        "rows": rows,
        "features": features,
        "rounds": rounds,
        "objective": objective,
        "repeats": repeats,
        "workers": workers,
        "cpus_per_worker": cpus_per_worker,
        "generate_s": round(generate_s, 3),
        "ray_init_s": round(ray_init_s, 3),
        "warmup_s": round(warmup_s, 3),
        "plain_s": round(plain_s, 3),
        "ray_train_s": round(ray_train_s, 3),
        "overhead_ratio": round(ray_train_s / plain_s, 3),
        "target_overhead_ratio": TARGET_OVERHEAD_RATIO,
        "meets_target": ray_train_s / plain_s <= TARGET_OVERHEAD_RATIO,
        "plain_runs_s": [round(r.seconds, 3) for r in plain],
        "ray_train_runs_s": [round(r.seconds, 3) for r in on_ray],
        "plain_stages_s": _median_stages([r.stages for r in plain]),
        "ray_stages_s": _median_stages([r.stages for r in on_ray]),
        "holdout_rows": holdout.num_rows,
        "auc_plain": round(auc_plain, 5),
        "auc_ray": round(auc_ray, 5),
        "auc_abs_diff": round(abs(auc_plain - auc_ray), 5),
        "prediction_correlation": round(float(np.corrcoef(plain_scores, ray_scores)[0, 1]), 6),
        "models_agree": abs(auc_plain - auc_ray) <= 0.005,
        "ray_train_settings": {name: os.environ.get(name, value) for name, value in RAY_TRAIN_DEFAULTS.items()},
        "load_avg_1m": [round(load_at_start, 2), round(load_at_end, 2)],
    }
