"""`marquee bench serve` harness: levels, interleaving, medians, targets (pure functions with a fake
load), and the whole command against stand-in servers (no Ray: bring_up and the in-process server
are replaced by trivial HTTP servers in child processes)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import ops.local.up
from bench import serve
from bench.loadgen import LoadResult

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


def test_levels_alternate_order_and_compute_ratios():
    calls = []
    speed = {"S": 60.0, "I": 100.0}

    def load(base, clients):
        calls.append((base, clients))
        return fake_result(clients, ok_per_s=speed[base], p99_ms=20.0 if base == "S" else 10.0)

    rows = serve.run_levels([1, 8], 2, load, {"serve": "S", "inprocess": "I"})
    assert calls == [("I", 1), ("S", 1), ("S", 1), ("I", 1), ("S", 8), ("I", 8), ("I", 8), ("S", 8)]
    assert [r["clients"] for r in rows] == [1, 8]
    assert rows[1]["ratio_rps"] == 0.6 and rows[1]["ratio_p99"] == 2.0
    assert rows[1]["serve"]["repeats"] == 2 and rows[1]["serve"]["ok_per_s_runs"] == [60.0, 60.0]


def test_skip_inprocess_leaves_ratios_null():
    rows = serve.run_levels([8], 1, lambda base, c: fake_result(c), {"serve": "S", "inprocess": None})
    assert rows[0]["inprocess"] is None and rows[0]["ratio_rps"] is None
    summary = serve.summarize(rows)
    assert summary["ratio_at_8_clients"] is None
    assert summary["meets_targets"]["ratio_at_8_clients"] is None
    assert summary["meets_targets"]["serve_p99_ms_at_8_clients"] is True


def test_combine_runs_takes_medians_and_sums():
    runs = [fake_result(ok_per_s=v, p99_ms=p, max_ms=m, requests=10, errors=e, status={"200": 9, "503": 1},
                        error_examples=[f"HTTP 500 #{v}"] * 3)
            for v, p, m, e in ((100.0, 30.0, 40.0, 0), (300.0, 10.0, 90.0, 2), (200.0, 20.0, 50.0, 1))]
    combined = serve.combine_runs(runs)
    assert combined["ok_per_s"] == 200.0 and combined["p99_ms"] == 20.0
    assert combined["max_ms"] == 90.0
    assert combined["requests"] == 30 and combined["errors"] == 3
    assert combined["status"] == {"200": 27, "503": 3}
    assert len(combined["error_examples"]) == 5
    assert combined["p99_ms_runs"] == [30.0, 10.0, 20.0]
    one = serve.combine_runs([fake_result(overload_503_p50_ms=None)])
    assert one["overload_503_p50_ms"] is None and one["repeats"] == 1


def _row(clients, serve_result, inprocess_result):
    return {"clients": clients, "serve": serve_result, "inprocess": inprocess_result,
            "ratio_rps": serve._ratio(serve_result, inprocess_result, "ok_per_s"),
            "ratio_p99": serve._ratio(serve_result, inprocess_result, "p99_ms")}


def test_summary_checks_every_target():
    good = [_row(8, fake_result(ok_per_s=80.0, p99_ms=50.0), fake_result(ok_per_s=100.0)),
            _row(64, fake_result(64, p99_ms=900.0, deliberate_503=5, overload_503_p99_ms=20.0),
                 fake_result(64))]
    summary = serve.summarize(good)
    assert summary["ratio_at_8_clients"] == 0.8
    assert summary["serve_p99_ms_at_8_clients"] == 50.0
    assert summary["serve_p99_ms_at_64_clients"] == 900.0
    assert summary["meets_targets"] == {"ratio_at_8_clients": True, "serve_p99_ms_at_8_clients": True,
                                        "at_64_clients": True, "errors": True}
    assert set(summary["targets"]) == set(summary["meets_targets"])

    bad = [_row(8, fake_result(ok_per_s=40.0, p99_ms=150.0, errors=2), fake_result(ok_per_s=100.0))]
    summary = serve.summarize(bad)
    assert summary["serve_errors_total"] == 2
    assert summary["meets_targets"] == {"ratio_at_8_clients": False, "serve_p99_ms_at_8_clients": False,
                                        "at_64_clients": None, "errors": False}


@pytest.mark.parametrize("fields, meets", [
    ({"p99_ms": 999.0}, True),
    ({"p99_ms": 1000.0}, False),
    ({"ok": 0, "p99_ms": None, "deliberate_503": 100, "overload_503_p99_ms": 3.0}, True),
    ({"deliberate_503": 10, "overload_503_p99_ms": 60.0}, True),  # served fast enough: the first clause
    ({"p99_ms": 1500.0, "deliberate_503": 10, "overload_503_p99_ms": 60.0}, False),
    ({"p99_ms": 1500.0, "deliberate_503": 10, "overload_503_p99_ms": 3.0}, True),  # shed fast: the second
    ({"p99_ms": 1500.0, "deliberate_503": 10, "overload_503_p99_ms": 3.0, "overload_503_without_retry_after": 1},
     False),
    ({"requests": 0, "ok": 0, "p99_ms": None}, False),
])
def test_overload_target(fields, meets):
    assert serve.meets_overload_target(fake_result(64, **fields)) is meets


# --- the whole command against stand-in servers ----------------------------------------------

def _trivial_server(port: int) -> subprocess.Popen:
    code = ("print('stand-in server noise on stdout', flush=True)\n"
            f"from bench.loadgen import serve_trivial\nserve_trivial({port})")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)


@pytest.fixture
def stand_ins(monkeypatch):
    """Replace bring_up / _stop / serve_inprocess by trivial servers; records how they were called."""
    seen: dict = {"processes": []}

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

    def serve_inprocess(home, port):
        seen["inprocess"] = {"home": home, "port": port}
        process = seen["inprocess_process"](port)
        seen["processes"].append(process)
        return process

    seen["inprocess_process"] = _trivial_server
    monkeypatch.setattr(ops.local.up, "bring_up", bring_up)
    monkeypatch.setattr(ops.local.up, "_stop", stop)
    monkeypatch.setitem(sys.modules, "deployments.app", types.SimpleNamespace(serve_inprocess=serve_inprocess))
    yield seen
    for process in seen["processes"]:
        if process.poll() is None:
            process.kill()
            process.wait()


def _args(tmp_path, *extra) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    serve.configure_cli(parser)
    return parser.parse_args(["--home", str(tmp_path), "--clients", "1,8", "--duration", "0.3",
                              "--warmup", "0.1", "--json", "--ready-timeout", "20", *extra])


def test_command_prints_one_json_object_and_stops_everything(stand_ins, tmp_path, capfd):
    assert serve.cli_main(_args(tmp_path, "--profile", "multi")) == 0
    out, err = capfd.readouterr()
    result = json.loads(out)  # nothing but the JSON object on stdout
    assert "stand-in server noise" in err and "Generating the synthetic world" in err
    assert result["benchmark"] == "serve" and result["profile"] == "multi"
    assert [row["clients"] for row in result["levels"]] == [1, 8]
    for row in result["levels"]:
        for target in ("serve", "inprocess"):
            assert row[target]["ok"] > 0 and row[target]["errors"] == 0
        assert row["ratio_rps"] > 0
    assert result["summary"]["meets_targets"]["errors"] is True
    assert result["summary"]["ratio_at_8_clients"] == result["levels"][1]["ratio_rps"]
    assert set(result["env"]) == {"RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY", "cpus"}
    assert result["env"]["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == os.environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    assert stand_ins["bring_up"]["profile"] == "multi" and stand_ins["bring_up"]["home"] == tmp_path
    assert stand_ins["stopped"] == tmp_path
    assert all(p.poll() is not None for p in stand_ins["processes"])


def test_dead_inprocess_server_is_a_clear_error_and_still_stops(stand_ins, tmp_path):
    stand_ins["inprocess_process"] = lambda port: subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(RuntimeError, match="exited with code 3"):
        serve.cli_main(_args(tmp_path))
    assert stand_ins["stopped"] == tmp_path


def test_bad_flags_are_rejected(tmp_path, capsys):
    assert serve.cli_main(_args(tmp_path, "--clients", "8,x")) == 2
    assert serve.cli_main(_args(tmp_path, "--repeats", "0")) == 2
    assert "--repeats must be > 0" in capsys.readouterr().err
