"""`marquee bench train`, short form: on a tiny synthetic table, in its own process and Ray
cluster, it runs plain xgboost, a cold Ray Train run with a fresh worker, one that takes the
spares the previous run left, and one started ahead, the plain fit at the Ray workers' niceness,
and prints one JSON object saying so. What
it measures is judged in the README, not here: this checks that the benchmark does what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_runs_every_engine_and_the_cold_run_takes_the_spares():
    out = subprocess.run(
        [sys.executable, "-m", "ops.cli", "bench", "train", "--data", "synthetic", "--rows", "20000",
         "--features", "5", "--rounds", "5", "--repeats", "1", "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["models_identical"] is True, result  # every Ray run's boosters predict as plain xgboost's
    assert result["spares_taken"] == [2], result  # the worker's and the synchronization actor's
    assert len(result["spare_start_wait_s"]) == 3, result  # after the warm-up, the cold run and the run ahead
    assert result["worker_env_vars"] == [["__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR"]], result
    assert result["plain_niceness"] == [result["worker_niceness"]], result  # plain at Ray's worker niceness
    for key in ("plain_s", "ray_train_s", "no_spare_s", "prestarted_s"):
        assert result[key] > 0, result
    for ratio, seconds in (("overhead_ratio", "ray_train_s"), ("no_spare_ratio", "no_spare_s")):
        # both printed rounded to 3 decimals: the product is off by at most that rounding
        assert abs(result[ratio] * result["plain_s"] - result[seconds]) <= 0.001 * (result["plain_s"] + result[ratio] + 1), result
