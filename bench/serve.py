"""`marquee bench serve`: homepage requests/s and latency through Ray Serve's HTTP endpoint against
the same service under plain uvicorn, with the same closed-loop load generator (bench.loadgen),
at several client counts, in the same run.

Two baselines (deployments/inprocess.py), both up for the whole run:
  * fair: as many uvicorn processes as the profile has gateway replicas, each building its own
    service and listening on its own port, the clients spread evenly over them (client k on
    process k mod N: uvicorn's --workers share one socket, and one worker took every keep-alive
    connection in most runs; see deployments/inprocess.py), the GC frozen after start-up, and
    the replica's admission rule (the profile's max_ongoing_requests at once,
    max_queued_requests waiting, 503 + Retry-After beyond) - all read from the profile in
    deployments/app.py - and the scheduling niceness of Serve's replicas (Ray starts its
    workers at 15; read off a replica's pid from /healthz);
  * one_process: one uvicorn process, no admission limit, the GC as Python leaves it (the old
    baseline, not like for like: kept to show what the process count alone does).

Latency percentiles are nearest-rank over every response, a 503 counted with its latency
(accepted_*: 2xx alone). --repeats R runs every level on every target R times (the whole sweep,
R times over, the order of targets rotating); medians and per-repeat figures are reported.
Prints ONE JSON object on stdout; progress (and anything the servers print) goes to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable

from bench.report import emit, progress, stdout_to_stderr
from marquee.home import SERVE_ENV

Load = Callable[[list[str], int], dict]  # (the target's base URLs, one per process; clients) -> LoadResult.to_dict()
BASELINES = ("fair", "one_process")
TARGET_NAMES = ("serve", *BASELINES)
TARGETS = {
    "ratio_at_8_clients": ">= 0.9 (Serve / fair baseline pages/s, median over repeats)",
    "serve_p99_ms_at_8_clients_within_fair": "Serve p99 <= the fair baseline's p99, in every repeat",
    "serve_p99_ms_at_8_clients_under_100": "Serve p99 <= 100 ms, in every repeat",
    "at_64_clients_p99_under_1s": "Serve p99 including shed requests < 1000 ms, in every repeat",
    "every_503_has_retry_after": "every 503 from Serve carries Retry-After",
    "errors": "0 other than deliberate 503",
}
P99_LIMIT_MS_AT_8 = 100.0
P99_LIMIT_MS_AT_64 = 1000.0
RATIO_TARGET = 0.9
MEDIAN_FIELDS = ("requests_per_s", "ok_per_s", "p50_ms", "p95_ms", "p99_ms", "accepted_p50_ms",
                 "accepted_p95_ms", "accepted_p99_ms", "overload_503_p50_ms", "overload_503_p99_ms",
                 "client_cpu_us_per_request")
SUMMED_FIELDS = ("requests", "ok", "errors", "transport_errors", "timeouts", "deliberate_503",
                 "overload_503_without_retry_after", "warmup_errors", "reconnects", "client_cpu_s")
MAX_FIELDS = ("max_ms", "accepted_max_ms")
RUN_FIELDS = ("ok_per_s", "p99_ms", "accepted_p99_ms", "deliberate_503")  # kept per repeat

_progress = progress("serve")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one compact JSON line")
    parser.add_argument("--clients", default="1,8,32,64",
                        help="comma-separated concurrent client counts (default 1,8,32,64)")
    parser.add_argument("--duration", type=float, default=15.0, help="timed seconds per level and server (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed warm-up seconds before each run (default 3)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="times the whole sweep runs on every target; medians reported (default 1)")
    parser.add_argument("--members", type=int, default=200, help="member ids 1..N, cycled by request (default 200)")
    parser.add_argument("--home", type=Path, default=None,
                        help="state directory (default <MARQUEE_HOME>/bench-serve, reused across runs)")
    parser.add_argument("--data", default="world", help="'world' (default) or 'movielens:PATH'")
    parser.add_argument("--profile", default="single", help="deployment profile passed to bring_up (default single)")
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: a free port)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help=f"comma-separated baselines to run: {', '.join(BASELINES)} or 'none' "
                             f"(default {','.join(BASELINES)})")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout seconds (default 10)")
    parser.add_argument("--ready-timeout", type=float, default=180.0,
                        help="seconds to wait for GET /healthz on each server (default 180)")
    parser.add_argument("--ignore-retry-after", action="store_true",
                        help="clients send the next request at once after a 503 (default: wait Retry-After)")


def cli_main(args: argparse.Namespace) -> int:
    try:
        levels = parse_clients(args.clients)
        baselines = parse_baselines(args.baselines)
    except ValueError as exc:
        print(f"{exc}", file=sys.stderr)
        return 2
    for name in ("duration", "members", "repeats", "timeout", "ready_timeout"):
        if getattr(args, name) <= 0:
            print(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.warmup < 0:
        print(f"--warmup must be >= 0, got {args.warmup}", file=sys.stderr)
        return 2
    with stdout_to_stderr():
        result = run(args, levels, baselines)
    return emit(result, args.json)


def baseline_specs(profile: str, home: str, niceness: int | None = None) -> dict:
    """The baselines' WorkerSpecs. `fair` takes the gateway's replica count, admission limit,
    queue bound and backpressure answer from the profile in deployments/app.py."""
    from deployments.app import PROFILES
    from deployments.inprocess import WorkerSpec

    if profile not in PROFILES:
        raise ValueError(f"--profile: unknown profile {profile!r}; known: {sorted(PROFILES)}")
    gateway = PROFILES[profile]["Gateway"]
    replicas = gateway.get("num_replicas") or gateway.get("autoscaling_config", {}).get("min_replicas")
    if not replicas:
        raise ValueError(f"profile {profile!r}: the Gateway has no num_replicas or autoscaling min_replicas")
    backpressure = gateway.get("backpressure_config", {})
    fair = WorkerSpec(home=home, workers=int(replicas),
                      max_ongoing=int(gateway.get("max_ongoing_requests", 5)),  # Serve's default: 5
                      max_queued=int(gateway.get("max_queued_requests", -1)),
                      retry_after_s=backpressure.get("retry_after_s"),
                      status_code=int(backpressure.get("status_code", 503)), freeze_gc=True, niceness=niceness,
                      member_state=PROFILES[profile]["member_state"])
    return {"fair": fair, "one_process": WorkerSpec(home=home, member_state=fair.member_state)}


def start_baseline(spec, ports: list[int]):
    """Start one baseline (a process group: one uvicorn process per port)."""
    from deployments.inprocess import launch

    return launch(spec, ports)


def stop_baseline(process) -> None:
    from deployments.inprocess import stop

    stop(process)


def run(args: argparse.Namespace, levels: list[int], baselines: list[str]) -> dict:
    """Bring Serve and the baselines up, load them level by level, always tear them down."""
    from bench.loadgen import CycleUrls, SpreadClients, run_load
    from marquee.home import Paths
    from ops.local import up
    from ops.local.ports import free_port, free_ports

    paths = Paths(args.home) if args.home else Paths(Paths().home / "bench-serve")
    port = args.port or free_port()
    processes: dict = {}
    started = time.monotonic()
    # a Ray this process was already connected to is not ours to leave (e.g. a test session's)
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        _progress(f"bringing up Marquee (home {paths.home}, profile {args.profile}, port {port})")
        system = up.bring_up(paths, data=args.data, port=port, profile=args.profile)
        urls: dict[str, list[str]] = {"serve": [system["url"].rstrip("/")]}  # each target's processes
        replica_niceness = _niceness_of(wait_healthy(urls["serve"][0], args.ready_timeout))
        # after bring_up: deployments.app imports Ray, which must first see the home's auth settings
        specs = {name: spec for name, spec in baseline_specs(args.profile, str(paths.home), replica_niceness).items()
                 if name in baselines}
        for name, spec in specs.items():
            ports = free_ports(spec.workers)
            _progress(f"starting the {name} baseline: {spec.workers} uvicorn process(es) on port(s) "
                      f"{', '.join(map(str, ports))}")
            processes[name] = start_baseline(spec, ports)
            urls[name] = [f"http://127.0.0.1:{port}" for port in ports]
        for name in specs:  # every process of each, so none is still building its service
            for base in urls[name]:
                wait_healthy(base, args.ready_timeout, process=processes[name])
        setup_s = time.monotonic() - started

        def load(bases: list[str], clients: int) -> dict:
            url_for = SpreadClients([CycleUrls(homepage_urls(base, args.members)) for base in bases])
            return run_load(url_for, clients, args.duration, args.warmup, args.timeout,
                            honor_retry_after=not args.ignore_retry_after).to_dict()

        rows = run_levels(levels, args.repeats, load, urls, say=_progress)
    finally:
        for process in processes.values():
            stop_baseline(process)
        if "ray" in sys.modules and not ray_before:
            import ray

            ray.shutdown()  # leave the cluster bring_up joined, before its head goes
        _progress("stopping Marquee")
        up._stop(paths)
    return build_result(rows, args, specs, setup_s=setup_s)


def parse_clients(text: str) -> list[int]:
    """'1,8,32' -> [1, 8, 32]; every count a positive integer, no duplicates."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not levels or any(n < 1 for n in levels) or len(set(levels)) != len(levels):
        raise ValueError(f"expected distinct positive client counts, got {text!r}")
    return levels


def homepage_urls(base: str, members: int) -> list[str]:
    """The homepage URL of members 1..members (ids start at 1 in the world and in MovieLens;
    request i asks for the (i % members)-th)."""
    base = base.rstrip("/")
    return [f"{base}/v1/homepage?member_id={m}&country=US&device=tv" for m in range(1, members + 1)]


def parse_baselines(text: str) -> list[str]:
    """'fair,one_process' -> ['fair', 'one_process']; 'none' -> []."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in BASELINES]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"--baselines: expected distinct names among {', '.join(BASELINES)} or 'none', got {text!r}")
    return names


def run_levels(levels: list[int], repeats: int, load: Load, urls: dict[str, list[str] | None],
               say: Callable[[str], None] | None = None) -> list[dict]:
    """The whole sweep of levels `repeats` times over, every target at every level, the order of
    targets rotating from one (repeat, level) to the next; one row per level: each target's
    combined runs and the Serve/baseline ratios."""
    targets = [t for t in TARGET_NAMES if urls.get(t)]
    runs: dict[int, dict[str, list[dict]]] = {c: {t: [] for t in targets} for c in levels}
    step = 0
    for rep in range(repeats):
        for clients in levels:
            shift = step % len(targets)
            step += 1
            for target in targets[shift:] + targets[:shift]:
                result = load(urls[target], clients)
                runs[clients][target].append(result)
                if say:
                    say(f"{clients} clients, {target} (repeat {rep + 1}/{repeats}): "
                        f"{result['ok_per_s']:,.0f} ok/s, p99 {result['p99_ms']} ms "
                        f"(accepted {result['accepted_p99_ms']} ms), 503s {result['deliberate_503']}, "
                        f"errors {result['errors']}")
    rows = []
    for clients in levels:
        row: dict = {"clients": clients}
        for target in TARGET_NAMES:
            row[target] = combine_runs(runs[clients][target]) if runs[clients].get(target) else None
        for baseline in BASELINES:
            suffix = "" if baseline == "fair" else f"_vs_{baseline}"
            for name, field in (("rps", "ok_per_s"), ("p99", "p99_ms")):
                per_run = paired_ratios(runs[clients].get("serve"), runs[clients].get(baseline), field)
                row[f"ratio_{name}{suffix}"] = _median(per_run)
                row[f"ratio_{name}{suffix}_runs"] = per_run
        rows.append(row)
    return rows


def paired_ratios(serve: list[dict] | None, baseline: list[dict] | None, field: str) -> list[float | None]:
    """Serve / baseline `field`, repeat by repeat (the two ran back to back in each repeat)."""
    if not serve or not baseline:
        return []
    return [None if s.get(field) is None or not b.get(field) else round(s[field] / b[field], 3)
            for s, b in zip(serve, baseline)]


def combine_runs(runs: list[dict]) -> dict:
    """Repeats of one level and target -> one result: medians of rates and percentiles, sums of
    counts, max of the maxima, the first few error examples, and the per-repeat figures."""
    if not runs:
        raise ValueError("combine_runs needs at least one run")
    out = dict(runs[0])
    for name in MEDIAN_FIELDS:
        out[name] = _median([r.get(name) for r in runs])
    for name in SUMMED_FIELDS:
        total = sum(r.get(name) or 0 for r in runs)
        out[name] = round(total, 3) if isinstance(total, float) else total
    for name in MAX_FIELDS:
        maxima = [r[name] for r in runs if r.get(name) is not None]
        out[name] = max(maxima) if maxima else None
    status: Counter = Counter()
    for r in runs:
        status.update(r.get("status", {}))
    out["status"] = dict(sorted(status.items()))
    out["error_examples"] = [e for r in runs for e in r.get("error_examples", [])][:5]
    out["repeats"] = len(runs)
    for name in RUN_FIELDS:
        out[f"{name}_runs"] = [r.get(name) for r in runs]
    return out


def summarize(rows: list[dict]) -> dict:
    """Headline figures and the target checks (None when a level or baseline needed was not run)."""
    by_clients = {row["clients"]: row for row in rows}
    at8, at64 = by_clients.get(8) or {}, by_clients.get(64) or {}
    serve8, fair8, one8, serve64 = at8.get("serve"), at8.get("fair"), at8.get("one_process"), at64.get("serve")
    serve_rows = [row["serve"] for row in rows if row.get("serve")]
    errors_total = sum(r["errors"] for r in serve_rows)
    bare_503_total = sum(r["overload_503_without_retry_after"] for r in serve_rows)
    ratio8 = at8.get("ratio_rps")
    serve_p99_8 = _present(serve8, "p99_ms_runs")
    fair_p99_8 = _present(fair8, "p99_ms_runs")
    serve_p99_64 = _present(serve64, "p99_ms_runs")
    within_fair = None
    if serve8 and fair8:
        pairs = list(zip(serve8["p99_ms_runs"], fair8["p99_ms_runs"]))
        within_fair = all(s is not None and f is not None and s <= f for s, f in pairs)
    return {
        "ratio_at_8_clients": ratio8,
        "ratio_at_8_clients_runs": at8.get("ratio_rps_runs"),
        "ratio_at_8_clients_vs_one_process": at8.get("ratio_rps_vs_one_process"),
        "serve_p99_ms_at_8_clients": serve8["p99_ms"] if serve8 else None,
        "serve_p99_ms_at_8_clients_max": max(serve_p99_8) if serve_p99_8 else None,
        "serve_p99_ms_at_8_clients_runs": serve8["p99_ms_runs"] if serve8 else None,
        "serve_accepted_p99_ms_at_8_clients": serve8["accepted_p99_ms"] if serve8 else None,
        "fair_p99_ms_at_8_clients": fair8["p99_ms"] if fair8 else None,
        "fair_p99_ms_at_8_clients_runs": fair8["p99_ms_runs"] if fair8 else None,
        "one_process_p99_ms_at_8_clients": one8["p99_ms"] if one8 else None,
        "serve_ok_per_s_at_8_clients": serve8["ok_per_s"] if serve8 else None,
        "fair_ok_per_s_at_8_clients": fair8["ok_per_s"] if fair8 else None,
        "one_process_ok_per_s_at_8_clients": one8["ok_per_s"] if one8 else None,
        "serve_p99_ms_at_64_clients": serve64["p99_ms"] if serve64 else None,
        "serve_p99_ms_at_64_clients_max": max(serve_p99_64) if serve_p99_64 else None,
        "serve_accepted_p99_ms_at_64_clients": serve64["accepted_p99_ms"] if serve64 else None,
        "serve_503_at_64_clients": serve64["deliberate_503"] if serve64 else None,
        "serve_errors_total": errors_total,
        "serve_503_total": sum(r["deliberate_503"] for r in serve_rows),
        "serve_503_without_retry_after_total": bare_503_total,
        "per_level": per_level(rows),
        "targets": dict(TARGETS),
        "meets_targets": {
            "ratio_at_8_clients": None if ratio8 is None else ratio8 >= RATIO_TARGET,
            "serve_p99_ms_at_8_clients_within_fair": within_fair,
            "serve_p99_ms_at_8_clients_under_100": (
                None if serve8 is None else bool(serve_p99_8) and len(serve_p99_8) == len(serve8["p99_ms_runs"])
                and max(serve_p99_8) <= P99_LIMIT_MS_AT_8),
            "at_64_clients_p99_under_1s": (
                None if serve64 is None else bool(serve_p99_64) and len(serve_p99_64) == len(serve64["p99_ms_runs"])
                and max(serve_p99_64) < P99_LIMIT_MS_AT_64),
            "every_503_has_retry_after": None if not serve_rows else bare_503_total == 0,
            "errors": None if not serve_rows else errors_total == 0,
        },
    }


def per_level(rows: list[dict]) -> dict:
    """{clients: {target: medians}}: the figures a reader compares, level by level."""
    keep = ("ok_per_s", "p50_ms", "p99_ms", "accepted_p99_ms", "deliberate_503", "errors")
    out = {}
    for row in rows:
        level = {t: {k: row[t][k] for k in keep} for t in TARGET_NAMES if row.get(t)}
        level["ratio_rps"] = row.get("ratio_rps")
        level["ratio_rps_vs_one_process"] = row.get("ratio_rps_vs_one_process")
        out[str(row["clients"])] = level
    return out


def build_result(rows: list[dict], args: argparse.Namespace, specs: dict, *, setup_s: float | None = None) -> dict:
    from dataclasses import asdict

    return {
        "benchmark": "serve",
        "levels": rows,
        "summary": summarize(rows),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "members": args.members,
        "data": args.data,
        "profile": args.profile,
        "baselines": {name: {k: v for k, v in asdict(spec).items() if k != "home"} for name, spec in specs.items()},
        "setup_s": None if setup_s is None else round(setup_s, 1),
        # what the cluster of `marquee up` runs with (set by ops.local.cluster unless overridden)
        "env": {**{k: os.environ.get(k, v) for k, v in SERVE_ENV.items()}, "cpus": os.cpu_count()},
        "loadgen": "bench.loadgen raw asyncio HTTP/1.1 client (uvloop when installed), one keep-alive "
                   "connection per client, in a spawned process",
        "notes": ("Closed loop: each client sends the next request when the previous body is fully read, "
                  "and waits Retry-After after a 503. ratio_rps = Serve/baseline 2xx per second, repeat by "
                  "repeat, median over repeats (ratio_rps: against the fair baseline; *_vs_one_process: "
                  "against one uvicorn process, which is not like for like). p50/p95/p99/max_ms over every "
                  "response, a 503 with its latency; accepted_*_ms over 2xx alone. errors = other non-2xx + "
                  "transport errors + timeouts. Fair baseline: the profile's gateway replica count as uvicorn "
                  "processes, each on its own port, client k on process k mod N (an even, fixed split of the "
                  "keep-alive connections; Serve's HAProxy balances request by request), GC frozen after start-up, the replica's admission limit and "
                  "queue bound per process. Load generator, servers and Ray share the machine's CPUs."),
    }


def _niceness_of(pids: set) -> int | None:
    """The scheduling niceness of a Serve replica answering on this host (None if unknown)."""
    for pid in pids - {None}:
        try:
            return os.getpriority(os.PRIO_PROCESS, int(pid))
        except (OSError, ValueError):  # not on this host, or gone
            continue
    return None


def wait_healthy(base: str, timeout_s: float, process=None, interval_s: float = 0.25) -> set:
    """Poll GET {base}/healthz until it answers 200; a clear error on timeout or a dead process.
    Returns {the pid its body named} ({None} when it names none): the process that answered."""
    import json
    import urllib.error
    import urllib.request

    url = base.rstrip("/") + "/healthz"
    deadline = time.monotonic() + timeout_s
    last = "no answer yet"
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server for {base} exited with code {process.returncode} before {url} was healthy")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    try:
                        return {json.loads(response.read()).get("pid")}
                    except (ValueError, AttributeError):  # a 200 without a JSON object: no pid
                        return {None}
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"GET {url} did not answer 200 within {timeout_s:.0f} s (last: {last})")
        time.sleep(interval_s)


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _present(result: dict | None, name: str) -> list:
    return [v for v in (result or {}).get(name) or [] if v is not None]
