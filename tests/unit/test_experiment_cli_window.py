"""Where `marquee experiment report` stops reading: --until, else a declared end once passed."""

import argparse

import pytest

from experiments.spec import Experiment, Variant
from ops.experiment_cli import _analysis_end, _until_ms


def experiment(end=None) -> Experiment:
    return Experiment(name="e", layer="ranking", traffic=1.0, salt="e-1",
                      variants=(Variant("control", 1.0, {}), Variant("b", 1.0, {"scorer": "popularity"})),
                      end=end)


def test_until_wins_then_a_passed_end_then_the_data():
    assert _until_ms("2026-12-03T13:00:00Z") == 1_796_302_800_000
    assert _analysis_end(5, experiment("2026-12-03T13:00:00Z"), now_s=2e9) == 5
    assert _analysis_end(None, experiment("2026-12-03T13:00:00Z"), now_s=2e9) == 1_796_302_800_000
    assert _analysis_end(None, experiment("2026-12-03T13:00:00Z"), now_s=1.7e9) is None  # not over yet
    assert _analysis_end(None, experiment(), now_s=2e9) is None


def test_a_bad_until_is_refused_by_name():
    with pytest.raises(argparse.ArgumentTypeError, match="^expected an ISO 8601 UTC time"):
        _until_ms("yesterday")
