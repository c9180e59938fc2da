"""`marquee bench bandit` at a tiny size (the CLI end to end: tests/integration/test_bench_bandit_cli.py): tuning seeds apart
from the reported ones, reproducible regrets, and learning policies ahead of uniform."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from bandits.env import ArtworkWorld
from bench import bandit
from producers.world.generate import WorldSettings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bandit.configure_cli(parser)
    return parser.parse_args(argv)

@pytest.fixture(scope="module")
def world() -> ArtworkWorld:
    return ArtworkWorld(WorldSettings(members=150, titles=120, days=7, seed=1))


def test_learning_policies_beat_uniform_on_a_tiny_run(world):
    uniform = bandit.run_policy(world, "uniform", {}, steps=3000, batch=100, seed=1)
    for name, params in [("linucb", {"alpha": 0.1, "arm_model": "shared"}),
                         ("linear_ts", {"scale": 0.01, "arm_model": "shared"}),
                         ("epsilon_greedy", {"epsilon": 0.05})]:
        regret = bandit.run_policy(world, name, params, steps=3000, batch=100, seed=1)
        assert regret < (0.95 if name != "epsilon_greedy" else 1.0) * uniform, name


def test_a_seed_reproduces_its_regret_and_every_policy_meets_the_same_impressions(world):
    first = bandit.run_policy(world, "linear_ts", {"scale": 0.01}, steps=500, batch=100, seed=4)
    assert bandit.run_policy(world, "linear_ts", {"scale": 0.01}, steps=500, batch=100, seed=4) == first
    a, b = (world.impressions(200, world.stream(np.random.default_rng([4, 11]))) for _ in range(2))
    assert (a.title == b.title).all() and (a.probabilities == b.probabilities).all()


@pytest.mark.parametrize("argv", [["--steps", "150"], ["--members", "0"], ["--seeds", "0"],
                                  ["--sensitivity-history-days", "90,x"]])
def test_bad_settings_exit_2(argv, capsys):
    assert bandit.cli_main(parse(["--json", *argv])) == 2
    assert capsys.readouterr().out == ""
