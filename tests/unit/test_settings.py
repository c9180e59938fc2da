"""The one settings style: field checkers whose errors name the field, the expectation and the
value; overrides that refuse unknown names; `--set KEY=JSON` parsing."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pytest

from marquee.settings import (
    SettingsError,
    assign,
    check_choice,
    check_int,
    check_int_map,
    check_mapping,
    check_names,
    check_number,
    check_text,
    fail,
    from_overrides,
    parse_assignments,
    setting_names,
)


@dataclass(frozen=True)
class Knobs:
    """A settings class written the one way, for these tests."""

    name: str
    rounds: int = 10
    rate: float = 0.5
    mode: str = "fast"
    depth: dict = field(default_factory=lambda: {"a": 1})

    def __post_init__(self) -> None:
        check_text("name", self.name)
        assign(self, "rounds", check_int("rounds", self.rounds, ge=1))
        check_number("rate", self.rate, gt=0, le=1)
        check_choice("mode", self.mode, ("fast", "slow"))
        check_int_map("depth", self.depth, ge=0)


# ------------------------------------------------------------------ checkers


def test_settings_error_is_a_value_error():
    assert issubclass(SettingsError, ValueError)
    assert str(fail("x", "a thing", 3)) == "x: expected a thing, got 3"


@pytest.mark.parametrize("value, kwargs, message", [
    (0, {"ge": 1}, "rounds: expected an integer >= 1, got 0"),
    (11, {"ge": 1, "le": 10}, "rounds: expected an integer >= 1 and <= 10, got 11"),
    (True, {}, "rounds: expected an integer, got True"),
    (2.0, {}, "rounds: expected an integer, got 2.0"),
    ("3", {}, "rounds: expected an integer, got '3'"),
    (None, {"ge": 0}, "rounds: expected an integer >= 0, got None"),
])
def test_check_int_refuses_with_field_expectation_and_value(value, kwargs, message):
    with pytest.raises(SettingsError) as info:
        check_int("rounds", value, **kwargs)
    assert str(info.value) == message


def test_check_int_accepts_bounds_inclusive_and_numpy_integers():
    assert check_int("n", 1, ge=1, le=1) == 1
    converted = check_int("n", np.int64(4), ge=0)
    assert converted == 4 and type(converted) is int


@pytest.mark.parametrize("value, kwargs, message", [
    (-0.1, {"ge": 0}, "w: expected a finite number >= 0, got -0.1"),
    (0, {"gt": 0}, "w: expected a finite number > 0, got 0"),
    (1.0, {"ge": 0.0, "lt": 1.0}, "w: expected a finite number >= 0.0 and < 1.0, got 1.0"),
    (float("nan"), {}, "w: expected a finite number, got nan"),
    (math.inf, {"ge": 0}, "w: expected a finite number >= 0, got inf"),
    (False, {}, "w: expected a finite number, got False"),
    ("0.5", {}, "w: expected a finite number, got '0.5'"),
])
def test_check_number_refuses_non_finite_out_of_range_and_non_numbers(value, kwargs, message):
    with pytest.raises(SettingsError) as info:
        check_number("w", value, **kwargs)
    assert str(info.value) == message


def test_check_number_accepts_ints_floats_and_the_edges():
    assert check_number("w", 0, ge=0) == 0
    assert check_number("w", 0.999, ge=0.0, lt=1.0) == 0.999
    assert check_number("w", np.float32(2.5), le=3) == 2.5


def test_check_choice_lists_the_choices():
    assert check_choice("engine", "ray", ("local", "ray")) == "ray"
    with pytest.raises(SettingsError, match=r"^engine: expected 'local' or 'ray', got 'spark'$"):
        check_choice("engine", "spark", ("local", "ray"))
    with pytest.raises(SettingsError, match=r"^m: expected 'a', 'b' or 'c', got 'd'$"):
        check_choice("m", "d", "abc")


def test_check_text_and_mapping():
    assert check_text("label", "y") == "y"
    for bad in ("", None, 3):
        with pytest.raises(SettingsError, match="label: expected a non-empty string"):
            check_text("label", bad)
    assert check_mapping("params", {}) == {}
    with pytest.raises(SettingsError, match=r"^params: expected a dict of xgboost params, got \[1\]$"):
        check_mapping("params", [1], "a dict of xgboost params")


@pytest.mark.parametrize("value, message", [
    ("f0", "features: expected a list of column names, got 'f0'"),
    ([], "features: expected at least one of the column names, got []"),
    (["f0", ""], "features: expected column names as non-empty strings, got ['f0', '']"),
    (["f0", "f1", "f0"], "features: expected distinct column names, got ['f0'] twice"),
])
def test_check_names(value, message):
    with pytest.raises(SettingsError) as info:
        check_names("features", value, "column names")
    assert str(info.value) == message


def test_check_names_returns_a_list():
    assert check_names("features", ("a", "b")) == ["a", "b"]


@pytest.mark.parametrize("value", [{}, [], {"a": -1}, {"a": 1.5}, {"a": True}, {1: 2}, None])
def test_check_int_map_refuses(value):
    with pytest.raises(SettingsError, match=r"^depth: expected a non-empty mapping of name -> integer >= 0, got "):
        check_int_map("depth", value, ge=0)


def test_check_int_map_accepts():
    given = {"a": 0, "b": np.int64(3)}
    checked = check_int_map("depth", given, ge=0)
    assert checked == {"a": 0, "b": 3} and type(checked["b"]) is int
    assert checked is not given  # a copy: the frozen settings object owns its mapping


# ------------------------------------------------------------------ a settings class


def test_a_settings_class_validates_when_constructed_and_is_frozen():
    knobs = Knobs("x", rounds=np.int64(3))
    assert knobs.rounds == 3 and type(knobs.rounds) is int
    with pytest.raises(AttributeError):
        knobs.rounds = 4
    with pytest.raises(SettingsError, match=r"^rate: expected a finite number > 0 and <= 1, got 0$"):
        Knobs("x", rate=0)


def test_setting_names_in_declaration_order():
    assert setting_names(Knobs) == ["name", "rounds", "rate", "mode", "depth"]


def test_from_overrides_applies_and_validates():
    knobs = from_overrides(Knobs, {"name": "x", "rounds": 5})
    assert knobs == Knobs("x", rounds=5)
    assert from_overrides(Knobs, {"mode": "slow"}, base=knobs) == Knobs("x", rounds=5, mode="slow")
    with pytest.raises(SettingsError, match=r"^mode: expected 'fast' or 'slow', got 'warp'$"):
        from_overrides(Knobs, {"mode": "warp"}, base=knobs)


def test_from_overrides_names_unknown_and_missing_keys():
    with pytest.raises(SettingsError) as info:
        from_overrides(Knobs, {"name": "x", "roundz": 5, "Rate": 1})
    assert str(info.value) == ("unknown Knobs setting(s) Rate, roundz; "
                               "known: name, rounds, rate, mode, depth")
    with pytest.raises(SettingsError, match=r"^Knobs: missing required setting\(s\) name$"):
        from_overrides(Knobs, {"rounds": 5})
    with pytest.raises(SettingsError, match="expected a mapping"):
        from_overrides(Knobs, ["rounds"])


# ------------------------------------------------------------------ --set KEY=JSON


def test_parse_assignments_reads_json_values_later_wins():
    assert parse_assignments(["rounds=50", "depth={\"a\": 2}", "mode=\"slow\"", "rounds=60"]) == {
        "rounds": 60, "depth": {"a": 2}, "mode": "slow"}
    assert parse_assignments([]) == {}


@pytest.mark.parametrize("item, message", [
    ("rounds", r"--set 'rounds': expected KEY=JSON"),
    ("=5", r"--set '=5': expected KEY=JSON"),
    ("mode=slow", r"--set 'mode=slow': the value must be JSON"),
])
def test_parse_assignments_refuses_by_item(item, message):
    with pytest.raises(SettingsError, match=message):
        parse_assignments([item])


# ------------------------------------------------------------------ the intended use: retrain --set


def test_set_options_reach_pipeline_config_through_one_path():
    from models.pipeline_config import PipelineConfig

    config = from_overrides(PipelineConfig, parse_assignments(["rounds=50", 'engine="ray"']))
    assert config == PipelineConfig(rounds=50, engine="ray")
    with pytest.raises(AttributeError):
        config.rounds = 1  # frozen: what was validated is what trains
    with pytest.raises(SettingsError, match=r"^rounds: expected an integer >= 1, got 0$"):
        from_overrides(PipelineConfig, parse_assignments(["rounds=0"]))
    with pytest.raises(SettingsError, match=r"^unknown PipelineConfig setting\(s\) roundz; known: depth, holdout, "):
        from_overrides(PipelineConfig, parse_assignments(["roundz=5"]))
