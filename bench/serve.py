"""`marquee bench serve`: homepage requests/s and latency through Ray Serve's HTTP endpoint against
the same pipeline served in-process by plain uvicorn, with the same closed-loop load generator
(bench.loadgen), at several client counts, in the same run.

Fairness on a noisy 2-core machine: both servers are up for the whole run (the idle one costs
little), the order in-process/Serve alternates from one level (and repeat) to the next, and with
--repeats R the medians of requests/s and of each percentile are reported. Latency percentiles are
nearest-rank over 2xx answers; 503s are counted apart as deliberate load shedding. Prints ONE JSON
object on stdout; progress (and anything the servers print) goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from bench.report import emit, progress
from marquee.home import SERVE_ENV

Load = Callable[[str, int], dict]  # (base URL, clients) -> LoadResult.to_dict()
TARGETS = {
    "ratio_at_8_clients": ">= 0.5",
    "serve_p99_ms_at_8_clients": "<= 100",
    "at_64_clients": "p99 < 1000 ms or 503 with Retry-After in < 50 ms",
    "errors": "0 other than deliberate 503",
}
MEDIAN_FIELDS = ("requests_per_s", "ok_per_s", "p50_ms", "p95_ms", "p99_ms", "overload_503_p50_ms",
                 "overload_503_p99_ms", "client_cpu_us_per_request")
SUMMED_FIELDS = ("requests", "ok", "errors", "transport_errors", "timeouts", "deliberate_503",
                 "overload_503_without_retry_after", "warmup_errors", "reconnects", "client_cpu_s")

_progress = progress("serve")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one compact JSON line")
    parser.add_argument("--clients", default="1,8,32,64",
                        help="comma-separated concurrent client counts (default 1,8,32,64)")
    parser.add_argument("--duration", type=float, default=15.0, help="timed seconds per level and server (default 15)")
    parser.add_argument("--warmup", type=float, default=3.0, help="untimed warm-up seconds before each run (default 3)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per level and server; medians reported (default 1)")
    parser.add_argument("--members", type=int, default=200, help="member ids 1..N, cycled by request (default 200)")
    parser.add_argument("--home", type=Path, default=None,
                        help="state directory (default <MARQUEE_HOME>/bench-serve, reused across runs)")
    parser.add_argument("--data", default="world", help="'world' (default) or 'movielens:PATH'")
    parser.add_argument("--profile", default="single", help="deployment profile passed to bring_up (default single)")
    parser.add_argument("--port", type=int, default=None, help="Serve HTTP port (default: a free port)")
    parser.add_argument("--inprocess-port", type=int, default=None, help="uvicorn port (default: a free port)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout seconds (default 10)")
    parser.add_argument("--ready-timeout", type=float, default=180.0,
                        help="seconds to wait for GET /healthz on each server (default 180)")
    parser.add_argument("--skip-inprocess", action="store_true", help="debug only: Serve alone, ratios null")
    parser.add_argument("--ignore-retry-after", action="store_true",
                        help="clients send the next request at once after a 503 (default: wait Retry-After)")


def cli_main(args: argparse.Namespace) -> int:
    try:
        levels = parse_clients(args.clients)
    except ValueError as exc:
        print(f"--clients: {exc}", file=sys.stderr)
        return 2
    for name in ("duration", "members", "repeats", "timeout", "ready_timeout"):
        if getattr(args, name) <= 0:
            print(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}", file=sys.stderr)
            return 2
    if args.warmup < 0:
        print(f"--warmup must be >= 0, got {args.warmup}", file=sys.stderr)
        return 2
    with stdout_to_stderr():
        result = run(args, levels)
    return emit(result, args.json)


def run(args: argparse.Namespace, levels: list[int]) -> dict:
    """Bring both servers up, load them level by level, always tear them down."""
    from bench.loadgen import CycleUrls, run_load
    from marquee.home import Paths
    from ops.local.ports import free_port
    from ops.local.up import _stop, bring_up

    paths = Paths(args.home) if args.home else Paths(Paths().home / "bench-serve")
    port = args.port or free_port()
    inprocess_port = args.inprocess_port or free_port()
    inprocess = None
    started = time.monotonic()
    try:
        _progress(f"bringing up Marquee (home {paths.home}, profile {args.profile}, port {port})")
        system = bring_up(paths, data=args.data, port=port, profile=args.profile)
        urls = {"serve": system["url"].rstrip("/"), "inprocess": None}
        wait_healthy(urls["serve"], args.ready_timeout)
        if not args.skip_inprocess:
            from deployments.app import serve_inprocess

            _progress(f"starting the in-process (uvicorn) server on port {inprocess_port}")
            inprocess = serve_inprocess(str(paths.home), inprocess_port)
            urls["inprocess"] = f"http://127.0.0.1:{inprocess_port}"
            wait_healthy(urls["inprocess"], args.ready_timeout, process=inprocess)
        setup_s = time.monotonic() - started

        def load(base: str, clients: int) -> dict:
            url_for = CycleUrls(homepage_urls(base, args.members))
            return run_load(url_for, clients, args.duration, args.warmup, args.timeout,
                            honor_retry_after=not args.ignore_retry_after).to_dict()

        rows = run_levels(levels, args.repeats, load, urls, say=_progress)
    finally:
        stop_process(inprocess)
        if "ray" in sys.modules:
            import ray

            ray.shutdown()  # leave the cluster before its head goes
        _progress("stopping Marquee")
        _stop(paths)
    return build_result(rows, args, setup_s=setup_s)


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


def run_levels(levels: list[int], repeats: int, load: Load, urls: dict[str, str | None],
               say: Callable[[str], None] | None = None) -> list[dict]:
    """Load every target at every level `repeats` times, alternating which target goes first; one
    row per level: combined results per target and the Serve/in-process ratios."""
    targets = [t for t in ("inprocess", "serve") if urls.get(t)]
    rows = []
    for li, clients in enumerate(levels):
        runs: dict[str, list[dict]] = {t: [] for t in targets}
        for rep in range(repeats):
            order = targets if (li + rep) % 2 == 0 else targets[::-1]
            for target in order:
                result = load(urls[target], clients)
                runs[target].append(result)
                if say:
                    say(f"{clients} clients, {target} (repeat {rep + 1}/{repeats}): "
                        f"{result['ok_per_s']:,.0f} ok/s, p99 {result['p99_ms']} ms, "
                        f"503s {result['deliberate_503']}, errors {result['errors']}")
        row: dict = {"clients": clients}
        for target in ("serve", "inprocess"):
            row[target] = combine_runs(runs[target]) if runs.get(target) else None
        row["ratio_rps"] = _ratio(row["serve"], row["inprocess"], "ok_per_s")
        row["ratio_p99"] = _ratio(row["serve"], row["inprocess"], "p99_ms")
        rows.append(row)
    return rows


def combine_runs(runs: list[dict]) -> dict:
    """Repeats of one level and target -> one result: medians of rates and percentiles, sums of
    counts, max of max_ms, the first few error examples, and the per-run figures."""
    if not runs:
        raise ValueError("combine_runs needs at least one run")
    out = dict(runs[0])
    for name in MEDIAN_FIELDS:
        out[name] = _median([r.get(name) for r in runs])
    for name in SUMMED_FIELDS:
        total = sum(r.get(name) or 0 for r in runs)
        out[name] = round(total, 3) if isinstance(total, float) else total
    maxima = [r["max_ms"] for r in runs if r.get("max_ms") is not None]
    out["max_ms"] = max(maxima) if maxima else None
    status: Counter = Counter()
    for r in runs:
        status.update(r.get("status", {}))
    out["status"] = dict(sorted(status.items()))
    out["error_examples"] = [e for r in runs for e in r.get("error_examples", [])][:5]
    out["repeats"] = len(runs)
    out["ok_per_s_runs"] = [r["ok_per_s"] for r in runs]
    out["p99_ms_runs"] = [r["p99_ms"] for r in runs]
    return out


def summarize(rows: list[dict]) -> dict:
    """Headline figures and the target checks (None when the level needed was not run)."""
    by_clients = {row["clients"]: row for row in rows}
    at8, at64 = by_clients.get(8), by_clients.get(64)
    serve8 = at8["serve"] if at8 else None
    serve64 = at64["serve"] if at64 else None
    serve_rows = [row["serve"] for row in rows if row.get("serve")]
    errors_total = sum(r["errors"] for r in serve_rows)
    bare_503_total = sum(r["overload_503_without_retry_after"] for r in serve_rows)
    ratio8 = at8["ratio_rps"] if at8 else None
    p99_8 = serve8["p99_ms"] if serve8 else None
    return {
        "ratio_at_8_clients": ratio8,
        "serve_p99_ms_at_8_clients": p99_8,
        "serve_p99_ms_at_64_clients": serve64["p99_ms"] if serve64 else None,
        "at_64_clients": overload_parts(serve64) if serve64 else None,
        "serve_ok_per_s_at_8_clients": serve8["ok_per_s"] if serve8 else None,
        "inprocess_ok_per_s_at_8_clients": at8["inprocess"]["ok_per_s"] if at8 and at8.get("inprocess") else None,
        "serve_errors_total": errors_total,
        "serve_503_total": sum(r["deliberate_503"] for r in serve_rows),
        "serve_503_without_retry_after_total": bare_503_total,
        "targets": dict(TARGETS),
        "meets_targets": {
            "ratio_at_8_clients": None if ratio8 is None else ratio8 >= 0.5,
            "serve_p99_ms_at_8_clients": None if serve8 is None else (p99_8 is not None and p99_8 <= 100),
            "at_64_clients": None if serve64 is None else meets_overload_target(serve64),
            "errors": None if not serve_rows else errors_total == 0 and bare_503_total == 0,
        },
    }


def overload_parts(result: dict) -> dict:
    """The two ways the 64-client target can be met, each on its own."""
    served = result["ok"] > 0 and result["p99_ms"] is not None and result["p99_ms"] < 1000
    shed = (result["deliberate_503"] > 0 and result["overload_503_without_retry_after"] == 0
            and result["overload_503_p99_ms"] is not None and result["overload_503_p99_ms"] < 50)
    return {"served_p99_under_1s": served, "shed_503_with_retry_after_p99_under_50ms": shed}


def meets_overload_target(result: dict) -> bool:
    """The issue's words: no collapse at 64 clients, "p99 under 1 s, or overload answered with 503
    and Retry-After in under 50 ms". A 503 without Retry-After fails the errors target instead."""
    return any(overload_parts(result).values())


def build_result(rows: list[dict], args: argparse.Namespace, *, setup_s: float | None = None) -> dict:
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
        "setup_s": None if setup_s is None else round(setup_s, 1),
        # what the cluster of `marquee up` runs with (set by ops.local.cluster unless overridden)
        "env": {**{k: os.environ.get(k, v) for k, v in SERVE_ENV.items()}, "cpus": os.cpu_count()},
        "loadgen": "bench.loadgen raw asyncio HTTP/1.1 client (uvloop when installed), one keep-alive "
                   "connection per client, in a spawned process",
        "notes": ("Closed loop: each client sends the next request when the previous body is fully read. "
                  "ratio_rps = Serve/in-process 2xx per second; ratio_p99 = Serve/in-process 2xx p99. "
                  "Percentiles nearest-rank over 2xx answers; 503s counted apart (deliberate shedding); "
                  "errors = other non-2xx + transport errors + timeouts. Load generator, both servers and "
                  "Ray share the machine's CPUs; order alternates per level/repeat; medians over repeats."
                  + (" In-process baseline skipped (--skip-inprocess)." if args.skip_inprocess else "")),
    }


def wait_healthy(base: str, timeout_s: float, process=None, interval_s: float = 0.25) -> None:
    """Poll GET {base}/healthz until it answers 200; a clear error on timeout or a dead process."""
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
                    return
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if time.monotonic() >= deadline:
            raise RuntimeError(f"GET {url} did not answer 200 within {timeout_s:.0f} s (last: {last})")
        time.sleep(interval_s)


def stop_process(process, grace_s: float = 15.0) -> None:
    """Terminate a server we started (SIGTERM, then SIGKILL after `grace_s`)."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except Exception:
        process.kill()
        process.wait()


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout - ours, Ray's, child servers' (they inherit fd 1) - to
    stderr while the benchmark runs, so stdout carries only the one JSON object."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _median(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _ratio(serve: dict | None, inprocess: dict | None, name: str) -> float | None:
    if not serve or not inprocess or serve.get(name) is None or not inprocess.get(name):
        return None
    return round(serve[name] / inprocess[name], 3)
