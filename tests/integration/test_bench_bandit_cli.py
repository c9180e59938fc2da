"""`marquee bench bandit --json` end to end at a tiny size (about 5 s: moved out of the unit tier's
one-minute budget): one JSON object with the reported keys, tuning seeds apart from the reported ones."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from bench import bandit

TINY_ARGS = ["--json", "--steps", "1000", "--seeds", "2", "--tuning-seeds", "1", "--members", "150",
             "--titles", "120", "--history-days", "7", "--timing-calls", "50",
             "--sensitivity-history-days", "14"]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bandit.configure_cli(parser)
    return parser.parse_args(argv)


def test_cli_prints_one_json_object_with_regret_latency_and_targets(capsys):
    assert bandit.cli_main(parse(TINY_ARGS)) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert set(result["policies"]) == {"uniform", "epsilon_greedy", "linucb", "linear_ts", "bernoulli_ts"}
    for name, row in result["policies"].items():
        assert row["regret_mean"] > 0 and math.isfinite(row["regret_std"]) and len(row["regret_per_seed"]) == 2
        assert len(row["tuning"]) == len(bandit.GRIDS[name]) and row["params"] in bandit.GRIDS[name]
        assert result["selection_p99_ms"][name] == row["selection_p99_ms"] > 0
    assert result["selection_p99_ms"]["max"] == max(r["selection_p99_ms"] for r in result["policies"].values())
    settings = result["settings"]
    assert settings["seeds"] == [1, 2] and not set(settings["seeds"]) & set(settings["tuning_seeds"])
    assert len(set(settings["configurations_per_policy"].values()) - {1}) == 1  # same budget when tuned
    assert all(isinstance(v, bool) for v in result["meets_targets"].values())
    assert set(result["meets_targets"]) >= {"linucb_regret_le_0.5x_epsilon_greedy", "linear_ts_regret_le_0.2x_uniform",
                                            "selection_p99_under_1ms"}
    assert result["ratios"]["linucb_vs_uniform"] == pytest.approx(
        result["policies"]["linucb"]["regret_mean"] / result["policies"]["uniform"]["regret_mean"], rel=1e-3)
    assert 0 < result["ceilings_vs_uniform"]["linear_hindsight"] < 1.2
    assert set(result["oracles"]) == set(bandit.ORACLES)
    for row in result["oracles"].values():
        assert row["regret_mean"] > 0 and row["regret_vs_uniform"] == pytest.approx(
            row["regret_mean"] / result["policies"]["uniform"]["regret_mean"], rel=1e-3)
    longer = result["history_sensitivity"]["14"]
    assert longer["linucb_vs_uniform"] == pytest.approx(longer["linucb_regret_mean"] / longer["uniform_regret_mean"],
                                                        rel=1e-3)
