"""`marquee bench ope`: how the `best` rules of off-policy evaluation do where the truth is known.

On synthetic campaigns in the Open Bandit Dataset's layout (bandits.obd_synthetic: a known click
model, a uniform logger and a context-free evaluation policy that leans toward good items), each
replication runs exactly what `marquee ope --obd` runs (bandits.obd.evaluate_bts_from_random) and
scores every estimator and every rule's pick against the true value and against the evaluation
policy's own logged rate (the noisy reference the real samples offer): mean relative error, the
share within the 0.16 target, and interval coverage. The rules compared in the same run (BEST_RULES):
`narrowest_consistent` (the default, fixed in advance: the narrowest interval among IPS, SNIPS,
DR, SNDR), `intersection` (SLOPE) and `mse` (estimated variance plus squared bias).

Scenarios (fixed before any rule was compared on them; the `mse` rule was designed after seeing
seeds 1-10, so it is judged on others, `--first-seed 101`):
  * faint: ~0.4% clicks, small item and user effects, an evaluation policy that leans a little
    (the shape of the real samples: the reward model can learn almost nothing);
  * concentrated: ~0.4% clicks, strong item effects, an evaluation policy that leans hard (DM on a
    near-constant model is badly biased: a good rule must not pick it);
  * rich: ~3% clicks, strong item effects, leaning hard (enough clicks for the model to learn).

Prints ONE JSON object on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from bandits.obd import evaluate_bts_from_random
from bandits.obd_synthetic import Scenario, write_campaign
from bandits.ope import BEST_RULES, ESTIMATORS
from bench.report import emit, progress

TARGET_RELATIVE_ERROR = 0.16
SCENARIOS = (
    Scenario("faint", base_rate=0.004, item_std=0.3, user_std=0.3, concentration=1.0),
    Scenario("concentrated", base_rate=0.004, item_std=0.8, user_std=0.3, concentration=3.0),
    Scenario("rich", base_rate=0.03, item_std=0.8, user_std=0.3, concentration=3.0),
)

_progress = progress("ope")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one compact JSON line")
    parser.add_argument("--replications", type=int, default=20, help="seeded campaigns per scenario (default 20)")
    parser.add_argument("--first-seed", type=int, default=101,
                        help="seeds first..first+replications-1 per scenario (default 101: the mse rule was "
                             "designed on 1-10)")
    parser.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples per campaign (default 500)")
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS),
                        help="comma-separated scenario names (default all)")


def score(report: dict[str, Any], true_value: float) -> dict[str, dict[str, Any]]:
    """Per estimator: relative error against the true value and the observed rate, and coverage."""
    observed = report["observed_rate"]
    out = {}
    for name, e in report["estimators"].items():
        out[name] = {
            "error_true": abs(e["estimate"] - true_value) / true_value,
            "error_observed": abs(e["estimate"] - observed) / observed if observed > 0 else float("nan"),
            "covers_true": e["ci_low"] <= true_value <= e["ci_high"],
            "covers_observed": e["ci_low"] <= observed <= e["ci_high"],
        }
    return out


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over replications of one estimator's (or one rule's picks') scores."""
    def mean(key: str) -> float:
        return round(statistics.fmean(float(r[key]) for r in rows), 4)

    return {
        "mean_relative_error_true": mean("error_true"),
        "mean_relative_error_observed": mean("error_observed"),
        "within_target_true": round(statistics.fmean(r["error_true"] <= TARGET_RELATIVE_ERROR for r in rows), 4),
        "within_target_and_covers_observed": round(statistics.fmean(
            r["error_observed"] <= TARGET_RELATIVE_ERROR and r["covers_observed"] for r in rows), 4),
        "coverage_true": mean("covers_true"),
        "coverage_observed": mean("covers_observed"),
    }


def run_scenario(scenario: Scenario, replications: int, n_resamples: int, first_seed: int = 1) -> dict[str, Any]:
    per_estimator: dict[str, list] = {name: [] for name in ESTIMATORS}
    per_rule: dict[str, list] = {rule: [] for rule in BEST_RULES}
    picks: dict[str, dict[str, int]] = {rule: {} for rule in BEST_RULES}
    truth = []
    for seed in range(first_seed, first_seed + replications):
        with tempfile.TemporaryDirectory(prefix="marquee-ope-") as folder:
            campaign = write_campaign(folder, scenario, seed)
            report = evaluate_bts_from_random(folder, campaign.name, seed=seed, n_resamples=n_resamples)
        scores = score(report, campaign.true_value)
        truth.append((campaign.true_value, campaign.logging_value, report["observed_rate"]))
        for name in ESTIMATORS:
            per_estimator[name].append(scores[name])
        for rule, name in report["best_by_rule"].items():
            per_rule[rule].append(scores[name])
            picks[rule][name] = picks[rule].get(name, 0) + 1
    _progress(f"{scenario.name}: " + ", ".join(
        f"{rule} {summarise(rows)['mean_relative_error_true']:.3f}" for rule, rows in per_rule.items()))
    return {
        "scenario": {k: v for k, v in vars(scenario).items()},
        "true_value_mean": round(statistics.fmean(t for t, _, _ in truth), 6),
        "true_over_logging_mean": round(statistics.fmean(t / lv for t, lv, _ in truth), 4),
        "observed_clicks_mean": round(statistics.fmean(o for _, _, o in truth) * scenario.rows, 1),
        "estimators": {name: summarise(rows) for name, rows in per_estimator.items()},
        "rules": {rule: summarise(rows) | {"picks": picks[rule]} for rule, rows in per_rule.items()},
    }


def cli_main(args: argparse.Namespace) -> int:
    chosen = [s for s in SCENARIOS if s.name in args.scenarios.split(",")]
    unknown = set(args.scenarios.split(",")) - {s.name for s in SCENARIOS}
    if unknown or args.replications < 1 or args.bootstrap < 1:
        _progress(f"error: unknown scenario(s) {sorted(unknown)} (known: {', '.join(s.name for s in SCENARIOS)})"
                  if unknown else "error: --replications and --bootstrap must be >= 1")
        return 2
    began = time.perf_counter()
    scenarios = {s.name: run_scenario(s, args.replications, args.bootstrap, args.first_seed) for s in chosen}
    overall = {rule: round(statistics.fmean(r["rules"][rule]["mean_relative_error_true"] for r in scenarios.values()), 4)
               for rule in BEST_RULES}
    return emit({
        "benchmark": "ope",
        "replications": args.replications,
        "seeds": [args.first_seed, args.first_seed + args.replications - 1],
        "bootstrap": args.bootstrap,
        "target_relative_error": TARGET_RELATIVE_ERROR,
        "scenarios": scenarios,
        "rules_mean_relative_error_true": overall,
        "elapsed_s": round(time.perf_counter() - began, 1),
    }, args.json)
