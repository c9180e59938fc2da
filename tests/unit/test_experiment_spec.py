"""The experiments file: the example validates against the real pipeline; every refusal names
its field and refuses the whole file; the fingerprint names the content, not its layout."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deployments.page_builder import check
from deployments.page_config import HomepageConfig, apply_override
from experiments.spec import (
    BUCKETS,
    Experiment,
    ExperimentSpec,
    SpecError,
    Variant,
    load_spec,
    parse_spec,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "experiments" / "example.yaml"


def serving_validator(override: dict) -> None:
    """What serving passes: the override merged into the default config, then the build check."""
    check(apply_override(HomepageConfig(), override))


def fake_validator(override: dict) -> None:
    """A stand-in for the pipeline: refuses an unknown artwork policy and any 'bogus' key."""
    if "bogus" in override:
        raise ValueError("unknown key(s) ['bogus']; expected sources, artwork")
    policy = override.get("artwork", {}).get("policy")
    if policy is not None and policy not in ("linucb", "linear_ts"):
        raise ValueError(f"artwork.policy: unknown policy {policy!r}")


def base() -> dict:
    return {
        "holdout": 0.1,
        "layers": ["artwork", "rows"],
        "experiments": [
            {"name": "art", "layer": "artwork", "traffic": 0.5,
             "variants": {"A": {"weight": 1}, "B": {"weight": 1, "override": {"artwork": {"policy": "linear_ts"}}}}},
            {"name": "art2", "layer": "artwork", "offset": 0.5, "traffic": 0.3, "salt": "art2-v1",
             "start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z",
             "variants": {"control": {"weight": 3}, "wide": {"weight": 1, "override": {"artwork": {"alpha": 0.1}}}}},
            {"name": "div", "layer": "rows", "traffic": 1.0,
             "variants": {"control": {"weight": 1},
                          "strong": {"weight": 1, "override": {"selectors": {"diversity": {"mmr_lambda": 0.5}}}}}},
        ],
    }


def refused(raw, validator=fake_validator) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw, validator)
    return caught.value


def edited(change) -> dict:
    raw = copy.deepcopy(base())
    change(raw)
    return raw


def test_the_example_file_validates_against_the_real_pipeline():
    spec = load_spec(EXAMPLE, serving_validator)
    assert spec.layers == ("artwork", "rows") and spec.holdout == 0.05
    assert {e.name for e in spec.experiments} == {"artwork_policy", "artwork_exploration", "diversity"}
    assert spec.experiment("artwork_policy").start == datetime(2025, 1, 6, tzinfo=UTC)
    assert len(spec.fingerprint) == 64 and spec.version == spec.fingerprint[:12]


def test_a_valid_spec_parses_with_defaults_and_derived_ranges():
    spec = parse_spec(base(), fake_validator)
    art, art2, div = spec.experiments
    assert (art.first, art.stop, art.salt) == (0, BUCKETS // 2, "art")  # salt defaults to the name
    assert (art2.first, art2.stop) == (5000, 8000) and art2.salt == "art2-v1"
    assert art2.bounds == (7500, BUCKETS)  # control 3 : wide 1, in name order
    assert art.variants[0].override == {} and div.start is None and div.end_ms == float("inf")


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(holdot=0.1), "unknown key(s) ['holdot']"),
    (lambda r: r["experiments"][1].update(trafic=0.2), "experiments[1]: unknown key(s) ['trafic']"),
    (lambda r: r["experiments"][0]["variants"]["A"].update(wieght=2),
     "experiments[0].variants.A: unknown key(s) ['wieght']"),
    (lambda r: r["experiments"][1].update(offset=0.3, traffic=0.7),  # 0.5 + 0.7 in layer artwork
     "experiments[1].traffic: the traffic of layer 'artwork' sums to 1.2 (over 1)"),
    (lambda r: r["experiments"][1].update(offset=0.4), "experiments[1].offset: its buckets [0.4, 0.7) of layer"),
    (lambda r: r["experiments"][1].update(offset=0.8), "experiments[1].traffic: expected at most 0.2"),
    (lambda r: r["experiments"][1].update(traffic=1.5), "experiments[1].traffic: expected a finite number"),
    (lambda r: r["experiments"][1].update(traffic=0.00005), "experiments[1].traffic: expected a share in steps"),
    (lambda r: r.update(holdout=1.0), "holdout: expected a finite number >= 0.0 and < 1.0, got 1.0"),
    (lambda r: r["experiments"][0]["variants"]["B"].update(weight=0),
     "experiments[0].variants.B.weight: expected a finite number > 0, got 0"),
    (lambda r: r["experiments"][0]["variants"]["B"].update(weight=-1), "experiments[0].variants.B.weight"),
    (lambda r: r["experiments"][0]["variants"].update(C={"weight": 1e-9}),
     "experiments[0].variants.C.weight: expected a weight that earns at least one of 10000 buckets"),
    (lambda r: r["experiments"][2].update(name="art"), "experiments[2].name: 'art' is also the name of experiments[0]"),
    (lambda r: r["experiments"][2].update(salt="art2-v1"), "experiments[2].salt: 'art2-v1' is also the salt"),
    (lambda r: r["experiments"][1].update(end="2024-12-01T00:00:00Z"),
     "experiments[1].end: expected a time after start (2025-01-01T00:00:00Z)"),
    (lambda r: r["experiments"][1].update(end="2025-01-01T00:00:00Z"), "experiments[1].end: expected a time after"),
    (lambda r: r["experiments"][1].update(start="2025-01-01T00:00:00"), "experiments[1].start: expected an ISO 8601 UTC"),
    (lambda r: r["experiments"][1].update(start="2025-01-01T02:00:00+02:00"), "experiments[1].start: expected an ISO"),
    (lambda r: r["experiments"][1].update(start="next monday"), "experiments[1].start: expected an ISO 8601 UTC"),
    (lambda r: r["experiments"][0]["variants"]["B"].update(override={"artwork": {"policy": "nope"}}),
     "experiments[0].variants.B.override.artwork.policy: unknown policy 'nope'"),
    (lambda r: r["experiments"][0]["variants"]["B"].update(override={"bogus": 1}),
     "experiments[0].variants.B.override: unknown key(s) ['bogus']"),
    (lambda r: r["experiments"][0]["variants"]["B"].update(override=["artwork"]),
     "experiments[0].variants.B.override: expected a mapping of pipeline-config overrides"),
    (lambda r: r["experiments"][2].update(layer="ranking"), "experiments[2].layer: expected 'artwork' or 'rows', got 'ranking'"),
    (lambda r: r.update(layers=["artwork", "artwork"]), "layers: expected distinct layer names"),
    (lambda r: r.update(layers=["art work"]), "layers[0]: expected a name"),
    (lambda r: r.pop("layers"), "layers: missing"),
    (lambda r: r["experiments"][0].pop("traffic"), "experiments[0].traffic: missing"),
    (lambda r: r["experiments"][0]["variants"].clear(), "experiments[0].variants: expected at least one variant"),
    (lambda r: r["experiments"][0]["variants"]["A"].pop("weight"), "experiments[0].variants.A.weight: missing"),
    (lambda r: r["experiments"][0].update(name="a.b"), "experiments[0].name: expected a name of letters"),
    (lambda r: r["experiments"][0].update(salt="has space"), "experiments[0].salt: expected a salt"),
    (lambda r: r.update(experiments={"art": {}}), "experiments: expected a list of experiments"),
    (lambda r: r["experiments"][2]["variants"]["strong"].update(override={"artwork": {"policy": "linucb"}}),
     "experiments[2].variants.strong.override.artwork.policy: also set by experiments[0].variants.B in layer 'artwork'"),
])
def test_each_refusal_names_its_field(change, field):
    error = refused(edited(change))
    assert any(field in problem for problem in error.problems), error.problems
    assert field in str(error)


def test_every_problem_is_reported_at_once_and_the_file_is_refused_whole():
    def many(r):
        r["experiments"][0]["variants"]["B"]["weight"] = 0
        r["experiments"][1]["end"] = "2024-01-01T00:00:00Z"
        r["experiments"][2]["layer"] = "nowhere"
        r["holdout"] = -0.1
    error = refused(edited(many))
    assert [p.split(":")[0] for p in error.problems] == [
        "holdout", "experiments[0].variants.B.weight", "experiments[1].end", "experiments[2].layer"]
    assert str(error).startswith("4 problems:")


def test_the_same_path_in_two_experiments_of_one_layer_is_fine():
    # mutually exclusive: nobody gets both, so neither silently overrides the other
    raw = edited(lambda r: r["experiments"][1]["variants"]["wide"].update(override={"artwork": {"policy": "linucb"}}))
    assert len(parse_spec(raw, fake_validator).experiments) == 3


def test_a_zero_traffic_experiment_is_allowed_and_overlaps_nothing():
    raw = edited(lambda r: r["experiments"].append(
        {"name": "paused", "layer": "artwork", "offset": 0.2, "traffic": 0, "variants": {"A": {"weight": 1}}}))
    assert parse_spec(raw).experiment("paused").stop == parse_spec(raw).experiment("paused").first


def test_without_a_validator_overrides_are_only_checked_as_mappings():
    raw = edited(lambda r: r["experiments"][0]["variants"]["B"].update(override={"artwork": {"policy": "nope"}}))
    assert parse_spec(raw).experiment("art").arms[1].override == {"artwork": {"policy": "nope"}}


def test_the_fingerprint_names_the_content_not_its_layout():
    spec = parse_spec(base(), fake_validator)
    reordered = edited(lambda r: r["experiments"].reverse())
    for exp in reordered["experiments"]:
        exp["variants"] = dict(reversed(list(exp["variants"].items())))
    reordered["experiments"][0]["variants"]["control"]["weight"] = 1.0  # 1 and 1.0 are one weight
    reordered["experiments"][1]["start"] = "2025-01-01T00:00:00+00:00"
    assert parse_spec(reordered).fingerprint == spec.fingerprint
    assert parse_spec(spec.to_dict()).fingerprint == spec.fingerprint  # canonical data round-trips
    changed = edited(lambda r: r["experiments"][2]["variants"]["strong"]["override"]["selectors"]["diversity"]
                     .update(mmr_lambda=0.4))
    assert parse_spec(changed).fingerprint != spec.fingerprint
    assert parse_spec(edited(lambda r: r.update(layers=["rows", "artwork"]))).fingerprint != spec.fingerprint


def test_a_yaml_file_with_a_key_twice_or_bad_yaml_is_refused(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("layers: [a]\nexperiments:\n  - name: x\n    layer: a\n    traffic: 0.5\n"
                     "    variants:\n      B: {weight: 1}\n      B: {weight: 2}\n")
    with pytest.raises(SpecError, match=r"(?s)twice.yaml: not valid YAML: .*key 'B' appears twice.*line 8"):
        load_spec(twice)
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [a\n")
    with pytest.raises(SpecError, match="broken.yaml: not valid YAML"):
        load_spec(broken)
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers: [a]\nexperiments:\n  - {name: x, layer: b, traffic: 0.5, variants: {A: {weight: 1}}}\n")
    with pytest.raises(SpecError, match=r"bad.yaml: experiments\[0\].layer: expected 'a', got 'b'"):
        load_spec(bad)


def test_yaml_timestamps_are_read_as_utc(tmp_path):
    path = tmp_path / "times.yaml"
    path.write_text("layers: [a]\nexperiments:\n  - name: x\n    layer: a\n    traffic: 1\n"
                    "    start: 2025-01-01T00:00:00Z\n    end: 2025-01-02\n    variants: {A: {weight: 1}}\n")
    with pytest.raises(SpecError, match=r"experiments\[0\].end: expected an ISO 8601 UTC time"):
        load_spec(path)  # a bare date is not a time


def test_the_model_checks_itself_when_built_directly():
    with pytest.raises(ValueError, match="weight: expected a finite number > 0"):
        Variant("A", 0)
    with pytest.raises(ValueError, match="variants: expected distinct variant names"):
        Experiment("x", "a", 0.5, (Variant("A", 1), Variant("A", 2)))
    one = Experiment("x", "a", 0.5, (Variant("A", 1),))
    with pytest.raises(SpecError, match=r"experiments\[1\].name: 'x' is also the name of experiments\[0\]"):
        ExperimentSpec(("a",), (one, Experiment("x", "a", 0.5, (Variant("A", 1),), offset=0.5, salt="y")))
