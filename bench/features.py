"""`marquee bench features`: the feature job on ~1 M events, Ray Data against single-process
pyarrow, in the same run. Prints ONE JSON object on stdout (progress goes to stderr).

Both engines run the identical partial/combine/snapshot code (training.features); the Ray engine
parallelises the per-block partials (Ray Data map_batches) and the per-day snapshots (Ray tasks).
Each engine gets one untimed warm-up run (page cache, worker start-up and imports; the Ray cold
run is reported separately) and then `--repeats` timed runs; medians are reported. The baseline
runs first, before Ray starts, so its peak RSS is the single process alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable


def _say(message: str) -> None:
    print(f"[bench features] {message}", file=sys.stderr, flush=True)


class PeakRss:
    """Samples, on a thread, the summed memory of this process plus its Ray worker processes
    (`ray::*` / default_worker.py descendants; raylet, GCS and agents are reported separately
    under `all`). Two sums: RSS (what `ps` shows; shared pages such as the object store count once
    per process that maps them, so an upper bound) and PSS (shared pages split between the
    processes sharing them: the fair total). Sampling reads /proc/*/smaps, which costs CPU, so it
    runs in a separate, untimed run."""

    def __init__(self, interval: float = 0.1):
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.interval = interval
        self.peak = {"rss_mb": 0.0, "pss_mb": 0.0, "all_rss_mb": 0.0, "all_pss_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        psutil = self._psutil
        info = self._me.memory_full_info()
        sums = {"rss": info.rss, "pss": info.pss, "all_rss": info.rss, "all_pss": info.pss}
        for child in self._me.children(recursive=True):
            try:
                name = child.name()
                worker = name.startswith("ray::") or "default_worker.py" in " ".join(child.cmdline()[:3])
                info = child.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            sums["all_rss"] += info.rss
            sums["all_pss"] += info.pss
            if worker:
                sums["rss"] += info.rss
                sums["pss"] += info.pss
        for key, value in sums.items():
            self.peak[f"{key}_mb"] = max(self.peak[f"{key}_mb"], round(value / 2**20, 1))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRss":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def ensure_world(workdir: Path, members: int, titles: int, days: int, seed: int, events: int) -> tuple[Path, float | None]:
    """The benchmark world, generated once per parameter set and reused from `workdir`."""
    path = workdir / f"world-m{members}-t{titles}-d{days}-s{seed}-e{events}"
    if (path / "manifest.json").exists():
        _say(f"reusing world {path}")
        return path, None
    from producers.world.generate import generate_world

    _say(f"generating world ({members} members, {titles} titles, {days} days, ~{events} events) ...")
    start = time.perf_counter()
    generate_world(members=members, titles=titles, days=days, seed=seed, events_target=events, out=path)
    return path, round(time.perf_counter() - start, 2)


def _timed_runs(run: Callable[[], Any], repeats: int, label: str) -> tuple[float, list[float], list[dict], Any]:
    """One untimed warm-up, then `repeats` timed runs: (warm-up s, run seconds, stages, last result)."""
    start = time.perf_counter()
    run()
    warmup = time.perf_counter() - start
    _say(f"{label}: warm-up {warmup:.2f} s")
    seconds, stages = [], []
    for i in range(repeats):
        start = time.perf_counter()
        result = run()
        seconds.append(time.perf_counter() - start)
        stages.append(result.stages)
        _say(f"{label}: run {i + 1}/{repeats} {seconds[-1]:.2f} s")
    return warmup, seconds, stages, result


def _median_stages(stages: list[dict]) -> dict[str, float]:
    keys = sorted({k for s in stages for k in s})
    return {k: round(statistics.median(s.get(k, 0.0) for s in stages), 4) for k in keys}


def run_benchmark(workdir: Path, *, members: int, titles: int, days: int, seed: int, events: int,
                  repeats: int) -> dict[str, Any]:
    from training.features import run_feature_job

    world, world_seconds = ensure_world(workdir, members, titles, days, seed, events)
    out_root = workdir / "features-out"

    def job(engine: str):
        out = out_root / engine
        result = run_feature_job(world, out, engine=engine)
        shutil.rmtree(result.path)  # keep the disk flat across repeats
        return result

    arrow_warmup, arrow_runs, arrow_stages, _ = _timed_runs(lambda: job("arrow"), repeats, "arrow")
    with PeakRss() as arrow_mem:
        job("arrow")
    _say(f"arrow: memory run peak {arrow_mem.peak}")

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_init = time.perf_counter() - start
    _say(f"ray.init {ray_init:.2f} s")
    try:
        ray_cold, ray_runs, ray_stages, last = _timed_runs(lambda: job("ray"), repeats, "ray")
        with PeakRss() as ray_mem:
            job("ray")
        _say(f"ray: memory run peak {ray_mem.peak}")
    finally:
        ray.shutdown()
    shutil.rmtree(out_root, ignore_errors=True)
    ray_s, arrow_s = statistics.median(ray_runs), statistics.median(arrow_runs)
    return {
        "benchmark": "features",
        "events": last.events,
        "members": members, "titles": titles, "days": days, "seed": seed,
        "snapshots": last.snapshots,
        "rows": last.rows,
        "repeats": repeats,
        "ray_init_s": round(ray_init, 3),
        "ray_data_s": round(ray_s, 3),
        "arrow_s": round(arrow_s, 3),
        "ray_vs_arrow_speed": round(arrow_s / ray_s, 3),
        "ray_data_first_run_s": round(ray_cold, 3),
        "arrow_first_run_s": round(arrow_warmup, 3),
        "runs_s": {"ray": [round(s, 3) for s in ray_runs], "arrow": [round(s, 3) for s in arrow_runs]},
        "peak_memory_mb": {
            "ray_driver_plus_workers_rss": ray_mem.peak["rss_mb"],
            "ray_driver_plus_workers_pss": ray_mem.peak["pss_mb"],
            "ray_all_processes_rss": ray_mem.peak["all_rss_mb"],
            "arrow_rss": arrow_mem.peak["rss_mb"],
            "arrow_pss": arrow_mem.peak["pss_mb"],
        },
        "stages_median_s": {"ray": _median_stages(ray_stages), "arrow": _median_stages(arrow_stages)},
        "targets": {"ray_vs_arrow_speed": ">= 0.8", "peak_memory_mb": "< 2048"},
        "world_generation_s": world_seconds,
        "notes": ("stage 'snapshots' is wall time; 'snapshots.*' are summed task seconds "
                  "(parallel under Ray). Warm-up runs are untimed; first_run_s shows them. "
                  "Memory comes from one extra untimed run per engine (sampling /proc costs CPU)."),
    }


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="(default) print one JSON object")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "marquee-bench-features",
                        help="where the generated world is cached between runs")
    parser.add_argument("--events", type=int, default=1_000_000, help="approximate number of events")
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--titles", type=int, default=1500)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)


def cli_main(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        print("marquee bench features: --repeats must be >= 1", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON object only
        report = run_benchmark(args.workdir, members=args.members, titles=args.titles, days=args.days,
                               seed=args.seed, events=args.events, repeats=args.repeats)
    print(json.dumps(report, sort_keys=True))
    return 0
