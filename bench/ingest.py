"""`marquee bench ingest`: events/s and ack latency through the event-log actor.

Three ways of appending the same pre-built events, each into a fresh log root:
  * baseline: the plain EventLog class in this process (no Ray) - the ceiling;
  * closed loop: one batch at a time through the Ray actor, waiting for each ack (a producer);
  * pipelined: a few batches in flight at once through the actor (several producers).
Every append is acknowledged only after fsync (unless --no-fsync). Prints one JSON object on
stdout (progress on stderr); throughputs are medians over --repeats runs, latencies are pooled.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.report import emit, progress

TARGET_EVENTS_PER_S = 20_000


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    parser.add_argument("--batch", type=int, default=500, help="events per append (default 500)")
    parser.add_argument("--json", action="store_true", help="print the result as one compact JSON line")
    parser.add_argument("--no-fsync", action="store_true", help="acknowledge after write+flush, without fsync")
    parser.add_argument("--inflight", type=int, default=4, help="batches in flight in the pipelined run (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; throughput is the median (default 3)")
    parser.add_argument("--seed", type=int, default=0)


def cli_main(args: argparse.Namespace) -> int:
    for name in ("events", "batch", "inflight", "repeats"):
        if getattr(args, name) < 1:
            print(f"--{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    result = run(
        events=args.events,
        batch=args.batch,
        fsync=not args.no_fsync,
        inflight=args.inflight,
        repeats=args.repeats,
        seed=args.seed,
    )
    return emit(result, args.json)


_progress = progress("ingest")


def make_events(n: int, seed: int) -> list[dict]:
    """Valid events shaped like the gateway's traffic: mostly impressions, some plays/progress."""
    rng = random.Random(seed)
    t0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z; ~4 events per second of event time
    events = []
    for i in range(n):
        roll = rng.random()
        member, title = rng.randrange(100_000), rng.randrange(5_000)
        raw = {
            "event_id": f"bench-{seed}-{i:010d}",
            "member_id": member,
            "title_id": title,
            "timestamp": t0 + i * 250,
            "country": rng.choice(("US", "GB", "BR", "IN", "JP")),
            "device": rng.choice(("tv", "mobile", "web", "tablet")),
        }
        if roll < 0.7:
            raw.update(
                type="impression",
                row=rng.choice(("trending", "because_you_watched", "top_10", "continue_watching")),
                position=rng.randrange(40),
                artwork=f"{title}-{rng.randrange(4)}",
                propensity=rng.choice((0.25, 0.5, 0.9)),
                experiments={"homepage": rng.choice(("control", "treatment"))},
            )
        elif roll < 0.85:
            raw.update(type="play")
        elif roll < 0.97:
            raw.update(type="progress", value=round(rng.random(), 3))
        else:
            raw.update(type="thumb", value=rng.choice((-1, 1)))
        events.append(raw)
    return events


def _percentile_ms(latencies_s: list[float], q: float) -> float:
    ordered = sorted(latencies_s)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return round(ordered[index] * 1000, 3)


def _summary(events: int, elapsed: list[float], latencies: list[float]) -> dict:
    rates = [events / e for e in elapsed]
    return {
        "events_per_s": round(statistics.median(rates), 1),
        "events_per_s_runs": [round(r, 1) for r in rates],
        "ack_p50_ms": _percentile_ms(latencies, 50),
        "ack_p99_ms": _percentile_ms(latencies, 99),
        "ack_max_ms": _percentile_ms(latencies, 100),
    }


def _in_process(batches: list[list[dict]], root: Path, fsync: bool) -> tuple[float, list[float], int]:
    from state.eventlog import EventLog

    latencies = []
    accepted = 0
    with EventLog(root, fsync=fsync) as log:
        start = time.perf_counter()
        for b in batches:
            t = time.perf_counter()
            accepted += log.append(b).accepted
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - start
    return elapsed, latencies, accepted


def _closed_loop(handle, batches: list[list[dict]]) -> tuple[float, list[float], int]:
    import ray

    latencies = []
    accepted = 0
    start = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        accepted += ray.get(handle.append.remote(b)).accepted
        latencies.append(time.perf_counter() - t)
    return time.perf_counter() - start, latencies, accepted


def _pipelined(handle, batches: list[list[dict]], inflight: int) -> tuple[float, list[float], int]:
    import ray

    latencies = []
    accepted = 0
    pending: dict = {}
    queue = iter(batches)
    start = time.perf_counter()
    for b in queue:
        pending[handle.append.remote(b)] = time.perf_counter()
        if len(pending) >= inflight:
            break
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            accepted += ray.get(ref).accepted
            latencies.append(time.perf_counter() - pending.pop(ref))
            nxt = next(queue, None)
            if nxt is not None:
                pending[handle.append.remote(nxt)] = time.perf_counter()
    return time.perf_counter() - start, latencies, accepted


def run(*, events: int, batch: int, fsync: bool, inflight: int, repeats: int, seed: int = 0) -> dict:
    """Run all three modes `repeats` times; returns the JSON-ready result."""
    import ray

    from actors.events import start_event_log

    _progress(f"building {events} events")
    all_events = make_events(events, seed)
    batches = [all_events[i : i + batch] for i in range(0, events, batch)]
    # The pre-built events are millions of live objects: keep the collector from re-walking them
    # during timing (that pause belongs to the benchmark's fixture, not to the log).
    gc.collect()
    gc.freeze()
    home = Path(tempfile.mkdtemp(prefix="marquee-bench-ingest-"))
    os.environ["MARQUEE_HOME"] = str(home)
    started_ray = not ray.is_initialized()
    if started_ray:
        _progress("starting ray")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    runs: dict[str, dict[str, list]] = {m: {"elapsed": [], "lat": []} for m in ("inprocess", "closed", "pipelined")}
    compact_s: list[float] = []
    lost = 0
    try:
        for rep in range(repeats):
            root = home / f"run-{rep}"
            elapsed, lat, accepted = _in_process(batches, root / "inprocess", fsync)
            lost += events - accepted
            runs["inprocess"]["elapsed"].append(elapsed)
            runs["inprocess"]["lat"] += lat
            _progress(f"run {rep}: in-process {events / elapsed:,.0f} events/s")
            for mode in ("closed", "pipelined"):
                handle = start_event_log(
                    root / mode, name=f"bench-ingest-{mode}-{rep}", namespace="marquee-bench",
                    fsync=fsync, auto_compact=False,
                )
                ray.get(handle.last_seq.remote())  # actor up before timing
                if mode == "closed":
                    elapsed, lat, accepted = _closed_loop(handle, batches)
                    t = time.perf_counter()
                    ray.get(handle.compact.remote(include_active=True))
                    compact_s.append(time.perf_counter() - t)
                else:
                    elapsed, lat, accepted = _pipelined(handle, batches, inflight)
                lost += events - accepted
                runs[mode]["elapsed"].append(elapsed)
                runs[mode]["lat"] += lat
                _progress(f"run {rep}: actor {mode} {events / elapsed:,.0f} events/s")
                ray.kill(handle, no_restart=True)
            shutil.rmtree(root, ignore_errors=True)
    finally:
        if started_ray:
            ray.shutdown()
        shutil.rmtree(home, ignore_errors=True)

    baseline = _summary(events, runs["inprocess"]["elapsed"], runs["inprocess"]["lat"])
    closed = _summary(events, runs["closed"]["elapsed"], runs["closed"]["lat"])
    pipelined = _summary(events, runs["pipelined"]["elapsed"], runs["pipelined"]["lat"])
    return {
        "benchmark": "ingest",
        "events": events,
        "batch": batch,
        "fsync": fsync,
        "repeats": repeats,
        "events_per_s": closed["events_per_s"],
        "ack_p50_ms": closed["ack_p50_ms"],
        "ack_p99_ms": closed["ack_p99_ms"],
        "closed_loop": closed,
        "pipelined": {"inflight": inflight, **pipelined},
        "baseline_inprocess_events_per_s": baseline["events_per_s"],
        "baseline_inprocess": baseline,
        "ratio_actor_vs_inprocess": round(closed["events_per_s"] / baseline["events_per_s"], 3),
        "ratio_pipelined_vs_inprocess": round(pipelined["events_per_s"] / baseline["events_per_s"], 3),
        "compact_all_s_median": round(statistics.median(compact_s), 3),
        "target_events_per_s": TARGET_EVENTS_PER_S,
        "meets_target": closed["events_per_s"] >= TARGET_EVENTS_PER_S,
        "events_not_accepted": lost,
    }
