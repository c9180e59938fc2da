"""One XGBoost training engine, two ways to run it: plain `xgboost.train` in this process
(`train_local`) or Ray Train's XGBoostTrainer (`train_ray`), on the same rows with the same
params, so the ranker can move to a cluster without changing its numbers.

Both engines share `_fit_boosters` (eval split, DMatrix, xgboost.train), so a 1-worker Ray run and
a local run see identical rows, split and parameters. Several models on the same rows (the
ranker's play and completion objectives) go through ONE run: `train_ray_many` fits them in the
same worker(s), reading the rows and building the DMatrix once (relabelled per model), so the fixed
cost below is paid once per retrain; `train_local_many` does the same in this process.

Why train_ray looks the way it does (measured on a 2-core machine, DESIGN.md section 4):
  * no per-iteration RayTrainReportCallback: each report is a round trip and made xgb.train 25x
    slower; the worker reports ONCE at the end (its metrics, no checkpoint);
  * the models come back as UBJSON bytes through the same mailbox actor the moment worker 0 has
    fitted them, so the caller does not wait for Ray Train's report, poll and teardown (~1 s
    here), which finish on the run's thread (`RayTrainRun.close`, `close_runs`);
  * the data reaches the worker as Arrow tables in the object store (no pandas, no Ray Dataset):
    the driver puts one contiguous shard per worker and hands the refs over through a mailbox
    actor; the worker reads them zero-copy and feeds the Arrow table straight into a
    QuantileDMatrix (xgboost reads Arrow columns without a copy). A Ray Dataset's shard hand-over
    waited for Ray Train's DatasetManager process (~1.2 s here); a ray.get of a ref does not;
  * the run can start before its rows exist (`RayTrainRun`: start, `feed` later): its start-up
    is fixed cost that does not read the rows, so a retrain overlaps it with retrieval;
  * xgboost's nthread is set to the worker's CPUs;
  * Ray Train's controller polls every 0.1 s and its preemption watcher is off
    (`_ray_train_settings`, user-set values win);
  * the run's storage_path is a temporary directory, removed when the run ends.

Where the fixed cost goes: Ray Train 2.60 as shipped starts fresh Python processes per fit, one
per actor, each ~1-3 CPU-s (interpreter, `import ray`, ray.train's imports of pandas, fsspec and
ray.data): its controller, then the controller's placement-group cleaner, synchronization actor and
training worker (the raylet starts at most num_cpus at once), a dataset manager, a preemption
watcher. `training.ray_train_lean` (why, in `training.ray_train_startup`) runs the same control
loop with three fewer: the controller on the run's thread in the driver (which has imported
ray.train already), so no controller process and no placement-group cleaner (it guards against
the controller's process dying while the driver lives); no dataset manager (train_ray gives the
trainer no datasets); and, on one node, a training worker without a runtime_env when it inherits
the settings anyway, so it skips setup_worker.py's second interpreter. What is left per fit: the
mailbox actor (a light module), the synchronization actor and the worker, the worker's imports of
ray.train and xgboost, the rabit tracker and the train fn shipped; from the report to fit()
returning, the poll interval and the worker and placement-group teardown. A larger
worker_maximum_startup_concurrency and a longer poll interval did not shorten the fit. The
worker's own spawn and imports go too when the raylet has a warm spare: a run that fitted leaves
one for the next (`training.spare_workers`; on one node, `RayTrainRun(spares=...)`).

The fixed cost does not shrink when the machine is quiet or the table small, so the ratio to
plain xgboost is worst there (`marquee bench train`, README Benchmarks): a retrain hides it by
starting the run ahead (`RayTrainRun`); for small tables train_local is faster.

Sharding and ranking: with a ranking objective (rank:ndcg, rank:pairwise, rank:map) every group
(query) must live whole on one worker, or its pairs are lost and NDCG is computed on fragments.
Ray Train's default split cuts rows evenly wherever a block boundary falls, so train_ray does
not use it: it cuts the data itself into `num_workers` contiguous shards at group boundaries and
gives each worker its own shard (rank i reads shards[i]). With one worker this is moot.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import tempfile
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xgboost

from marquee.settings import (
    assign,
    check_int,
    check_mapping,
    check_names,
    check_number,
    check_text,
    fail,
)
from training.ray_train_startup import RAY_TRAIN_DEFAULTS, Mailbox, local_raylet_environment
from training.spare_workers import prestart_spares, spare_runtime_envs

if TYPE_CHECKING:  # ray stays out of module import: `marquee --help` and unit tests stay light
    import ray.data

DEFAULT_MODEL_NAME = "model"  # train_ray's one model
log = logging.getLogger("marquee.xgb_train")
RANKING_OBJECTIVE_PREFIX = "rank:"


@dataclass(frozen=True)
class TrainSpec:
    """What to train: which columns are features, label, group (query id) and weight, plus
    xgboost params. Rows of one group must be contiguous (ranking objectives need a group)."""

    features: list[str]
    label: str
    params: dict
    num_boost_round: int = 100
    group: str | None = None  # query/group id column for ranking objectives; rows of one group contiguous
    weight: str | None = None  # per row; with a ranking objective it must be constant within a group
    eval_fraction: float = 0.0  # held-out fraction for the eval metric (whole groups when group is set)
    seed: int = 7
    early_stopping_rounds: int | None = None  # needs eval_fraction > 0

    def __post_init__(self) -> None:
        assign(self, "features", check_names("features", self.features, "column names"))
        check_text("label", self.label)
        for role in ("group", "weight"):
            if getattr(self, role) is not None:
                check_text(role, getattr(self, role))
        for role in ("label", "group", "weight"):
            column = getattr(self, role)
            if column is not None and column in self.features:
                raise fail(role, "a column that is not also a feature", column)
        check_mapping("params", self.params, "a dict of xgboost params")
        assign(self, "num_boost_round", check_int("num_boost_round", self.num_boost_round, ge=1))
        check_number("eval_fraction", self.eval_fraction, ge=0.0, lt=1.0)
        assign(self, "seed", check_int("seed", self.seed))
        if self.early_stopping_rounds is not None:
            assign(self, "early_stopping_rounds", check_int("early_stopping_rounds", self.early_stopping_rounds, ge=1))
            if self.eval_fraction <= 0:
                raise fail("early_stopping_rounds", "eval_fraction > 0 (a held-out set to watch)",
                           self.early_stopping_rounds)
        if self.is_ranking and self.group is None:
            raise fail("group", f"the query id column (objective {self.objective!r} is a ranking "
                       "objective, so set group)", self.group)

    @property
    def objective(self) -> str:
        return str(self.params.get("objective", "reg:squarederror"))

    @property
    def is_ranking(self) -> bool:
        return self.objective.startswith(RANKING_OBJECTIVE_PREFIX)

    @property
    def columns(self) -> list[str]:
        """Every column training reads, features first."""
        extra = [c for c in (self.label, self.group, self.weight) if c is not None]
        return self.features + extra


@dataclass
class TrainResult:
    """A trained booster plus where the time went. `stages` are seconds per stage; `evals` is
    xgboost's evals_result ({"eval": {metric: [per round]}}) when eval_fraction > 0."""

    booster: xgboost.Booster
    seconds: float
    stages: dict[str, float]
    engine: str
    evals: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- validation


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def validate_schema(schema: pa.Schema, spec: TrainSpec) -> None:
    """Fail before any work with an error naming the missing or non-numeric column."""
    names = set(schema.names)
    missing = [c for c in spec.columns if c not in names]
    if missing:
        roles = {spec.label: "label", spec.group: "group", spec.weight: "weight"}
        described = ", ".join(f"{c!r} ({roles.get(c, 'feature')})" for c in missing)
        raise KeyError(f"training data lacks column(s) {described}; it has {sorted(names)}")
    for column in spec.features:
        t = schema.field(column).type
        if not _is_numeric(t):
            raise TypeError(f"feature column {column!r} has type {t}; features must be numeric (int, float, bool)")
    for role in ("label", "weight"):
        column = getattr(spec, role)
        if column is not None and not _is_numeric(schema.field(column).type):
            raise TypeError(f"{role} column {column!r} has type {schema.field(column).type}; it must be numeric")


def _check_rows(table: pa.Table, spec: TrainSpec) -> None:
    if table.num_rows == 0:
        raise ValueError("training data has no rows")
    if table.column(spec.label).null_count:
        raise ValueError(f"label column {spec.label!r} has {table.column(spec.label).null_count} null(s)")
    if spec.group is not None and table.column(spec.group).null_count:
        raise ValueError(f"group column {spec.group!r} has null(s): every row needs a group id")


def group_runs(column: pa.ChunkedArray | pa.Array, name: str = "group") -> np.ndarray:
    """Start offsets of each contiguous run of equal group ids (plus the end offset).
    Raises if a group id appears in two separate runs (its rows are not contiguous)."""
    n = len(column)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    changed = pc.not_equal(column.slice(1), column.slice(0, n - 1))
    starts = np.flatnonzero(changed.to_numpy(zero_copy_only=False)) + 1
    bounds = np.concatenate([[0], starts, [n]]).astype(np.int64)
    run_ids = column.take(pa.array(bounds[:-1]))
    if len(pc.unique(run_ids)) != len(run_ids):
        raise ValueError(
            f"rows of one {name!r} id are not contiguous: sort or cluster the table by {name!r} before training"
        )
    return bounds


# --------------------------------------------------------------------------- the shared core


def split_eval(table: pa.Table, spec: TrainSpec) -> tuple[pa.Table, pa.Table | None]:
    """Seeded held-out split; whole groups go to eval when a group column is set, and rows keep
    their order so groups stay contiguous on both sides."""
    if spec.eval_fraction <= 0:
        return table, None
    rng = np.random.default_rng(spec.seed)
    if spec.group is not None:
        bounds = group_runs(table.column(spec.group), spec.group)
        n_units = len(bounds) - 1
    else:
        n_units = table.num_rows
    n_eval = min(max(1, round(spec.eval_fraction * n_units)), n_units - 1)
    if n_eval < 1:
        raise ValueError(
            f"eval_fraction={spec.eval_fraction} needs at least 2 {'groups' if spec.group else 'rows'}, got {n_units}"
        )
    chosen = np.zeros(n_units, dtype=bool)
    chosen[rng.choice(n_units, size=n_eval, replace=False)] = True
    if spec.group is not None:
        chosen = np.repeat(chosen, np.diff(bounds))
    mask = pa.array(chosen)
    return table.filter(pc.invert(mask)), table.filter(mask)


def _uses_quantile_dmatrix(params: dict) -> bool:
    # QuantileDMatrix sketches once and skips the raw copy; it serves hist (the default method).
    return params.get("tree_method", "hist") == "hist"


def build_dmatrix(
    table: pa.Table, spec: TrainSpec, *, nthread: int | None = None, ref: xgboost.DMatrix | None = None
) -> xgboost.DMatrix:
    """DMatrix straight from Arrow columns (xgboost reads them without a copy)."""
    features = table.select(spec.features)
    label = table.column(spec.label).to_numpy().astype(np.float32, copy=False)
    kwargs: dict[str, Any] = {"label": label, "nthread": nthread if nthread is not None else -1}
    weight = None if spec.weight is None else table.column(spec.weight).to_numpy().astype(np.float32, copy=False)
    if spec.group is not None:
        bounds = group_runs(table.column(spec.group), spec.group)
        kwargs["group"] = np.diff(bounds)
        if weight is not None and spec.is_ranking:
            per_group = weight[bounds[:-1]]
            if not np.array_equal(np.repeat(per_group, np.diff(bounds)), weight):
                raise ValueError(
                    f"weight column {spec.weight!r} varies within a group; ranking objectives take one weight per group"
                )
            weight = per_group
    if weight is not None:
        kwargs["weight"] = weight
    if _uses_quantile_dmatrix(spec.params):
        return xgboost.QuantileDMatrix(features, ref=ref, max_bin=spec.params.get("max_bin", 256), **kwargs)
    return xgboost.DMatrix(features, **kwargs)


def _matrix_key(spec: TrainSpec) -> tuple:
    """What the split and the matrices depend on besides the label: specs with equal keys (the
    ranker's play and completion objectives) share one split and one DMatrix, relabelled."""
    return (tuple(spec.features), spec.group, spec.weight, spec.is_ranking and spec.weight is not None,
            spec.eval_fraction, spec.seed if spec.eval_fraction > 0 else None,
            _uses_quantile_dmatrix(spec.params), spec.params.get("max_bin", 256))


def _label(table: pa.Table, spec: TrainSpec) -> np.ndarray:
    return table.column(spec.label).to_numpy().astype(np.float32, copy=False)


def _fit_boosters(
    table: pa.Table, specs: dict[str, TrainSpec], *, nthread: int | None
) -> dict[str, tuple[xgboost.Booster, dict, dict[str, float]]]:
    """Split, build matrices, train each spec in turn. Used unchanged by both engines (and by
    each Ray worker). Specs that differ only in label and params reuse the previous spec's split
    and matrices with the label swapped: the quantile sketch and the split never read the label,
    so the boosters are the ones separate fits would give, without a second DMatrix build."""
    out: dict[str, tuple[xgboost.Booster, dict, dict[str, float]]] = {}
    built_for, dtrain, deval, train_table, eval_table = None, None, None, None, None
    for name, spec in specs.items():
        stages: dict[str, float] = {}
        key = _matrix_key(spec)
        t = time.perf_counter()
        if key != built_for:
            train_table, eval_table = split_eval(table, spec)
            stages["split"] = time.perf_counter() - t
            t = time.perf_counter()
            dtrain = build_dmatrix(train_table, spec, nthread=nthread)
            deval = None if eval_table is None else build_dmatrix(eval_table, spec, nthread=nthread, ref=dtrain)
            built_for = key
        else:
            stages["split"] = 0.0
            dtrain.set_label(_label(train_table, spec))
            if deval is not None:
                deval.set_label(_label(eval_table, spec))
        stages["dmatrix"] = time.perf_counter() - t

        params = {"seed": spec.seed, **spec.params}
        if nthread is not None:
            params["nthread"] = nthread
        evals_result: dict = {}
        t = time.perf_counter()
        booster = xgboost.train(
            params,
            dtrain,
            num_boost_round=spec.num_boost_round,
            evals=[] if deval is None else [(deval, "eval")],
            evals_result=evals_result,
            early_stopping_rounds=spec.early_stopping_rounds,
            verbose_eval=False,
        )
        stages["train"] = time.perf_counter() - t
        out[name] = (booster, evals_result, stages)
    return out


def _check_specs(specs: dict[str, TrainSpec]) -> None:
    if not isinstance(specs, dict) or not specs:
        raise ValueError("specs: expected a non-empty dict of name -> TrainSpec")
    for name, spec in specs.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"specs: model name {name!r} must be a non-empty string without '/'")
        if not isinstance(spec, TrainSpec):
            raise TypeError(f"specs[{name!r}]: expected a TrainSpec, got {type(spec).__name__}")
    groups = {spec.group for spec in specs.values()}
    if len(groups) > 1:
        raise ValueError(f"specs: every model of one run needs the same group column, got {sorted(map(str, groups))}")


def _validate_table(table: pa.Table, specs: dict[str, TrainSpec]) -> None:
    """Every spec's columns present and numeric, and its rows usable (both engines, before any work)."""
    for spec in specs.values():
        validate_schema(table.schema, spec)
        _check_rows(table, spec)


def _columns(specs: dict[str, TrainSpec]) -> list[str]:
    """Every column any spec reads, in first-seen order."""
    return list(dict.fromkeys(c for spec in specs.values() for c in spec.columns))


# --------------------------------------------------------------------------- local engine


def train_local(table: pa.Table, spec: TrainSpec) -> TrainResult:
    """Plain xgboost.train in this process: the baseline and the no-cluster path."""
    return train_local_many(table, {"model": spec})["model"]


def train_local_many(table: pa.Table, specs: dict[str, TrainSpec]) -> dict[str, TrainResult]:
    """Several boosters on the same rows in this process, one after the other (what
    train_ray_many does inside its worker). `seconds` of each result is the whole run's."""
    start = time.perf_counter()
    if not isinstance(table, pa.Table):
        raise TypeError(f"train_local takes a pyarrow.Table, got {type(table).__name__}")
    _check_specs(specs)
    t = time.perf_counter()
    _validate_table(table, specs)
    validate_s = time.perf_counter() - t
    nthreads = {spec.params.get("nthread") for spec in specs.values()}
    fitted = _fit_boosters(table, specs, nthread=nthreads.pop() if len(nthreads) == 1 else None)
    seconds = time.perf_counter() - start
    return {name: TrainResult(booster, seconds, {"validate": validate_s, **stages}, "local", evals)
            for name, (booster, evals, stages) in fitted.items()}


# --------------------------------------------------------------------------- Ray Train engine


def shard_bounds(num_rows: int, num_shards: int, group_bounds: np.ndarray | None = None) -> list[int]:
    """Row offsets cutting [0, num_rows) into `num_shards` near-equal contiguous pieces; with
    group_bounds (run starts + end) every cut falls on a group boundary."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if num_rows < num_shards:
        raise ValueError(f"{num_rows} row(s) cannot be spread over {num_shards} workers")
    ideal = [round(i * num_rows / num_shards) for i in range(num_shards + 1)]
    if group_bounds is None:
        return ideal
    if len(group_bounds) - 1 < num_shards:
        raise ValueError(f"{len(group_bounds) - 1} group(s) cannot be spread over {num_shards} workers")
    cuts, previous = [0], 0
    last = len(group_bounds) - 1
    for i in range(1, num_shards):
        j = int(np.argmin(np.abs(group_bounds - ideal[i])))  # the group boundary nearest the ideal cut
        j = min(max(j, previous + 1), last - (num_shards - i))  # at least one group per shard
        cuts.append(int(group_bounds[j]))
        previous = j
    cuts.append(num_rows)
    return cuts


def _dataset_schema(ds: "ray.data.Dataset") -> pa.Schema:
    schema = ds.schema()
    if schema is None:
        raise ValueError("the training Dataset is empty (it has no schema)")
    fields = [
        pa.field(name, t if isinstance(t, pa.DataType) else pa.string())  # non-Arrow type: not numeric
        for name, t in zip(schema.names, schema.types)
    ]
    return pa.schema(fields)


Shards = list  # per worker rank, the ObjectRefs of its Arrow tables


def _shard_table(table: pa.Table, columns: list[str], group: str | None, num_workers: int) -> Shards:
    """One contiguous piece per worker (groups whole), each put in the object store once: only
    the columns training reads travel to the workers."""
    import ray

    table = table.select(columns)
    if num_workers == 1:
        return [[ray.put(table)]]
    groups = None if group is None else group_runs(table.column(group), group)
    cuts = shard_bounds(table.num_rows, num_workers, groups)
    # combine_chunks copies the slice: a sliced table would otherwise ship its whole buffers
    return [[ray.put(table.slice(cuts[rank], cuts[rank + 1] - cuts[rank]).combine_chunks())]
            for rank in range(num_workers)]


def _shard_dataset(ds: "ray.data.Dataset", columns: list[str], group: str | None, num_workers: int) -> Shards:
    """The Dataset's Arrow blocks, cut the same way. Runs before the fit starts: once the workers
    hold every CPU of a small cluster, Ray Data's read/map tasks would wait for a CPU forever."""
    import ray
    from ray.data.dataset import MaterializedDataset

    if not isinstance(ds, MaterializedDataset):
        # Keep the input's row order (Ray Data may reorder blocks otherwise): a ranking group's
        # rows must stay contiguous. The dataset's own context: a Dataset copies the current
        # DataContext when it is created, so setting the global one here changed nothing (the
        # order then held only while blocks happened to finish in order: a loaded machine broke it).
        options = ds.context.execution_options
        kept, options.preserve_order = options.preserve_order, True
        try:
            ds = ds.select_columns(columns).materialize()
        finally:
            options.preserve_order = kept
    if num_workers == 1:
        return [ds.to_arrow_refs()]
    groups = None
    if group is not None:
        ids = pa.concat_tables(ray.get(ds.select_columns([group]).to_arrow_refs())).column(group)
        groups = group_runs(ids, group)
    cuts = shard_bounds(ds.count(), num_workers, groups)
    return [piece.to_arrow_refs() for piece in ds.split_at_indices(cuts[1:-1])]


def _prepare(data: "pa.Table | ray.data.Dataset", specs: dict[str, TrainSpec], num_workers: int) -> tuple[Shards, dict]:
    """Validate `data` against every spec and cut it into per-worker shards in the object store."""
    import ray.data

    _check_specs(specs)
    columns, group = _columns(specs), next(iter(specs.values())).group
    t = time.perf_counter()
    if isinstance(data, pa.Table):
        _validate_table(data, specs)
        stages = {"validate": time.perf_counter() - t}
        t = time.perf_counter()
        shards = _shard_table(data, columns, group, num_workers)
    elif isinstance(data, ray.data.Dataset):
        schema = _dataset_schema(data)
        for spec in specs.values():
            validate_schema(schema, spec)
        stages = {"validate": time.perf_counter() - t}
        t = time.perf_counter()
        shards = _shard_dataset(data, columns, group, num_workers)
    else:
        raise TypeError(f"train_ray takes a pyarrow.Table or a ray.data.Dataset, got {type(data).__name__}")
    stages["prepare_data"] = time.perf_counter() - t
    return shards, stages


@contextmanager
def _ray_train_settings(defaults: dict[str, str] = RAY_TRAIN_DEFAULTS):
    """Set Ray Train's env-var settings for one fit; a value the user already set wins.

    * RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.1: the controller polls its workers every 2 s by
      default, so a finished run waited 1-2 s to be noticed (report-to-result 3.1 s; 0.2-0.3 s
      at 0.1 s). 0.25-1 s intervals did not shorten a 1 M-row fit: each poll is cheap, and the
      teardown wait grows by one to two intervals.
    * RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0: the watcher is a sixth actor process per fit that
      only logs node drains (spot preemption) and flags workers for get_preemption_info; it
      starts while the worker builds its DMatrix and burns ~1.1 CPU-s importing ray.train.

    Ray Train reads these from os.environ when fit() starts and propagates them to its
    controller and workers. Not thread-safe: concurrent fits in one process share os.environ."""
    added = [name for name in defaults if name not in os.environ]
    for name in added:
        os.environ[name] = defaults[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _train_loop_per_worker(config: dict) -> None:
    """Runs inside each Ray Train worker: wait for the rows (the run may start before they exist),
    read this worker's shard as Arrow, fit every spec with the shared core, report once with the
    models as a checkpoint (rank 0) and the timings."""
    import ray
    import ray.train

    started_at = time.time()
    nthread: int = config["nthread"]
    rank = ray.train.get_context().get_world_rank()

    t = time.perf_counter()
    parcel = ray.get(config["mailbox"].take.remote())
    if "abort" in parcel:
        raise RuntimeError(f"the training run was called off before its rows came: {parcel['abort']}")
    shared = {"waiting_for_rows": time.perf_counter() - t}
    specs: dict[str, TrainSpec] = parcel["specs"]

    t = time.perf_counter()
    blocks = ray.get(parcel["shards"][rank])  # zero-copy from the local object store
    if not blocks:
        raise ValueError(f"Ray Train worker {rank} received no rows")
    table = pa.concat_tables(blocks).select(_columns(specs))
    for spec in specs.values():
        _check_rows(table, spec)
    shared["ingest"] = time.perf_counter() - t

    fitted = _fit_boosters(table, specs, nthread=nthread)

    t = time.perf_counter()
    metrics = {
        "stages": shared,
        "models": {name: {"stages": stages, "evals": evals} for name, (_, evals, stages) in fitted.items()},
        "rows": table.num_rows,
        "started_at": started_at,
        "worker_env_vars": sorted((ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}),
        "worker_pid": os.getpid(),
    }
    if rank == 0:  # the models go straight back; Ray Train's report and teardown follow unwaited
        boosters = {name: bytes(booster.save_raw("ubj")) for name, (booster, _, _) in fitted.items()}
        shared["hand_back"] = time.perf_counter() - t
        metrics["delivered_at"] = time.time()
        ray.get(config["mailbox"].deliver.remote({"boosters": boosters, "metrics": metrics}))
    ray.train.report({"rows": table.num_rows})


def _check_scaling(num_workers: int, cpus_per_worker: int) -> None:
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ValueError(f"num_workers must be an int >= 1, got {num_workers!r}")
    if not isinstance(cpus_per_worker, int) or cpus_per_worker < 1:
        raise ValueError(f"cpus_per_worker must be an int >= 1, got {cpus_per_worker!r}")


class RayTrainRun:
    """One XGBoostTrainer run, started before its rows exist, returning its models before Ray
    Train has torn down.

    Why: Ray Train's fixed start-up (fresh processes for its controller and workers, see the
    module docstring) does not depend on the rows, so a retrain starts the run first and builds
    the ranker's rows meanwhile; `feed` hands the rows over (the workers wait at a mailbox actor),
    `result` waits for the boosters. The rows travel as Arrow tables in the object store, not as
    Ray Datasets: a Dataset's shard hand-over waits for Ray Train's DatasetManager process, an
    ObjectRef does not. The models come back the same way: worker 0 delivers them to the mailbox
    as soon as they are fitted, so `result` does not wait for Ray Train's report, poll interval
    and worker-group teardown (~1 s here), which go on on the run's thread; `close` (or leaving
    a `with` block, or `close_runs()` before ray.shutdown) waits for them. `abort` calls an unfed
    run off.

    With `spares` (the default), on one node a worker takes a warm spare process if the raylet
    has one, and a run that fitted leaves spares for the next (`training.spare_workers`: its
    start-up then skips the worker's spawn and imports)."""

    def __init__(self, *, num_workers: int = 1, cpus_per_worker: int = 2, spares: bool = True) -> None:
        import ray

        _check_scaling(num_workers, cpus_per_worker)
        self.num_workers, self.cpus_per_worker, self.spares = num_workers, cpus_per_worker, spares
        self._started = time.perf_counter()
        self._stages: dict[str, float] = {}
        self._specs: dict[str, TrainSpec] | None = None
        self._fit_started_at: float | None = None
        self._fit_ended_at: float | None = None
        self._error: BaseException | None = None
        self._mailbox = ray.remote(Mailbox).options(num_cpus=0).remote()
        self._delivery = self._mailbox.delivery.remote()
        # the env vars worker 0's runtime_env held ([]: none, it started as a plain worker); known with the result
        self.worker_env_vars: list[str] | None = None
        self.worker_pid: int | None = None  # worker 0's process (a spare's, when it took one)
        self.spares_started = 0  # spare workers left for the next run, once they have started
        self._spares_thread: threading.Thread | None = None
        self.teardown_s: float | None = None  # from the models' delivery to Ray Train's end, once closed
        self._delivered_at: float | None = None
        self._error_logged = False
        self._thread = threading.Thread(target=self._fit, name="ray-train-run", daemon=True)
        _remember(self)
        self._thread.start()

    def __enter__(self) -> "RayTrainRun":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _fit(self) -> None:
        import ray
        import ray.train

        from training.ray_train_lean import LeanXGBoostTrainer

        spare_envs: list[dict] | None = [] if self.spares else None  # the workers' runtime_envs
        try:
            with tempfile.TemporaryDirectory(prefix="marquee-xgb-run-") as storage, _ray_train_settings():
                self._fit_started_at = time.time()
                trainer = LeanXGBoostTrainer(
                    _train_loop_per_worker,
                    train_loop_config={"mailbox": self._mailbox, "nthread": self.cpus_per_worker},
                    scaling_config=ray.train.ScalingConfig(
                        num_workers=self.num_workers, use_gpu=False,
                        resources_per_worker={"CPU": self.cpus_per_worker}),
                    run_config=ray.train.RunConfig(name="xgb", storage_path=storage),
                    inherited=functools.partial(_inherited_environment, self._mailbox),
                    spare_envs=spare_envs,
                )
                trainer.fit()
                self._fit_ended_at = time.time()
        except BaseException as exc:  # re-raised by result() if no models came, on the caller's thread
            self._error = exc
            return
        if spare_envs:  # one node and a run that fitted: leave the next run warm processes, off
            # the caller's path (they start one at a time, ~1 s each)
            self._spares_thread = threading.Thread(
                target=self._leave_spares, args=(spare_runtime_envs(self.num_workers, spare_envs[-1]),),
                name="ray-train-spares", daemon=True)
            self._spares_thread.start()

    def _leave_spares(self, runtime_envs: list[dict]) -> None:
        try:
            self.spares_started = prestart_spares(runtime_envs)
        except Exception as exc:  # a spare only saves time
            log.info("no spare workers for the next run: %s", exc)

    def wait_for_spares(self, timeout_s: float = 120.0) -> int:
        """Wait until the spares this run leaves have started; returns how many did (0: none
        asked for, as with spares=False or on several nodes)."""
        self._thread.join(timeout_s)
        if self._spares_thread is not None:
            self._spares_thread.join(timeout_s)
        return self.spares_started

    @property
    def fed(self) -> bool:
        return self._specs is not None

    def feed(self, data: "pa.Table | ray.data.Dataset", specs: dict[str, TrainSpec]) -> None:
        """Hand the run its rows and what to fit on them (validated here, on the caller's thread;
        a refusal calls the run off and raises)."""
        try:
            shards, stages = _prepare(data, specs, self.num_workers)
        except BaseException as exc:
            self.abort(f"its rows were refused: {exc}")
            raise
        self._feed_shards(shards, specs, stages)

    def wait_until_started(self, timeout_s: float = 120.0) -> float:
        """Block until every worker waits for its rows (the start-up is over); returns the
        seconds since the run was started. Raises TimeoutError, or the run's own error."""
        import ray

        deadline = time.perf_counter() + timeout_s
        while ray.get(self._mailbox.waiting.remote()) < self.num_workers:
            if not self._thread.is_alive():
                raise self._error or RuntimeError("the training run ended before its workers started")
            if time.perf_counter() > deadline:
                raise TimeoutError(f"Ray Train's workers did not start within {timeout_s} s")
            time.sleep(0.02)
        return time.perf_counter() - self._started

    def _feed_shards(self, shards: Shards, specs: dict[str, TrainSpec], stages: dict) -> None:
        import ray

        if self._specs is not None:
            raise RuntimeError("this training run was already fed")
        self._specs, self._stages = specs, dict(stages)
        ray.get(self._mailbox.put.remote({"specs": specs, "shards": shards}))

    def abort(self, why: str) -> None:
        """Call the run off (its workers stop waiting and fail) and wait for it to end."""
        import ray

        try:
            ray.get(self._mailbox.put.remote({"abort": why}))
        except Exception:  # the mailbox is gone: the run has ended anyway
            pass
        self.close()

    def close(self, timeout_s: float = 120.0) -> None:
        """Wait for Ray Train to finish tearing the run down (idempotent)."""
        self._thread.join(timeout_s)
        _kill_quietly(self._mailbox)
        _OPEN_RUNS.discard(self)
        if self._delivered_at is not None and self._fit_ended_at is not None and self.teardown_s is None:
            self.teardown_s = max(0.0, self._fit_ended_at - self._delivered_at)
        if self._delivered_at is not None and self._error is not None and not self._error_logged:
            self._error_logged = True  # the models came back intact; say what failed after that
            log.warning("Ray Train failed after the models were delivered: %s", self._error)

    def _wait_for_delivery(self) -> dict:
        import ray

        while True:
            ready, _ = ray.wait([self._delivery], timeout=0.05)
            if ready:
                return ray.get(self._delivery)
            if not self._thread.is_alive():
                self._thread.join()
                raise self._error or RuntimeError(
                    "Ray Train finished without the models: worker 0 did not deliver them")

    def result(self, since: float | None = None) -> dict[str, TrainResult]:
        """Wait for the models; one TrainResult per spec. `seconds` counts from `since` (default:
        when the run was started) to the models' arrival, and is the whole run's for every model."""
        if self._specs is None:
            raise RuntimeError("feed the training run its rows before waiting for its result")
        parcel = self._wait_for_delivery()
        received_at = time.time()
        _kill_quietly(self._mailbox)  # every worker has taken its rows and worker 0 delivered
        t = time.perf_counter()
        boosters = {}
        for name, raw in parcel["boosters"].items():
            boosters[name] = xgboost.Booster()
            boosters[name].load_model(bytearray(raw))
        metrics = parcel["metrics"]
        self._delivered_at = metrics["delivered_at"]
        self.worker_env_vars = metrics["worker_env_vars"]
        self.worker_pid = metrics["worker_pid"]
        stages = dict(self._stages)
        # Wall-clock stamps from the worker: same host here; on a cluster they carry clock skew.
        stages["startup"] = max(0.0, metrics["started_at"] - self._fit_started_at)
        stages.update({name: float(seconds) for name, seconds in metrics["stages"].items()})
        stages["delivery"] = max(0.0, received_at - metrics["delivered_at"])
        stages["fit"] = received_at - self._fit_started_at
        stages["load_model"] = time.perf_counter() - t
        seconds = time.perf_counter() - (self._started if since is None else since)
        return {name: TrainResult(boosters[name], seconds,
                                  {**stages, **{k: float(v) for k, v in metrics["models"][name]["stages"].items()}},
                                  "ray_train", metrics["models"][name]["evals"])
                for name in self._specs}


def _inherited_environment(mailbox, names: list[str]) -> dict[str, str | None]:
    """What a plain worker of the run's raylet inherits, for `names`: read from the raylet this
    process started, else asked of the mailbox (a plain worker of the same cluster)."""
    import ray

    raylet = local_raylet_environment()
    if raylet is not None:
        return {name: raylet.get(name) for name in names}
    return ray.get(mailbox.environment.remote(names))


_OPEN_RUNS: "weakref.WeakSet[RayTrainRun]" = weakref.WeakSet()


def _remember(run: RayTrainRun) -> None:
    """Track a run until closed; at exit, close the rest before Ray's own atexit shutdown (atexit
    runs last-registered first, and ray registered its hook when it was imported)."""
    if not _OPEN_RUNS and not getattr(_remember, "hooked", False):
        atexit.register(close_runs)
        _remember.hooked = True  # type: ignore[attr-defined]
    _OPEN_RUNS.add(run)


def close_runs(timeout_s: float = 120.0) -> None:
    """Wait for every run whose models came back to finish tearing down, and call off every run
    never fed (its workers would wait for rows that will not come): call before ray.shutdown, so
    a run's processes are not cut off mid-teardown."""
    for run in list(_OPEN_RUNS):
        if run.fed:
            run.close(timeout_s)
        else:
            run.abort("the process is shutting down")


def _kill_quietly(actor) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # already gone, or Ray shut down
        pass


def train_ray(
    data: "pa.Table | ray.data.Dataset",
    spec: TrainSpec,
    *,
    num_workers: int = 1,
    cpus_per_worker: int = 2,
) -> TrainResult:
    """Train with Ray Train's XGBoostTrainer on `num_workers` workers of `cpus_per_worker` CPUs.
    A pyarrow Table is projected to the training columns and cut into one contiguous shard per
    worker (groups whole); a lazy Dataset is materialized on the driver first, then cut the same
    way. Call ray.init first (or Ray starts a local cluster on its own)."""
    name = DEFAULT_MODEL_NAME
    return train_ray_many(data, {name: spec}, num_workers=num_workers, cpus_per_worker=cpus_per_worker)[name]


def train_ray_many(
    data: "pa.Table | ray.data.Dataset",
    specs: dict[str, TrainSpec],
    *,
    num_workers: int = 1,
    cpus_per_worker: int = 2,
    spares: bool = True,
) -> dict[str, TrainResult]:
    """Several boosters in ONE Ray Train run: the same workers read the rows once and fit every
    spec in turn (as train_local_many does), so the run's fixed start-up is paid once, not once
    per model. Every spec needs the same group column (the shards are cut at its boundaries).
    The rows are validated and cut before the run starts. `seconds` of each result is the whole
    run's. `spares`: as RayTrainRun's."""
    start = time.perf_counter()
    _check_scaling(num_workers, cpus_per_worker)
    shards, stages = _prepare(data, specs, num_workers)
    with RayTrainRun(num_workers=num_workers, cpus_per_worker=cpus_per_worker, spares=spares) as run:
        run._feed_shards(shards, specs, stages)
        return run.result(since=start)


def predict(booster: xgboost.Booster, table: pa.Table, features: list[str]) -> np.ndarray:
    """Scores for `table` rows (Arrow in, no pandas), honouring early stopping's best iteration."""
    matrix = xgboost.DMatrix(table.select(features))
    best = booster.attr("best_iteration")
    iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
    return booster.predict(matrix, iteration_range=iteration_range)


__all__ = [
    "TrainSpec",
    "TrainResult",
    "train_local",
    "train_local_many",
    "train_ray",
    "train_ray_many",
    "predict",
    "validate_schema",
    "split_eval",
    "build_dmatrix",
    "group_runs",
    "shard_bounds",
]
