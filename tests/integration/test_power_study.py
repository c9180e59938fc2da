"""The real-size power study (the default `power_study()`, ~45 s here): interleaving finds the
known-better ranker with at most a tenth of the members the A/B test needs, and both computed
sizes give about the promised 80% power when fresh populations are drawn at exactly those sizes."""

from __future__ import annotations

import json

import pytest

from experiments.power import power_study


@pytest.fixture(scope="module")
def study() -> dict:
    return power_study()


def test_interleaving_needs_at_most_a_tenth_of_the_ab_members(study):
    assert study["ab_members"] > 500, "the effect is too large for the comparison to mean anything"
    assert study["interleaving_members"] >= 10
    assert study["ratio"] == study["interleaving_members"] / study["ab_members"] <= 0.1
    assert study["ab"]["difference"] > 0 and study["interleaving"]["low"] > 0
    assert study["oracle"]["row_true_match_b"] > study["oracle"]["row_true_match_a"]
    assert json.loads(json.dumps(study)) == study


def test_the_computed_sizes_have_about_80_percent_power(study):
    empirical = study["empirical_power"]
    assert empirical["replications"] == 200
    # 200 replications: SE 0.028; 0.1 is 3.5 SE, so a right size essentially always passes
    for design in ("ab", "interleaving"):
        assert abs(empirical[design] - 0.8) < 0.1, (design, empirical)


def test_the_default_study_fits_its_time_budget(study):
    assert study["seconds"]["total"] < 120  # ~45 s on the 2-core machine; 60 s is the aim
