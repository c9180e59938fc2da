"""`marquee retrain`: features -> train -> evaluate -> gate -> register -> promote -> signal.

Every step runs on the same Ray cluster (Ray Data for features, Ray Train for the ranker). The
gate compares the candidate with the serving version *on the same evaluation split*: the serving
version's recorded config is refit on this split, so a candidate is never judged against numbers
from other data. Promotion is the last step and a single atomic pointer write in the registry, so
a failure anywhere before it leaves the serving version untouched; serving replicas watch the
registry's pointer (Registry.watch) and hot-swap.

The model is registered as a bundle (models/bundle.py: XGBoost's own format, .npy arrays, a
manifest with a sha256 per file), bound to the catalog it was trained on. A dataset whose catalog
is not the one the registry serves is refused before training unless `--no-promote` is given
(then it is only registered: the registry will never promote it here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from actors.jobs import start_job
from marquee.dataset_spec import DatasetSpec
from marquee.home import Paths
from marquee.settings import SettingsError, from_overrides, parse_assignments

STEPS = ("features", "train", "evaluate", "gate", "register", "promote")
TRAINING_STORES = "training-only"  # under the features dir: stores built from a split's training events


class RetrainError(RuntimeError):
    """A retraining step failed; the serving version was left as it was."""


@dataclass
class RetrainReport:
    dataset: str
    candidate: str | None = None
    serving_before: str | None = None
    serving_after: str | None = None
    promoted: bool = False
    gate: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    features_version: str | None = None
    seconds: dict = field(default_factory=dict)  # per step
    timeline: dict = field(default_factory=dict)  # per step: seconds and the parts inside it
    total_s: float | None = None  # end to end, Ray start-up included
    cpu_s: float | None = None  # CPU seconds of this process and every process it started

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def training_store_dir(paths: Paths, source: Path) -> Path:
    """Where a retrain keeps the feature store it builds from a split's training events: apart
    from the dataset's own store (paths.features / name, built by `marquee up` from every event
    for serving), so neither replaces the other's LATEST."""
    return paths.features / TRAINING_STORES / source.name


def load_split(dataset: str):
    """(data, split); labels are at each member's point in time (training.evaluate.load_eval_data)."""
    from models.protocol import temporal_split
    from training.evaluate import load_eval_data

    data = load_eval_data(dataset)
    return data, temporal_split(data.interactions)


# Below this many events the feature job runs in one process (pyarrow) rather than on Ray Data:
# ml-100k (100k events) took 2.0 s with arrow against 2.6 s with Ray Data, and bench features
# measured Ray Data 1.24x faster at 990k events.
RAY_DATA_MIN_EVENTS = 1_000_000


def feature_engine(engine: str, dataset_dir: Path) -> str:
    """The feature job's engine for a retrain on `engine`: Ray Data only where it pays."""
    if engine != "ray":
        return "arrow"
    from marquee.dataset import load_dataset

    events = load_dataset(dataset_dir).manifest.get("events")
    return "ray" if events is None or events >= RAY_DATA_MIN_EVENTS else "arrow"


class RayStart:
    """ray.init on a thread, so the feature step runs meanwhile; `wait()` before Ray is needed
    (it re-raises a failed start); `finish()` at the end shuts Ray down if it was started here.

    The thread stays alive until `finish()`: Ray starts its GCS and raylet with a parent-death
    signal tied to the thread that spawned them, so a thread that ended would take them down."""

    def __init__(self):
        import threading

        self.started_here, self.error, self.seconds, self.waited_s = False, None, 0.0, 0.0
        self._ready, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-init", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        t = time.perf_counter()
        try:
            self.started_here = _start_ray()
        except BaseException as exc:  # surfaced by wait(), on the retrain's own thread
            self.error = exc
        self.seconds = round(time.perf_counter() - t, 3)
        self._ready.set()
        self._done.wait()

    def wait(self) -> None:
        t = time.perf_counter()
        self._ready.wait()
        self.waited_s = round(self.waited_s + time.perf_counter() - t, 3)
        if self.error is not None:
            raise RetrainError(f"retrain: Ray did not start: {self.error}") from self.error

    def finish(self) -> None:
        if self._thread.ident is None:
            return
        self._ready.wait()
        if self.started_here:
            import ray

            from training.xgb_train import close_runs

            close_runs()  # a ranker run hands its models back before Ray Train has torn down
            ray.shutdown()
        self._done.set()
        self._thread.join()


def _start_ray() -> bool:
    """Start (or join, under `ray job submit`) one Ray for every step; True if started here."""
    import os

    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=False, configure_logging=False)
    else:
        from training.ray_train_startup import cluster_environment

        os.environ.update(cluster_environment())  # the raylet and its workers inherit them
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    return True


def retrain(
    dataset: str,
    *,
    paths: Paths | None = None,
    engine: str = "ray",
    tolerance: float = 0.005,
    promote: bool = True,
    config_overrides: dict | None = None,
    run_features: bool = True,
    progress: bool = True,
) -> RetrainReport:
    """Run every step; raises RetrainError (naming the step) after leaving serving untouched."""
    from tqdm import tqdm

    from models.bundle import (
        DatasetIdentity,
        dataset_name,
        feature_schema_hash,
        registry_files,
        write_bundle,
    )
    from models.pipeline_config import PipelineConfig
    from models.protocol import evaluate
    from models.ranker_features import StoreLink
    from state.registry import Registry
    from training.evaluate import title_content
    from training.pipeline import Pipeline
    from training.point_in_time import build_training_store, split_fingerprint
    from training.sources import marquee_dataset_dir

    started_at = time.perf_counter()
    cpu = CpuMeter()
    paths = paths or Paths()
    # the settings first: a bad --set is refused before minutes of feature work, not after
    config = from_overrides(PipelineConfig, {**(config_overrides or {}), "engine": engine})
    registry = Registry(paths.registry)
    report = RetrainReport(dataset=dataset)
    serving = registry.promoted()
    report.serving_before = serving.version if serving else None
    bar = tqdm(total=len(STEPS), desc="retrain", unit="step", file=sys.stderr, disable=not progress)
    state: dict = {}
    timeline: dict[str, dict] = {}

    def step(name: str, work) -> None:
        bar.set_postfix_str(name)
        started = time.perf_counter()
        try:
            state[name] = work()
        except RetrainError:
            raise
        except Exception as exc:
            raise RetrainError(f"retrain step '{name}' failed: {exc}; serving version "
                               f"{report.serving_before or '(none)'} left untouched") from exc
        finally:
            seconds = time.perf_counter() - started
            report.seconds[name] = round(seconds, 2)
            timeline.setdefault(name, {})["seconds"] = round(seconds, 3)
        bar.update(1)

    def part(step_name: str, **seconds: float) -> None:
        timeline.setdefault(step_name, {}).setdefault("parts", {}).update(
            {k: round(v, 3) for k, v in seconds.items()})

    def features():
        from features.offline_store import read_manifest

        t = time.perf_counter()
        data, split = load_split(dataset)
        source = marquee_dataset_dir(dataset, paths)
        state["data"], state["split"] = data, split
        part("features", load_split=time.perf_counter() - t)
        store_dir = training_store_dir(paths, source)
        if not run_features:  # the newest version built for this very split, if there is one
            try:
                manifest = read_manifest(store_dir)
            except Exception:
                return None
            if manifest.get("events_source", {}).get("split") != split_fingerprint(split):
                return None
            report.features_version = manifest["version"]
            return {"version": report.features_version, "store_dir": str(store_dir)}
        t = time.perf_counter()
        job_engine = feature_engine(engine, source)
        if job_engine == "ray":
            ray_ready()  # the Ray Data job needs the cluster; the arrow one runs while it starts
        result = build_training_store(source, split, store_dir, job_engine)
        timeline.setdefault("features", {})["engine"] = job_engine
        part("features", feature_job=time.perf_counter() - t,
             **{f"job.{k}": v for k, v in result.stages.items() if not k.startswith("snapshots.")})
        report.features_version = result.version
        return {"version": result.version, "store_dir": str(store_dir)}

    def train():
        data, split = state["data"], state["split"]
        train_data, content = split.train_data(), title_content(data.titles, split.title_ids)
        parsed = DatasetSpec.parse(dataset, allow_bare_world=False)  # a Marquee dataset names itself
        name = dataset_name(parsed.location) if parsed.kind == "world" else data.name
        dataset_id = DatasetIdentity.of_titles(name, data.titles.column("title_id").to_numpy())
        served = registry.catalog()
        if promote and served is not None and not dataset_id.same_catalog(served):
            raise RetrainError(
                f"retrain: {dataset} is {dataset_id.describe()}, but this home's registry serves "
                f"{served.describe()}: a model ranks the catalog it was trained on, so this one could "
                f"never be promoted here. Nothing was trained; serving version "
                f"{report.serving_before or '(none)'} is untouched (--no-promote registers it anyway, "
                "as a candidate this registry will not promote)")
        features = state.get("features")
        store = (StoreLink(features["store_dir"], split.member_ids, split.title_ids, features["version"])
                 if features else None)
        model = Pipeline(config, content, store).fit(train_data)
        line = model.timeline_
        # retrieval: sources fitted on the inner split + the ranker's candidates and features;
        # ranker_fit: both boosters in one run, while the sources refit on all the training data
        # (retrieval_refit, concurrent: not to be added)
        part("train", retrieval=line["retrieval_inner"], ranker_fit=line["ranker_fit"],
             retrieval_refit=line["retrieval_full"],
             **{f"ranker.{k}": v for k, v in model.ranker_stages_.items()})
        return {"data": data, "split": split, "train": train_data, "content": content,
                "model": model, "config": config, "store": store, "dataset": dataset_id}

    def assess():
        t = state["train"]
        metrics = evaluate(t["split"], t["model"].score, title_genres=t["content"].genres).as_dict()
        report.metrics = metrics
        return metrics

    def gate():
        t = state["train"]
        candidate = state["evaluate"]["ndcg@10"]
        if serving is None:
            return {"passed": True, "reason": "no serving version yet", "candidate_ndcg@10": candidate}
        serving_config = PipelineConfig(**{**serving.metrics.get("config", {}), "engine": engine})
        if serving_config == t["config"]:
            serving_ndcg = candidate  # same config, same split: a seeded refit would give this
        else:
            baseline = Pipeline(serving_config, t["content"], t["store"]).fit(t["train"])
            serving_ndcg = evaluate(t["split"], baseline.score).ndcg_at_10
        passed = candidate >= serving_ndcg - tolerance
        return {"passed": passed, "candidate_ndcg@10": round(candidate, 5),
                "serving_ndcg@10": round(serving_ndcg, 5), "tolerance": tolerance,
                "refit": serving_config != t["config"],
                "reason": "not worse than serving" if passed else
                f"candidate ndcg@10 {candidate:.4f} < serving {serving_ndcg:.4f} - tolerance {tolerance}"}

    def register():
        t = state["train"]
        model, split = t["model"], t["split"]
        bundle = model.bundle(t["dataset"].name, t["data"].titles.column("title_id").to_numpy(),
                              split.title_ids, split.member_ids)
        config = dataclasses.asdict(t["config"])
        config.pop("engine", None)
        with tempfile.TemporaryDirectory(prefix="marquee-bundle-") as out:
            write_bundle(bundle, out)
            version = registry.register(
                registry_files(out),
                metrics={**state["evaluate"], "config": config, "gate": state["gate"],
                         "training": model.training_},
                data_window={"dataset": dataset, "features_version": report.features_version,
                             "features": "training events only",
                             "train_interactions": int(split.train.nnz)},
                feature_schema_hash=feature_schema_hash(model.feature_names_),
                parent=report.serving_before,
            )
        report.candidate = version.version
        return version.version

    def promote_step():
        version = state["register"]
        if not state["gate"]["passed"]:
            registry.reject(version, state["gate"]["reason"])
            return None
        if promote:
            registry.promote(version, reason=f"retrain on {dataset}: {state['gate']['reason']}")
            return version
        return None

    starting = RayStart() if engine == "ray" else None
    ray_ready = starting.wait if starting else (lambda: None)
    try:
        if starting:  # Ray starts (~4-5 s, other processes) while this one does the feature work
            starting.start()
        step("features", features)
        ray_ready()
        if starting:
            timeline["ray_init"] = {"seconds": starting.seconds, "waited_s": starting.waited_s}
        step("train", train)
        step("evaluate", assess)
        step("gate", gate)
        report.gate = state["gate"]
        step("register", register)
        step("promote", promote_step)
    finally:
        bar.close()
        report.cpu_s = cpu.stop()
        if starting:
            starting.finish()
    promoted = registry.promoted()
    report.serving_after = promoted.version if promoted else None
    report.promoted = bool(state.get("promote"))
    report.timeline = timeline
    report.total_s = round(time.perf_counter() - started_at, 3)
    return report


class CpuMeter:
    """CPU seconds (user + system) of this process and every process it started (Ray's GCS,
    raylet and workers), sampled on a thread: wall time on a shared machine says little, CPU
    time says what the retrain cost. A process that lives less than one interval is missed."""

    def __init__(self, interval: float = 0.25):
        import threading

        import psutil

        self._psutil, self._me, self.interval = psutil, psutil.Process(), interval
        self._seen: dict[tuple[int, float], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                self._seen[(proc.pid, proc.create_time())] = times.user + times.system
            except (self._psutil.Error, OSError):
                continue

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> float:
        self._sample()
        self._stop.set()
        self._thread.join(timeout=2)
        return round(sum(self._seen.values()), 2)


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default=None,
                        help="movielens:PATH or world:DIR (default: the world under MARQUEE_HOME)")
    parser.add_argument("--home", type=Path, default=None, help="state directory (default MARQUEE_HOME)")
    parser.add_argument("--engine", choices=("ray", "local"), default="ray",
                        help="train the ranker with Ray Train (default) or plain xgboost")
    parser.add_argument("--tolerance", type=float, default=0.005,
                        help="how much worse than serving (ndcg@10) a candidate may be and still pass")
    parser.add_argument("--no-promote", action="store_true", help="register but do not promote")
    parser.add_argument("--skip-features", action="store_true", help="do not rerun the feature job")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="override a PipelineConfig field, e.g. --set rounds=50 (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--submit", action="store_true",
                        help="run as a Ray job on the cluster of `marquee up` and follow its logs")


def submit_as_job(paths: Paths, argv: list[str], timeout_s: float = 1800.0) -> int:
    """Run this same command as a Ray job on the home's running cluster; stream its logs."""
    started = start_job(paths, argv)
    if started is None:
        print(f"marquee retrain --submit: no cluster running for {paths.home}; start one with "
              "`marquee up --detach`", file=sys.stderr)
        return 2
    client, job, dashboard = started
    print(f"submitted Ray job {job} to {dashboard}", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout_s
    while not client.get_job_status(job).is_terminal():
        if time.monotonic() > deadline:
            client.stop_job(job)
            print(f"marquee retrain --submit: job {job} exceeded {timeout_s:.0f} s; stopped", file=sys.stderr)
            return 1
        time.sleep(1.0)
    status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    print(logs, end="" if logs.endswith("\n") else "\n")
    print(f"Ray job {job}: {status.value}", file=sys.stderr)
    return 0 if status.value == "SUCCEEDED" else 1


def cli_main(args: argparse.Namespace) -> int:
    paths = Paths(args.home) if args.home else Paths()
    if args.submit:
        import shlex

        argv = [a for a in sys.argv[2:] if a != "--submit"] if len(sys.argv) > 2 else []
        return submit_as_job(paths, [shlex.quote(a) for a in argv])
    dataset = args.dataset or f"world:{paths.world}"
    try:
        overrides = parse_assignments(args.set)
    except SettingsError as exc:
        print(f"marquee retrain: {exc}", file=sys.stderr)
        return 2
    try:
        report = retrain(dataset, paths=paths, engine=args.engine, tolerance=args.tolerance,
                         promote=not args.no_promote, config_overrides=overrides,
                         run_features=not args.skip_features)
    except (RetrainError, ValueError, TypeError) as exc:
        print(f"marquee retrain: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), sort_keys=True, default=str))
    else:
        verdict = "promoted" if report.promoted else f"not promoted ({report.gate.get('reason')})"
        print(f"candidate {report.candidate}: ndcg@10 {report.metrics.get('ndcg@10')} -> {verdict}; "
              f"serving {report.serving_before} -> {report.serving_after}")
    return 0 if report.promoted or args.no_promote else 3
