"""`marquee bench ingest`: events/s and ack latency through the event-log actor and over HTTP.

Ways of appending the same kind of pre-built events, in one run:
  * baseline: the plain EventLog class in this process (no Ray) - the ceiling;
  * closed loop: one batch at a time through the Ray actor, waiting for each ack (a producer);
  * pipelined: a few batches in flight at once through the actor (several producers);
  * http: POST /v1/events through the Serve gateway of a `marquee up` system (its own home,
    bench-ingest), a few batches in flight, each acknowledged by the gateway only after the
    system's event log wrote it durably; a 503 is retried after its Retry-After (batches are
    idempotent by event id). Afterwards the event log is restarted (it rebuilds from disk) and
    every acknowledged event id is looked up in it: the JSON counts any that are missing.
Every append is acknowledged only after fsync (unless --no-fsync; the HTTP system always fsyncs).
Prints one JSON object on stdout (progress on stderr); throughputs are medians over --repeats
runs, latencies are pooled.
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
from dataclasses import dataclass
from pathlib import Path

from bench.report import emit, progress, stdout_to_stderr

TARGET_EVENTS_PER_S = 20_000


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--events", type=int, default=200_000, help="events per run (default 200000)")
    parser.add_argument("--batch", type=int, default=500, help="events per append (default 500)")
    parser.add_argument("--json", action="store_true", help="print the result as one compact JSON line")
    parser.add_argument("--no-fsync", action="store_true", help="acknowledge after write+flush, without fsync")
    parser.add_argument("--inflight", type=int, default=4, help="batches in flight in the pipelined run (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode; throughput is the median (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP run (no `marquee up` system)")
    parser.add_argument("--http-inflight", type=int, default=4,
                        help="batches in flight over HTTP (default 4: two gateway replicas x two at once)")
    parser.add_argument("--home", type=Path, default=None,
                        help="state directory of the HTTP run's system (default <MARQUEE_HOME>/bench-ingest)")
    parser.add_argument("--data", default="world", help="dataset of the HTTP run's system (default world)")
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: a free port)")


def cli_main(args: argparse.Namespace) -> int:
    for name in ("events", "batch", "inflight", "repeats", "http_inflight"):
        if getattr(args, name) < 1:
            print(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    http = None
    if not args.no_http:
        from deployments.gateway import MAX_EVENTS_PER_BATCH

        if args.batch > MAX_EVENTS_PER_BATCH:
            print(f"--batch: the gateway takes at most {MAX_EVENTS_PER_BATCH} events per batch, got "
                  f"{args.batch} (or pass --no-http)", file=sys.stderr)
            return 2
        http = HttpTarget(home=args.home, data=args.data, port=args.port, inflight=args.http_inflight)
    with stdout_to_stderr():  # `marquee up` and Ray print: keep stdout for the JSON
        result = run(
            events=args.events,
            batch=args.batch,
            fsync=not args.no_fsync,
            inflight=args.inflight,
            repeats=args.repeats,
            seed=args.seed,
            http=http,
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


@dataclass(frozen=True)
class HttpTarget:
    """Where the HTTP run posts: a `marquee up` system of its own home (never the user's)."""

    home: Path | None = None  # default <MARQUEE_HOME>/bench-ingest
    data: str = "world"
    port: int | None = None
    inflight: int = 4

    def __post_init__(self) -> None:
        if self.inflight < 1:
            raise ValueError(f"inflight must be >= 1, got {self.inflight}")


def http_bodies(batches: list[list[dict]], run_id: str) -> tuple[list[bytes], list[list[str]]]:
    """JSON bodies of POST /v1/events, the events renamed `http-<run_id>-<n>` (fresh ids: a
    reused home's log must accept them, not count them as duplicates), and each body's ids.
    A batch over the gateway's limits is refused here, naming the limit."""
    import orjson

    from deployments.gateway import MAX_BODY_BYTES, MAX_EVENTS_PER_BATCH

    bodies, ids = [], []
    n = 0
    for batch in batches:
        if len(batch) > MAX_EVENTS_PER_BATCH:
            raise ValueError(f"batch: {len(batch)} events, the gateway takes at most {MAX_EVENTS_PER_BATCH}")
        renamed = []
        for event in batch:
            renamed.append({**event, "event_id": f"http-{run_id}-{n:010d}"})
            n += 1
        body = orjson.dumps({"events": renamed})
        if len(body) > MAX_BODY_BYTES:
            raise ValueError(f"batch: {len(body)} bytes, the gateway takes at most {MAX_BODY_BYTES} per batch")
        bodies.append(body)
        ids.append([e["event_id"] for e in renamed])
    return bodies, ids


def acknowledged(outcomes: list, ids: list[list[str]]) -> tuple[list[str], list[float], int, list[str]]:
    """(acknowledged event ids, ack latencies of the acknowledged batches, batches never
    acknowledged, problems). A 200 acknowledges its whole batch: the log stored every event
    (accepted now, or already there as a duplicate) - anything else in the answer is a problem."""
    import json

    acked: list[str] = []
    latencies: list[float] = []
    unacked = 0
    problems: list[str] = []
    for index, outcome in enumerate(outcomes):
        status, _attempts, latency, answer = outcome if outcome else (0, 0, None, None)
        if status != 200:
            unacked += 1
            if len(problems) < 5:
                problems.append(f"batch {index}: HTTP {status or 'no answer'} {(answer or b'')[:200]!r}")
            continue
        body = json.loads(answer)
        stored = body.get("accepted", 0) + body.get("duplicates", 0)
        if stored != len(ids[index]) or body.get("rejected"):
            unacked += 1
            if len(problems) < 5:
                problems.append(f"batch {index}: stored {stored} of {len(ids[index])}, rejected {body.get('rejected')}")
            continue
        acked += ids[index]
        latencies.append(latency)
    return acked, latencies, unacked, problems


def ids_in_log(handle, since_seq: int, page: int = 50_000) -> set[str]:
    """Every event id the log holds after `since_seq`."""
    import ray

    found: set[str] = set()
    while True:
        table = ray.get(handle.read.remote(since_seq, page))
        if table.num_rows == 0:
            return found
        found.update(table.column("event_id").to_pylist())
        since_seq = table.column("seq")[-1].as_py()


def restart_event_log(handle, timeout_s: float = 300.0) -> float:
    """Kill the event-log actor and let Ray restart it (it rebuilds from disk); seconds taken."""
    import ray

    start = time.perf_counter()
    ray.kill(handle, no_restart=False)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(handle.last_seq.remote(), timeout=30)
            return time.perf_counter() - start
        except Exception:  # still restarting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def run_http(url: str, batches: list[list[dict]], repeats: int, inflight: int) -> dict:
    """POST every batch `repeats` times over (fresh ids each time) to the running system, then
    restart its event log and look every acknowledged id up in it."""
    import ray

    from bench.loadgen import post_bodies
    from marquee.names import EVENT_LOG_ACTOR, NAMESPACE

    run_id = f"{int(time.time() * 1000):x}"
    rates: list[float] = []
    latencies: list[float] = []
    acked: list[str] = []
    stats = {"shed_503": 0, "503_without_retry_after": 0, "transport_errors": 0, "batches_not_acknowledged": 0}
    examples: list[str] = []
    log = ray.get_actor(EVENT_LOG_ACTOR, namespace=NAMESPACE)
    first_seq = ray.get(log.last_seq.remote())
    for rep in range(repeats):
        bodies, ids = http_bodies(batches, f"{run_id}-{rep}")
        out = post_bodies(url, bodies, inflight)
        run_acked, run_latencies, unacked, problems = acknowledged(out["outcomes"], ids)
        acked += run_acked
        latencies += run_latencies
        rates.append(len(run_acked) / out["elapsed_s"])
        stats["batches_not_acknowledged"] += unacked
        for name in ("shed_503", "503_without_retry_after", "transport_errors"):
            stats[name] += out[name]
        examples += (problems + out["error_examples"])[: max(0, 5 - len(examples))]
        _progress(f"run {rep}: HTTP {rates[-1]:,.0f} acknowledged events/s "
                  f"({out['shed_503']} 503s, {unacked} batches not acknowledged)")
    _progress("restarting the event log (it rebuilds from disk) to look up every acknowledged event")
    restart_s = restart_event_log(log)
    present = ids_in_log(log, first_seq)
    missing = sum(1 for event_id in acked if event_id not in present)
    return {
        "url_path": "/v1/events",
        "profile": "single",
        "inflight": inflight,
        "events_per_s": round(statistics.median(rates), 1),
        "events_per_s_runs": [round(r, 1) for r in rates],
        "ack_p50_ms": _percentile_ms(latencies, 50) if latencies else None,
        "ack_p99_ms": _percentile_ms(latencies, 99) if latencies else None,
        "ack_max_ms": _percentile_ms(latencies, 100) if latencies else None,
        "events_sent": sum(len(b) for b in batches) * repeats,
        "acknowledged_events": len(acked),
        "acknowledged_found_in_log": len(acked) - missing,
        "acknowledged_lost": missing,
        "event_log_restart_s": round(restart_s, 2),
        **stats,
        "error_examples": examples,
    }


def bring_up_system(target: HttpTarget):
    """The `marquee up` system of the HTTP run (this process joins its Ray cluster): (paths, url)."""
    from marquee.home import Paths
    from ops.local import up
    from ops.local.ports import free_port

    paths = Paths(target.home) if target.home else Paths(Paths().home / "bench-ingest")
    port = target.port or free_port()
    _progress(f"bringing up Marquee for the HTTP run (home {paths.home}, port {port})")
    try:
        system = up.bring_up(paths, data=target.data, port=port, profile="single")
    except BaseException:
        up._stop(paths)
        raise
    return paths, system["url"].rstrip("/") + "/v1/events"


def run(*, events: int, batch: int, fsync: bool, inflight: int, repeats: int, seed: int = 0,
        http: HttpTarget | None = None) -> dict:
    """Run every mode `repeats` times (HTTP too when `http` is given); returns the JSON-ready result."""
    _progress(f"building {events} events")
    all_events = make_events(events, seed)
    batches = [all_events[i : i + batch] for i in range(0, events, batch)]
    # The pre-built events are millions of live objects: keep the collector from re-walking them
    # during timing (that pause belongs to the benchmark's fixture, not to the log).
    gc.collect()
    gc.freeze()
    system_paths, url, http_result = None, None, None
    if http:  # the actor modes then run on the system's cluster too
        system_paths, url = bring_up_system(http)
    # only now: Ray must first see the system home's auth settings (bring_up sets them)
    import ray

    from actors.events import start_event_log

    home = Path(tempfile.mkdtemp(prefix="marquee-bench-ingest-"))
    started_ray = not ray.is_initialized()
    if started_ray:
        os.environ["MARQUEE_HOME"] = str(home)
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
        if url:
            http_result = run_http(url, batches, repeats, http.inflight)
    finally:
        if started_ray or system_paths:
            ray.shutdown()  # with a system: leave its cluster before its head goes
        if system_paths:
            from ops.local import up

            _progress("stopping Marquee")
            up._stop(system_paths)
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
        "http": http_result and {
            **http_result,
            "ratio_vs_inprocess": (None if not http_result["events_per_s"] else
                                   round(http_result["events_per_s"] / baseline["events_per_s"], 3)),
            "target_events_per_s": TARGET_EVENTS_PER_S,
            "meets_target": bool(http_result["events_per_s"]) and http_result["events_per_s"] >= TARGET_EVENTS_PER_S,
            "nothing_acknowledged_lost": http_result["acknowledged_lost"] == 0 and http_result["acknowledged_events"] > 0,
        },
    }
