"""Synthetic Open Bandit campaigns: readable by the real reader, seeded, and their true value is
what the evaluation policy earns (checked against the logs of a long run), plus bench ope's CLI."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from bandits.obd import read_campaign_logs, read_item_context
from bandits.obd_synthetic import Scenario, write_campaign
from bench import ope as bench_ope

SMALL = Scenario("small", base_rate=0.2, item_std=0.8, user_std=0.3, concentration=3.0, n_items=6, rows=40_000)


def test_the_campaign_reads_as_the_real_layout_and_is_seeded(tmp_path):
    a = write_campaign(tmp_path / "a", SMALL, seed=3)
    b = write_campaign(tmp_path / "b", SMALL, seed=3)
    random_logs, bts_logs = (read_campaign_logs(a.root, policy, a.name) for policy in ("random", "bts"))
    assert random_logs.n == bts_logs.n == SMALL.rows and random_logs.affinity.shape[1] == SMALL.n_items
    assert np.allclose(random_logs.propensity, 1 / SMALL.n_items)
    assert read_item_context(a.root, a.name).shape == (SMALL.n_items, 3)
    assert a.true_value == b.true_value
    same = [pd.read_csv(c.root / "bts" / c.name / f"{c.name}.csv") for c in (a, b)]
    pd.testing.assert_frame_equal(*same)
    assert write_campaign(tmp_path / "c", SMALL, seed=4).true_value != a.true_value


def test_the_true_value_is_what_each_policys_logs_earn(tmp_path):
    c = write_campaign(tmp_path, SMALL, seed=5)
    for policy, value in (("bts", c.true_value), ("random", c.logging_value)):
        clicks = read_campaign_logs(c.root, policy, c.name).click
        assert clicks.mean() == pytest.approx(value, abs=4 * np.sqrt(value * (1 - value) / clicks.size)), policy
    assert c.true_value > 1.2 * c.logging_value  # the policy leans toward items that click more


def test_bad_scenarios_name_the_field():
    with pytest.raises(ValueError, match="base_rate"):
        Scenario("x", base_rate=1.5, item_std=0.1, user_std=0.1, concentration=1.0)
    with pytest.raises(ValueError, match="concentration"):
        Scenario("x", base_rate=0.1, item_std=0.1, user_std=0.1, concentration=-1.0)


def test_bench_ope_prints_one_json_object_with_every_rule(capsys):
    parser = argparse.ArgumentParser()
    bench_ope.configure_cli(parser)
    args = parser.parse_args(["--json", "--replications", "1", "--bootstrap", "20", "--scenarios", "rich"])
    assert bench_ope.cli_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    rich = out["scenarios"]["rich"]
    assert set(rich["rules"]) == {"narrowest_consistent", "mse", "intersection"}
    assert sum(rich["rules"]["mse"]["picks"].values()) == 1
    assert 0 <= rich["estimators"]["dr"]["mean_relative_error_true"] < 1
    assert bench_ope.cli_main(parser.parse_args(["--scenarios", "nope"])) == 2
