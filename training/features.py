"""The feature job: dataset events -> versioned point-in-time snapshots in the offline store.

Two engines run the SAME partial and combine functions (features.definitions):
- "ray": Ray Data reads the day files (column projection, few large blocks) and applies
  `partial_aggregate` per block with map_batches in Arrow; the driver combines the small partials.
- "arrow": the identical partial function over the same files, one process (the baseline).
Ray Data's shuffle groupby is deliberately not used: at this size a per-block Arrow partial plus an
Arrow combine is an order of magnitude faster (DESIGN.md section 4).

The as-of expansion then writes a snapshot per day of the events' range plus the day after the
last ("latest"); see features.offline_store for the layout and the point-in-time reads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from marquee.dataset import load_dataset
from marquee.schema import EVENTS_DIR
from features.definitions import (
    ENTITIES,
    EVENT_COLUMNS,
    Combined,
    FeatureError,
    FeatureSpec,
    SnapshotBuilder,
    Vocab,
    combine_partials,
    day_date,
    day_number,
    decode_partials,
    encode_partials,
    partial_aggregate,
    snapshot,
)
from features.offline_store import (  # re-exported: Part 2 imports them from here
    VersionWriter,
    features_as_of,
    join_point_in_time,
    read_manifest,
    write_snapshot,
)

ENGINES = ("ray", "arrow")
__all__ = ["run_feature_job", "FeatureJobResult", "features_as_of", "join_point_in_time",
           "read_manifest", "compute_partials", "configure_cli", "cli_main"]


@dataclass
class FeatureJobResult:
    version: str
    path: Path
    engine: str
    events: int
    as_of_first: str
    as_of_last: str
    snapshots: int
    rows: dict[str, int]
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def event_files(dataset_dir: Path) -> list[str]:
    files = sorted(str(p) for p in (Path(dataset_dir) / EVENTS_DIR).rglob("*.parquet"))
    if not files:
        raise FeatureError(f"{dataset_dir}/{EVENTS_DIR}: no event Parquet files")
    return files


def _encoded_partial(batch: pa.Table, vocab: Vocab, spec: FeatureSpec) -> pa.Table:
    return encode_partials(partial_aggregate(batch, vocab, spec))


def compute_partials(files: list[str], vocab: Vocab, spec: FeatureSpec, engine: str,
                     num_blocks: int | None = None) -> list[dict[str, pa.Table]]:
    """Run `partial_aggregate` over every event file with the chosen engine."""
    if engine == "arrow":
        return [partial_aggregate(pq.read_table(f, columns=EVENT_COLUMNS), vocab, spec) for f in files]
    if engine != "ray":
        raise FeatureError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    # Measured on 1 M events / 30 day files (2 CPUs): the V2 Parquet datasource (default in
    # Ray 2.60) adds a remote file-listing task and packed all 30 files into ONE read task
    # (3.6 s); the V1 datasource with 2 x CPUs blocks took 0.7 s for the same partials.
    saved_v2 = getattr(context, "use_datasource_v2", None)
    if saved_v2 is not None:
        context.use_datasource_v2 = False
    blocks = num_blocks or 2 * max(1, int(ray.cluster_resources().get("CPU", 1)))
    try:
        dataset = ray.data.read_parquet(files, partitioning=None, override_num_blocks=blocks)
    finally:
        if saved_v2 is not None:
            context.use_datasource_v2 = saved_v2
    # select_columns right after the read is pushed down into the Parquet reader (projection)
    dataset = dataset.select_columns(EVENT_COLUMNS).map_batches(
        _encoded_partial,
        fn_kwargs={"vocab": vocab, "spec": spec},
        batch_format="pyarrow",
        batch_size=None,
        zero_copy_batch=True,
    )
    encoded = ray.get(dataset.to_arrow_refs())
    return [p for table in encoded for p in decode_partials(table)]


def run_feature_job(
    dataset_dir: Path | str,
    out_dir: Path | str,
    engine: str = "ray",
    spec: FeatureSpec | None = None,
    *,
    as_of_first: date | str | None = None,
    as_of_last: date | str | None = None,
    version: str | None = None,
    num_blocks: int | None = None,
    snapshot_tasks: int | None = None,
    progress: Callable[[str], None] | None = None,
    events: pa.Table | None = None,
    manifest_extra: dict[str, Any] | None = None,
    entities: tuple[str, ...] = ENTITIES,
) -> FeatureJobResult:
    """Compute every snapshot of the dataset's events into a new version under `out_dir` and point
    LATEST at it. `as_of_first`/`as_of_last` narrow the snapshot range (default: every day of the
    events plus the day after the last). With engine="ray", Ray is started (2 CPUs, no dashboard)
    if it is not running and shut down again afterwards; `num_blocks` (Ray Data read blocks) and
    `snapshot_tasks` (parallel snapshot writers) default to 2 x the cluster's CPUs.

    `events` replaces the dataset's event files with a table already in memory (the training
    events of a split, training.point_in_time): it is aggregated in this process, where it
    already is (at retrain sizes shipping it to Ray Data costs more than the aggregation); the
    snapshots still fan out to Ray. `manifest_extra` is recorded in the manifest (what the
    events were). `entities` narrows the snapshots written (default every entity)."""
    if engine not in ENGINES:
        raise FeatureError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    unknown = [e for e in entities if e not in ENTITIES]
    if unknown or not entities:
        raise FeatureError(f"entities: expected some of {', '.join(ENTITIES)}, got {list(entities)}")
    entities = tuple(e for e in ENTITIES if e in entities)
    spec = spec or FeatureSpec()
    say = progress or (lambda _msg: None)
    stages: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stages[name] = stages.get(name, 0.0) + now - clock
        clock = now

    dataset = load_dataset(dataset_dir)
    vocab = Vocab.from_tables(dataset.titles, dataset.members)
    files = event_files(dataset.root) if events is None else []
    lap("load")
    started_ray = False
    if engine == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            started_ray = True
        lap("ray_init")
    try:
        if events is None:
            partials = compute_partials(files, vocab, spec, engine, num_blocks)
        else:
            partials = [partial_aggregate(events.select(EVENT_COLUMNS), vocab, spec)]
        lap("partial")
        combined = combine_partials(partials)
        del partials
        lap("combine")
        builder = SnapshotBuilder(combined, vocab, spec, dataset.members)
        lap("index")
        days = _as_of_range(builder, as_of_first, as_of_last)
        say(f"{combined.stats['events']} events; {len(days)} snapshots {day_date(days[0])}..{day_date(days[-1])}")
        writer = VersionWriter(out_dir, version)
        try:
            _write_title_genres(writer, vocab)
            if engine == "ray":
                rows, detail = _snapshots_on_ray(builder, days, writer.tmp, snapshot_tasks, entities)
            else:
                rows, detail = write_snapshots(builder, days, writer.tmp, entities)
            writer.count(rows)
            lap("snapshots")
            path = writer.commit({**_manifest(dataset, engine, spec, vocab, combined, days, entities),
                                  "events_source": manifest_extra or {"kind": "dataset_events"}})
        except BaseException:
            writer.abort()
            raise
        lap("commit")
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    stages.update({f"snapshots.{k}": v for k, v in detail.items()})
    return FeatureJobResult(
        version=writer.version, path=path, engine=engine, events=combined.stats["events"],
        as_of_first=day_date(days[0]).isoformat(), as_of_last=day_date(days[-1]).isoformat(),
        snapshots=len(days), rows=dict(writer.rows), stages={k: round(v, 4) for k, v in stages.items()},
    )


def write_snapshots(builder: SnapshotBuilder, days: list[int], version_dir: Path | str,
                    entities: tuple[str, ...] = ENTITIES) -> tuple[dict[str, int], dict[str, float]]:
    """Compute and write every entity's snapshot for `days`; returns (rows per entity, seconds
    per step). The unit of work of both engines (Ray runs it on runs of days in parallel).
    Co-watch counts are carried from one day to the next (each day adds its own pairs), so a
    run of consecutive days costs one count build, not one per day."""
    rows = {e: 0 for e in entities}
    seconds = {**{e: 0.0 for e in entities}, "write": 0.0}
    cowatch = builder.cowatch_counts() if "cowatch" in entities else None
    for d in sorted(days):
        for entity in entities:
            start = time.perf_counter()
            if entity == "cowatch":
                table = cowatch.advance(d).table(builder.vocab.title_ids)
            else:
                table = snapshot(builder, entity, d)
            middle = time.perf_counter()
            rows[entity] += write_snapshot(Path(version_dir), entity, day_date(d), table)
            seconds[entity] += middle - start
            seconds["write"] += time.perf_counter() - middle
    return rows, seconds


def day_runs(builder: SnapshotBuilder, days: list[int], runs: int) -> list[list[int]]:
    """`days` cut into at most `runs` runs of consecutive days of about equal work. A day's work
    grows with the plays before it (its co-watch counts), so late runs hold fewer days."""
    days = sorted(days)
    runs = max(1, min(runs, len(days)))
    plays_before = np.searchsorted(builder.cowatch_index.day, np.asarray(days), side="left")
    work = plays_before + max(1.0, float(plays_before.mean()))  # + a fixed cost per day
    cumulative = np.cumsum(work)
    cuts = np.searchsorted(cumulative, cumulative[-1] * np.arange(1, runs) / runs, side="left")
    bounds = [0, *sorted({int(c) + 1 for c in cuts if 0 <= c < len(days) - 1}), len(days)]
    return [days[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


def _snapshots_on_ray(builder: SnapshotBuilder, days: list[int], version_dir: Path,
                      num_chunks: int | None, entities: tuple[str, ...]) -> tuple[dict[str, int], dict[str, float]]:
    """Fan runs of consecutive as_of days out to Ray tasks (the builder goes to the object store
    once; numpy arrays are read zero-copy). Assumes `version_dir` is on storage every worker can
    write: true on one machine, a shared volume on a cluster."""
    import ray

    chunks = num_chunks or max(2, int(ray.cluster_resources().get("CPU", 1)))
    builder_ref = ray.put(builder)
    task = ray.remote(num_cpus=1)(write_snapshots)
    results = ray.get([task.remote(builder_ref, run, str(version_dir), entities)
                       for run in day_runs(builder, days, chunks)])
    rows = {e: sum(r[0][e] for r in results) for e in entities}
    seconds = {k: sum(r[1][k] for r in results) for k in results[0][1]}
    return rows, seconds


def _as_of_range(builder: SnapshotBuilder, first, last) -> list[int]:
    days = builder.as_of_days()
    lo = day_number(first) if first is not None else days[0]
    hi = day_number(last) if last is not None else days[-1]
    if lo > hi:
        raise FeatureError(f"as_of_first {day_date(lo)} is after as_of_last {day_date(hi)}")
    return list(range(lo, hi + 1))


def _write_title_genres(writer: VersionWriter, vocab: Vocab) -> None:
    """Title -> genre indices, so point-in-time joins can compute genre_match without the dataset."""
    offsets = pa.array(vocab.genre_offsets.astype("int32"))
    genre_index = pa.ListArray.from_arrays(offsets, pa.array(vocab.genre_index.astype("int32")))
    pq.write_table(pa.table({"title_id": pa.array(vocab.title_ids, pa.int64()), "genre_index": genre_index}),
                   writer.tmp / "title_genres.parquet")


def _manifest(dataset, engine: str, spec: FeatureSpec, vocab: Vocab, combined: Combined,
              days: list[int], entities: tuple[str, ...] = ENTITIES) -> dict[str, Any]:
    return {
        "dataset": str(Path(dataset.root).resolve()),
        "dataset_source": dataset.manifest.get("source"),
        "engine": engine,
        "spec": asdict(spec),
        "genres": list(vocab.genres),
        "countries": list(vocab.countries),
        "devices": list(vocab.devices),
        "as_of_first": day_date(days[0]).isoformat(),
        "as_of_last": day_date(days[-1]).isoformat(),
        "events_first_day": day_date(combined.first_day).isoformat(),
        "events_last_day": day_date(combined.last_day).isoformat(),
        "stats": combined.stats,
        "entities": list(entities),
        "created": datetime.now(timezone.utc).isoformat(),
    }


# ---------------------------------------------------------------------------------------------
# CLI: marquee features
# ---------------------------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser) -> None:
    from marquee.home import Paths

    paths = Paths()
    parser.add_argument("--dataset", type=Path, default=paths.world,
                        help=f"dataset directory (default {paths.world})")
    parser.add_argument("--out", type=Path, default=paths.features,
                        help=f"feature store directory (default {paths.features})")
    parser.add_argument("--engine", choices=ENGINES, default="ray",
                        help="ray: Ray Data per-block partials; arrow: the same job in one process")
    parser.add_argument("--half-life-days", type=float, default=FeatureSpec.half_life_days)
    parser.add_argument("--cowatch-k", type=int, default=FeatureSpec.cowatch_k)
    parser.add_argument("--hour-buckets", type=int, default=FeatureSpec.hour_buckets)
    parser.add_argument("--as-of-first", help="first snapshot day YYYY-MM-DD (default: first event day)")
    parser.add_argument("--as-of-last", help="last snapshot day YYYY-MM-DD (default: day after the last event)")
    parser.add_argument("--blocks", type=int, default=None, help="Ray Data read blocks (default: one per file)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def cli_main(args: argparse.Namespace) -> int:
    try:
        spec = FeatureSpec(args.half_life_days, args.cowatch_k, args.hour_buckets)
        result = run_feature_job(
            args.dataset, args.out, args.engine, spec, as_of_first=args.as_of_first,
            as_of_last=args.as_of_last, num_blocks=args.blocks,
            progress=lambda msg: print(msg, file=sys.stderr),
        )
    except (FeatureError, ValueError, OSError) as exc:
        print(f"marquee features: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        print(f"features {result.version} -> {result.path}")
        print(f"  {result.events} events, {result.snapshots} snapshots "
              f"{result.as_of_first}..{result.as_of_last}, rows {result.rows}")
        print(f"  stages (s): {result.stages}")
    return 0
