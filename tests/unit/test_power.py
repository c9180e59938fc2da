"""The power study on a tiny world: the one-sample sample size against statsmodels, the study's
fields and that it finds the known-better ranker B, its determinism per seed, an A/A check that
interleaving credit is fair when both rankers are the same, and settings refused by name.
The real-size study (interleaving at most a tenth of the A/B members) is in
tests/integration/test_power_study.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from statsmodels.stats.power import TTestPower

from experiments.interleaving import Wins, preference
from experiments.power import (
    StudySettings,
    _population,
    _simulate_chunk,
    _world,
    power_one_mean,
    power_study,
    sample_size_one_mean,
)

TINY = {"members": 300, "titles": 200, "pool": 30, "k": 5, "b_match_weight": 3.0}


@pytest.mark.parametrize("mean, sd", [(0.2, 0.5), (0.05, 0.6), (-0.3, 1.0), (1.0, 1.0)])
def test_one_sample_size_matches_statsmodels(mean, sd):
    n = sample_size_one_mean(mean, sd)
    exact = TTestPower().solve_power(effect_size=abs(mean) / sd, alpha=0.05, power=0.8,
                                     alternative="two-sided")
    assert n == max(2, int(np.ceil(exact - 1e-6)))
    assert power_one_mean(n, abs(mean) / sd) >= 0.8 > power_one_mean(n - 1, abs(mean) / sd)
    assert power_one_mean(n, abs(mean) / sd) == pytest.approx(
        TTestPower().power(effect_size=abs(mean) / sd, nobs=n, alpha=0.05), rel=1e-6)


def test_one_sample_size_refuses_bad_input():
    for kwargs, field in (({"mean": 0.0, "sd": 1.0}, "mean"), ({"mean": 0.1, "sd": 0.0}, "sd"),
                          ({"mean": 0.1, "sd": 1.0, "power": 0.01}, "power"),
                          ({"mean": 0.1, "sd": 1.0, "alpha": 1.0}, "alpha")):
        with pytest.raises(ValueError, match=f"^{field}:"):
            sample_size_one_mean(**kwargs)


@pytest.fixture(scope="module")
def tiny_study() -> dict:
    return power_study(**TINY, replications=2)


def test_tiny_study_finds_b_better_and_reports_both_counts(tiny_study):
    r = tiny_study
    assert json.loads(json.dumps(r)) == r
    assert r["ab_members"] == sum(r["ab_members_per_arm"]) > 0
    assert r["interleaving_members"] > 0
    assert r["ratio"] == pytest.approx(r["interleaving_members"] / r["ab_members"])
    assert r["ab"]["mean_b"] > r["ab"]["mean_a"] and r["ab"]["difference"] > 0
    assert r["interleaving"]["mean_preference"] > 0 and r["interleaving"]["low"] > 0
    assert r["interleaving"]["prefer_b"] > r["interleaving"]["prefer_a"]
    assert r["oracle"]["row_true_match_b"] > r["oracle"]["row_true_match_a"]
    assert 0 < r["interleaving"]["credited_share"] <= 1
    # enrolled members: those needed with a credited play, scaled up for those without one
    credited = r["interleaving"]["credited_members_needed"]
    assert r["interleaving_members"] == int(np.ceil(credited / r["interleaving"]["credited_share"]))
    for design in ("ab", "interleaving"):
        assert 0 <= r["empirical_power"][design] <= 1
    settings = r["settings"]
    assert settings["members_simulated"] == 300 and 0 < settings["members_exposed"] <= 300
    assert settings["seed"] == 0 and settings["days"] == 14 and settings["k"] == 5
    assert set(settings["rankers"]) == {"A", "B"}


def test_the_simulation_is_a_function_of_the_seed():
    s = StudySettings(**TINY)
    world = _world(s)
    one, two = (_simulate_chunk(world, s, 10, 0, "ABI", size=64) for _ in range(2))
    for field in ("plays_a", "plays_b", "wins_a", "wins_b", "sessions"):
        assert np.array_equal(getattr(one, field), getattr(two, field))
    other = _simulate_chunk(world, StudySettings(**TINY, seed=1), 10, 0, "ABI", size=64)
    assert not np.array_equal(one.sessions, other.sessions)


def test_identical_rankers_interleave_to_no_preference():
    # A/A: both teams draft from one ranking, so the coin alone decides who gets the credit
    s = StudySettings(**(TINY | {"a_match_weight": 1.0, "b_match_weight": 1.0}))
    pop = _population(_world(s), s, 10, "I", members=600)
    result = preference(Wins(np.arange(len(pop.sessions)), pop.wins_a, pop.wins_b))
    assert result.n_members > 100
    assert result.low < 0 < result.high


@pytest.mark.parametrize("kwargs, field", [
    ({"members": 5}, "members"), ({"days": 0}, "days"), ({"k": 1}, "k"), ({"seed": -1}, "seed"),
    ({"pool": 5}, "pool"), ({"pool": 400, "titles": 300}, "pool"), ({"replications": -1}, "replications"),
    ({"alpha": 0.0}, "alpha"), ({"power": 1.0}, "power"), ({"b_match_weight": -1.0}, "b_match_weight"),
    ({"titles": 10}, "titles"), ({"unknown": 1}, None),
])
def test_study_refuses_bad_settings_by_name(kwargs, field):
    with pytest.raises((ValueError, TypeError), match=f"^{field}:" if field else "unknown"):
        power_study(**(TINY | kwargs))


def test_a_worse_b_is_refused_rather_than_reported():
    with pytest.raises(ValueError, match="^b_match_weight:"):
        power_study(**(TINY | {"a_match_weight": 3.0, "b_match_weight": 0.0}), replications=0)
