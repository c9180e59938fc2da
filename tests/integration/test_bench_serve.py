"""`marquee bench serve` harness: levels, rotation, paired ratios, medians, targets (pure functions
with a fake load), the fair baseline's admission rule, and the whole command against stand-ins (no
Ray: bring_up is a trivial HTTP server; the baselines are the real uvicorn launcher, workers and
admission rule around a stand-in app). Behaviour, not timings."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ops.local.up
from bench import serve
from bench.loadgen import LoadResult
from marquee.home import SERVE_ENV

ROOT = Path(__file__).resolve().parents[2]


def fake_result(clients=8, **fields) -> dict:
    base = dict(clients=clients, duration_s=1.0, warmup_s=0.0, client="raw", requests=100, ok=100,
                requests_per_s=100.0, ok_per_s=100.0, p50_ms=5.0, p95_ms=8.0, p99_ms=10.0, max_ms=12.0,
                status={"200": 100})
    base.update(fields)
    return LoadResult(**base).to_dict()


def test_parse_clients():
    assert serve.parse_clients("1,8,32,64") == [1, 8, 32, 64]
    assert serve.parse_clients(" 8 ") == [8]
    for bad in ("", "0", "a,8", "8,8", "-1"):
        with pytest.raises(ValueError):
            serve.parse_clients(bad)


def test_homepage_urls_cycle_member_ids():
    urls = serve.homepage_urls("http://h:1/", 3)
    assert urls == [f"http://h:1/v1/homepage?member_id={m}&country=US&device=tv" for m in (1, 2, 3)]


def test_levels_rotate_order_and_pair_ratios_by_repeat():
    calls = []
    speed = {"S": [60.0, 90.0], "F": [100.0, 100.0], "O": [50.0, 50.0]}

    def load(base, clients):
        rep = sum(1 for b, c in calls if b == base and c == clients)
        calls.append((base, clients))
        return fake_result(clients, ok_per_s=speed[base][rep], p99_ms=20.0 if base == "S" else 10.0)

    rows = serve.run_levels([1, 8], 2, load, {"serve": "S", "fair": "F", "one_process": "O"})
    # the whole sweep twice over; the first target moves on at every (repeat, level)
    assert calls == [("S", 1), ("F", 1), ("O", 1), ("F", 8), ("O", 8), ("S", 8),
                     ("O", 1), ("S", 1), ("F", 1), ("S", 8), ("F", 8), ("O", 8)]
    row = rows[1]
    assert row["clients"] == 8 and row["serve"]["repeats"] == 2
    assert row["ratio_rps_runs"] == [0.6, 0.9] and row["ratio_rps"] == 0.75  # median of paired ratios
    assert row["ratio_rps_vs_one_process_runs"] == [1.2, 1.8]
    assert row["ratio_p99"] == 2.0
    assert row["serve"]["ok_per_s_runs"] == [60.0, 90.0]


def test_missing_baselines_leave_ratios_null():
    rows = serve.run_levels([8], 1, lambda base, c: fake_result(c), {"serve": "S"})
    assert rows[0]["fair"] is None and rows[0]["one_process"] is None and rows[0]["ratio_rps"] is None
    summary = serve.summarize(rows)
    assert summary["ratio_at_8_clients"] is None
    assert summary["meets_targets"]["ratio_at_8_clients"] is None
    assert summary["meets_targets"]["serve_p99_ms_at_8_clients_within_fair"] is None
    assert summary["meets_targets"]["serve_p99_ms_at_8_clients_under_100"] is True


def test_parse_baselines():
    assert serve.parse_baselines("fair,one_process") == ["fair", "one_process"]
    assert serve.parse_baselines("none") == []
    for bad in ("", "fair,fair", "serve", "fair,x"):
        with pytest.raises(ValueError, match="--baselines"):
            serve.parse_baselines(bad)


def test_fair_baseline_is_read_from_the_profile():
    from deployments.app import PROFILES

    gateway = PROFILES["single"]["Gateway"]
    specs = serve.baseline_specs("single", "/h")
    fair, one = specs["fair"], specs["one_process"]
    assert fair.workers == gateway["num_replicas"] > 1
    assert fair.max_ongoing == gateway["max_ongoing_requests"]
    assert fair.max_queued == gateway["max_queued_requests"]
    assert fair.retry_after_s == gateway["backpressure_config"]["retry_after_s"]
    assert fair.freeze_gc is True and fair.home == "/h"
    assert (one.workers, one.max_ongoing, one.freeze_gc) == (1, 0, False)
    # both read member state where the profile's replicas do: only the process count differs
    assert fair.member_state == one.member_state == PROFILES["single"]["member_state"] == "local"
    with pytest.raises(ValueError, match="unknown profile"):
        serve.baseline_specs("nope", "/h")
    # like for like: the fair baseline takes the replicas' niceness; the one-process one stays as it was
    niced = serve.baseline_specs("single", "/h", 15)
    assert niced["fair"].niceness == 15 and niced["one_process"].niceness is None


def test_set_niceness_gives_the_process_that_niceness():
    import subprocess
    import sys

    code = ("import os; from deployments.inprocess import set_niceness; "
            "target = os.getpriority(os.PRIO_PROCESS, 0) + 3; set_niceness(target); "
            "print(target, os.getpriority(os.PRIO_PROCESS, 0))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == out[1]


def test_combine_runs_takes_medians_and_sums():
    runs = [fake_result(ok_per_s=v, p99_ms=p, max_ms=m, requests=10, errors=e, status={"200": 9, "503": 1},
                        accepted_p99_ms=p / 2, error_examples=[f"HTTP 500 #{v}"] * 3)
            for v, p, m, e in ((100.0, 30.0, 40.0, 0), (300.0, 10.0, 90.0, 2), (200.0, 20.0, 50.0, 1))]
    combined = serve.combine_runs(runs)
    assert combined["ok_per_s"] == 200.0 and combined["p99_ms"] == 20.0 and combined["accepted_p99_ms"] == 10.0
    assert combined["max_ms"] == 90.0
    assert combined["requests"] == 30 and combined["errors"] == 3
    assert combined["status"] == {"200": 27, "503": 3}
    assert len(combined["error_examples"]) == 5
    assert combined["p99_ms_runs"] == [30.0, 10.0, 20.0]
    one = serve.combine_runs([fake_result(overload_503_p50_ms=None)])
    assert one["overload_503_p50_ms"] is None and one["repeats"] == 1


def _level(clients, serve_runs, fair_runs):
    load_results = {"S": serve_runs, "F": fair_runs}
    counters = {"S": 0, "F": 0}

    def load(base, c):
        counters[base] += 1
        return load_results[base][counters[base] - 1]

    return serve.run_levels([clients], len(serve_runs), load, {"serve": "S", "fair": "F"})[0]


def test_summary_checks_every_target_in_every_repeat():
    good = [_level(8, [fake_result(ok_per_s=95.0, p99_ms=50.0), fake_result(ok_per_s=92.0, p99_ms=60.0),
                       fake_result(ok_per_s=99.0, p99_ms=55.0)],
                   [fake_result(ok_per_s=100.0, p99_ms=70.0)] * 3),
            _level(64, [fake_result(64, p99_ms=900.0, deliberate_503=5, overload_503_p99_ms=20.0)] * 3,
                   [fake_result(64)] * 3)]
    summary = serve.summarize(good)
    assert summary["ratio_at_8_clients"] == 0.95
    assert summary["serve_p99_ms_at_8_clients_max"] == 60.0 and summary["serve_p99_ms_at_8_clients"] == 55.0
    assert summary["fair_p99_ms_at_8_clients"] == 70.0
    assert summary["serve_p99_ms_at_64_clients"] == 900.0 and summary["serve_503_total"] == 15
    assert summary["per_level"]["8"]["serve"]["p99_ms"] == 55.0
    assert all(summary["meets_targets"].values()), summary["meets_targets"]
    assert set(summary["targets"]) == set(summary["meets_targets"])

    # one repeat over 100 ms and slower than the fair baseline's; 64 clients over 1 s; bare 503s
    bad = [_level(8, [fake_result(ok_per_s=40.0, p99_ms=50.0), fake_result(ok_per_s=40.0, p99_ms=150.0, errors=2)],
                  [fake_result(ok_per_s=100.0, p99_ms=120.0)] * 2),
           _level(64, [fake_result(64, p99_ms=900.0), fake_result(64, p99_ms=1200.0, deliberate_503=3,
                                                                  overload_503_without_retry_after=1)],
                  [fake_result(64)] * 2)]
    summary = serve.summarize(bad)
    assert summary["serve_errors_total"] == 2 and summary["serve_p99_ms_at_8_clients_max"] == 150.0
    assert summary["meets_targets"] == {
        "ratio_at_8_clients": False, "serve_p99_ms_at_8_clients_within_fair": False,
        "serve_p99_ms_at_8_clients_under_100": False, "at_64_clients_p99_under_1s": False,
        "every_503_has_retry_after": False, "errors": False}


# --- the admission rule of the fair baseline --------------------------------------------------

def test_admission_sheds_beyond_the_queue_with_retry_after():
    import asyncio

    from deployments.inprocess import Admission

    async def scenario():
        release = asyncio.Event()
        entered = []

        async def app(scope, receive, send):
            entered.append(scope["path"])
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        gate = Admission(app, max_ongoing=1, max_queued=2, retry_after_s=0.2)
        answers: dict[str, list] = {}

        def sender(name):
            async def send(message):
                answers.setdefault(name, []).append(message)
            return send

        scope = lambda path: {"type": "http", "path": path}  # noqa: E731
        tasks = [asyncio.create_task(gate(scope(f"/{i}"), None, sender(i))) for i in range(3)]
        await asyncio.sleep(0.01)
        assert entered == ["/0"] and gate.queued == 2  # one runs, two wait
        await gate(scope("/3"), None, sender(3))  # answered at once, without waiting
        start = answers[3][0]
        assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]  # rounded up, as Serve
        release.set()
        await asyncio.gather(*tasks)
        assert entered == ["/0", "/1", "/2"] and gate.shed == 1 and gate.queued == 0
        assert all(answers[i][0]["status"] == 200 for i in range(3))

    asyncio.run(scenario())


def test_worker_spec_names_bad_fields():
    from deployments.inprocess import WorkerSpec

    for kwargs, field in (({"workers": 0}, "workers"), ({"max_ongoing": -1}, "max_ongoing"),
                          ({"max_queued": 0}, "max_queued"), ({"retry_after_s": -1}, "retry_after_s"),
                          ({"niceness": 25}, "niceness"), ({"niceness": 1.5}, "niceness")):
        with pytest.raises(ValueError, match=field):
            WorkerSpec(home="/h", **kwargs)
    spec = WorkerSpec(home="/h", workers=2, max_ongoing=2, max_queued=16, freeze_gc=True)
    assert WorkerSpec.from_json(spec.to_json()) == spec


# --- the whole command against stand-in servers ----------------------------------------------

STAND_IN_PAGE_S = 0.02


def stand_in_app(spec):
    """WorkerSpec.build for the tests: each uvicorn worker's app - /healthz names its pid and how
    many pages it served, every other path is a 20 ms 'page' - so the real launcher, admission
    rule and stop run."""
    import asyncio
    import json as json_

    served = [0]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] != "/healthz":
            await asyncio.sleep(STAND_IN_PAGE_S)
            served[0] += 1
        body = json_.dumps({"pid": os.getpid(), "served": served[0]}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    return app


def _trivial_server(port: int) -> subprocess.Popen:
    code = ("print('stand-in server noise on stdout', flush=True)\n"
            "import os\nfrom bench.loadgen import serve_trivial\n"
            f"serve_trivial({port}, body=('{{\"pid\": %d}}' % os.getpid()).encode())")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


def _group_alive(pgid: int) -> list:
    """Processes still running in a process group (zombies waiting for init to reap them are gone)."""
    import psutil

    alive = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append((process.pid, process.info["status"], " ".join(process.cmdline())[:80]))
        except (ProcessLookupError, psutil.Error):
            pass
    return alive


@pytest.fixture
def stand_ins(monkeypatch):
    """bring_up / _stop replaced by a trivial server; the baselines are the real launcher
    (deployments.inprocess: uvicorn, its workers, the admission rule) around stand_in_app."""
    seen: dict = {"processes": [], "baselines": []}

    def bring_up(paths, *, data, port, profile, **kw):
        print("Generating the synthetic world ... (stdout noise)")
        seen["bring_up"] = {"home": paths.home, "data": data, "port": port, "profile": profile}
        seen["processes"].append(_trivial_server(port))
        return {"url": f"http://127.0.0.1:{port}/"}

    def stop(paths):
        seen["stopped"] = paths.home
        seen["processes"][0].kill()
        seen["processes"][0].wait()
        return True

    real_specs, real_start = serve.baseline_specs, serve.start_baseline

    def specs(profile, home, niceness=None):
        return {name: dataclasses.replace(spec, build="tests.integration.test_bench_serve:stand_in_app")
                for name, spec in real_specs(profile, home, niceness).items()}

    def start(spec, ports):
        process = seen.get("start_override", real_start)(spec, ports)
        seen["baselines"].append((spec, process))
        return process

    monkeypatch.setattr(ops.local.up, "bring_up", bring_up)
    monkeypatch.setattr(ops.local.up, "_stop", stop)
    monkeypatch.setattr(serve, "baseline_specs", specs)
    monkeypatch.setattr(serve, "start_baseline", start)
    yield seen
    for process in seen["processes"] + [p for _, p in seen["baselines"]]:
        if process.poll() is None:
            process.kill()
            process.wait()


def _args(tmp_path, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.configure_cli(parser)
    return parser.parse_args(["--home", str(tmp_path), "--clients", "1,64", "--duration", "0.6",
                              "--warmup", "0", "--json", "--ready-timeout", "60", *extra])


def test_command_prints_one_json_object_and_stops_everything(stand_ins, tmp_path, capfd):
    assert serve.cli_main(_args(tmp_path)) == 0
    out, err = capfd.readouterr()
    result = json.loads(out)  # nothing but the JSON object on stdout
    assert "stand-in server noise" in err and "Generating the synthetic world" in err
    assert result["benchmark"] == "serve" and result["profile"] == "single"
    assert [row["clients"] for row in result["levels"]] == [1, 64]
    assert result["baselines"]["fair"]["workers"] == serve.baseline_specs("single", "/h")["fair"].workers
    # read from the process answering as Serve (a child of this one: the same niceness)
    assert result["baselines"]["fair"]["niceness"] == os.getpriority(os.PRIO_PROCESS, 0)
    for row in result["levels"]:
        for target in serve.TARGET_NAMES:
            assert row[target]["ok"] > 0 and row[target]["errors"] == 0, (target, row[target])
        assert row["ratio_rps"] > 0 and row["ratio_rps_vs_one_process"] > 0
    # 64 clients on 2 workers x (2 running + 16 waiting): the fair baseline sheds, with Retry-After,
    # and its percentiles count the 503s; one process without admission sheds nothing
    fair64, one64 = result["levels"][1]["fair"], result["levels"][1]["one_process"]
    assert fair64["deliberate_503"] > 0 and fair64["overload_503_without_retry_after"] == 0
    assert fair64["requests"] == fair64["ok"] + fair64["deliberate_503"]
    assert fair64["p50_ms"] <= fair64["accepted_p50_ms"]  # the fast 503s pull the all-responses median down
    assert one64["deliberate_503"] == 0
    summary = result["summary"]
    assert summary["ratio_at_8_clients"] is None  # no 8-client level in this run
    assert summary["meets_targets"]["errors"] is True
    assert summary["per_level"]["64"]["fair"]["deliberate_503"] == fair64["deliberate_503"]
    # the Serve settings the run had, as `marquee up` sets them, and the machine's CPUs
    assert set(result["env"]) == {*SERVE_ENV, "cpus"} >= {"RAY_SERVE_HAPROXY_METRICS_ENABLED", "RAY_SERVE_ENABLE_HA_PROXY"}
    assert stand_ins["bring_up"]["profile"] == "single" and stand_ins["bring_up"]["home"] == tmp_path
    assert stand_ins["stopped"] == tmp_path
    assert all(p.poll() is not None for p in stand_ins["processes"])
    for _spec, process in stand_ins["baselines"]:  # the supervisor and every worker are gone
        assert process.poll() is not None and _group_alive(process.pid) == []


def test_dead_baseline_is_a_clear_error_and_still_stops(stand_ins, tmp_path):
    stand_ins["start_override"] = lambda spec, ports: subprocess.Popen(
        [sys.executable, "-c", "raise SystemExit(3)"], start_new_session=True)
    with pytest.raises(RuntimeError, match="exited with code 3"):
        serve.cli_main(_args(tmp_path))
    assert stand_ins["stopped"] == tmp_path


def test_fair_baseline_splits_the_clients_evenly_over_its_processes(tmp_path):
    """Each process on its own port, client k on process k mod N: both processes serve half the
    pages (uvicorn's shared socket let one worker take every connection)."""
    import urllib.request

    from bench.loadgen import CycleUrls, SpreadClients, run_load
    from deployments.inprocess import WorkerSpec, launch, stop
    from ops.local.ports import free_ports

    spec = WorkerSpec(home=str(tmp_path), workers=2, max_ongoing=2, max_queued=16, freeze_gc=True,
                      build="tests.integration.test_bench_serve:stand_in_app")
    with pytest.raises(ValueError, match="one per worker"):
        launch(spec, free_ports(1))
    ports = free_ports(2)
    process = launch(spec, ports)
    try:
        bases = [f"http://127.0.0.1:{port}" for port in ports]
        pids = set().union(*(serve.wait_healthy(base, 60, process=process) for base in bases))
        assert len(pids) == 2  # two processes, one behind each port
        result = run_load(SpreadClients([CycleUrls([f"{base}/page"]) for base in bases]), 4, 1.0, 0.0)
        served = [json.loads(urllib.request.urlopen(f"{base}/healthz", timeout=5).read())["served"]
                  for base in bases]
        assert result.errors == 0 and min(served) > 0
        assert abs(served[0] - served[1]) <= 0.2 * max(served), served
    finally:
        stop(process)
    assert process.poll() is not None and _group_alive(process.pid) == []


def test_fair_baseline_is_whole_or_down(tmp_path):
    """A worker that dies ends its supervisor and the other workers: a half baseline never
    passes for the whole one."""
    import psutil

    from deployments.inprocess import WorkerSpec, launch, stop
    from ops.local.ports import free_ports

    spec = WorkerSpec(home=str(tmp_path), workers=2, build="tests.integration.test_bench_serve:stand_in_app")
    ports = free_ports(2)
    process = launch(spec, ports)
    try:
        for port in ports:
            serve.wait_healthy(f"http://127.0.0.1:{port}", 60, process=process)
        children = psutil.Process(process.pid).children()
        assert len(children) == 2
        children[0].kill()
        assert process.wait(30) != 0  # the supervisor reports the death ...
        psutil.wait_procs([children[1]], timeout=30)
        assert not children[1].is_running()  # ... and took the other worker down with it
    finally:
        stop(process)
    assert _group_alive(process.pid) == []


def test_bad_flags_are_rejected(tmp_path, capsys):
    assert serve.cli_main(_args(tmp_path, "--clients", "8,x")) == 2
    assert serve.cli_main(_args(tmp_path, "--baselines", "fast")) == 2
    assert serve.cli_main(_args(tmp_path, "--repeats", "0")) == 2
    assert "--repeats must be > 0" in capsys.readouterr().err
