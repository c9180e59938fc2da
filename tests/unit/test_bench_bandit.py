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


def test_the_posterior_oracle_told_every_affinity_has_no_regret_and_the_genre_prior_beats_uniform(world):
    """The oracle's plumbing (the truth's base logit, the arm it picks) checked where the answer is
    known: told each member's true affinities (a prior of almost no spread) it always shows the best
    arm; told only the genre-explained part it learns the rest and beats uniform, reproducibly."""
    told = bandit.posterior_oracle(world, 2000, 100, 3, sample=False,
                                   prior_mean=world.members.theme_affinity, prior_sd=1e-4)
    assert told == pytest.approx(0.0, abs=1e-9)
    uniform = bandit.run_policy(world, "uniform", {}, steps=2000, batch=100, seed=3)
    greedy = bandit.posterior_oracle(world, 2000, 100, 3, sample=False)
    thompson = bandit.posterior_oracle(world, 2000, 100, 3, sample=True)
    assert 0 < greedy < 0.8 * uniform and 0 < thompson < uniform
    assert bandit.posterior_oracle(world, 2000, 100, 3, sample=True) == thompson


def test_the_genre_lean_leaves_a_personal_rest_of_the_stated_spread():
    from producers.world.members import PERSONAL_THEME_SD, theme_lean

    members = ArtworkWorld(WorldSettings(members=2000, titles=60, days=3, seed=2)).members
    rest = members.theme_affinity - theme_lean(members.favorites)
    assert abs(rest.mean()) < 0.02 and rest.std() == pytest.approx(PERSONAL_THEME_SD, rel=0.03)
    assert np.allclose(theme_lean(members.favorites).sum(axis=1), 0.0, atol=1e-9)  # centred per member
