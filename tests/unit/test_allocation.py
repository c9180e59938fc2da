"""Allocation: the hash is uniform (chi-square), variant and holdout shares are what the file
says, assignments are sticky and exclusive within a layer and independent across layers, time
windows hold, and editing one experiment moves nobody in any other."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import binomtest, chi2_contingency, chisquare

from experiments.allocation import (
    HOLDOUT,
    HOLDOUT_SALT,
    LAYER,
    Allocator,
    bucket,
    epoch_ms_of,
)
from experiments.spec import BUCKETS, parse_spec

NOW = datetime(2025, 1, 15, tzinfo=UTC)
MEMBERS = range(20_000)


def spec_dict() -> dict:
    return {
        "holdout": 0.1,
        "layers": ["artwork", "rows"],
        "experiments": [
            {"name": "art_a", "layer": "artwork", "offset": 0.0, "traffic": 0.3,
             "variants": {"control": {"weight": 1}, "ts": {"weight": 1, "override": {"artwork": {"policy": "linear_ts"}}}}},
            {"name": "art_b", "layer": "artwork", "offset": 0.3, "traffic": 0.4, "salt": "art_b-1",
             "variants": {"control": {"weight": 1}, "a": {"weight": 1, "override": {"artwork": {"alpha": 0.1}}},
                          "b": {"weight": 2, "override": {"artwork": {"alpha": 0.2}}}}},
            {"name": "div", "layer": "rows", "offset": 0.2, "traffic": 0.5,
             "start": "2025-01-10T00:00:00Z", "end": "2025-02-01T00:00:00Z",
             "variants": {"control": {"weight": 1},
                          "strong": {"weight": 1, "override": {"selectors": {"diversity": {"mmr_lambda": 0.5}}}}}},
        ],
    }


def allocator(raw: dict | None = None) -> Allocator:
    return Allocator(parse_spec(raw or spec_dict()))


def assignments(alloc: Allocator, now=NOW) -> list[dict[str, str]]:
    return [alloc.assign(m, now) for m in MEMBERS]


@pytest.fixture(scope="module")
def base_assignments() -> list[dict[str, str]]:
    return assignments(allocator())


@pytest.mark.parametrize("salt, domain", [(HOLDOUT_SALT, HOLDOUT), ("artwork", LAYER), ("art_b-1", "variant")])
def test_buckets_are_uniform_by_a_chi_square_test(salt, domain):
    groups = np.array([bucket(m, salt, domain) for m in range(200_000)]) // (BUCKETS // 100)
    counts = np.bincount(groups, minlength=100)
    assert counts.size == 100
    assert chisquare(counts).pvalue > 0.001


def test_the_bucket_is_a_stable_hash_of_the_member_and_salt_across_processes():
    here = [bucket(m, "s") for m in (0, 1, 12345, "member-7")]
    code = ("from experiments.allocation import bucket; "
            "print([bucket(m, 's') for m in (0, 1, 12345, 'member-7')])")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""},
                           cwd=Path(__file__).resolve().parents[2]).stdout.strip()
    assert there == str(here)
    assert bucket(1, "s") != bucket(1, "t") or bucket(2, "s") != bucket(2, "t")
    assert all(0 <= b < BUCKETS for b in here)


def test_the_holdout_share_holds_and_held_out_members_get_nothing(base_assignments):
    alloc = allocator()
    held = [m for m in MEMBERS if alloc.held_out(m)]
    assert binomtest(len(held), len(MEMBERS), 0.1).pvalue > 0.001
    assert all(base_assignments[m] == {} and alloc.overrides(m, NOW) == [] for m in held)
    # everyone else is in artwork (70% of the layer) or not, but nobody held out is anywhere
    in_any = sum(1 for m in MEMBERS if base_assignments[m])
    assert in_any > 0.8 * (len(MEMBERS) - len(held))


def test_experiment_and_variant_shares_are_what_the_file_says(base_assignments):
    alloc = allocator()
    n = sum(1 for m in MEMBERS if not alloc.held_out(m))
    counts = Counter(exp for a in base_assignments for exp in a)
    for exp, traffic in (("art_a", 0.3), ("art_b", 0.4), ("div", 0.5)):
        assert binomtest(counts[exp], n, traffic).pvalue > 0.001, (exp, counts[exp] / n)
    variants = Counter(a["art_b"] for a in base_assignments if "art_b" in a)
    observed = [variants["control"], variants["a"], variants["b"]]
    expected = np.array([0.25, 0.25, 0.5]) * sum(observed)
    assert chisquare(observed, expected).pvalue > 0.001
    assert all(abs(o / sum(observed) - e / sum(observed)) < 0.02 for o, e in zip(observed, expected))


def test_assignments_are_sticky(base_assignments):
    again = allocator()  # a new allocator of the same file: same answers
    assert all(again.assign(m, NOW) == base_assignments[m] for m in range(0, 20_000, 7))
    assert all(again.assign(m, NOW) == again.assign(m, NOW + timedelta(days=3)) for m in range(2000))


def test_a_member_is_in_at_most_one_experiment_of_a_layer(base_assignments):
    both = [m for m, a in enumerate(base_assignments) if "art_a" in a and "art_b" in a]
    assert both == []
    assert any("art_a" in a for a in base_assignments) and any("art_b" in a for a in base_assignments)


def test_layers_are_independent_of_each_other(base_assignments):
    alloc = allocator()
    eligible = [a for m, a in enumerate(base_assignments) if not alloc.held_out(m)]
    table = [[sum(1 for a in eligible if ("art_a" in a) == x and ("div" in a) == y) for y in (False, True)]
             for x in (False, True)]
    assert chi2_contingency(table).pvalue > 0.001
    art_b_variant = [[sum(1 for a in eligible if a.get("art_b") == v and a.get("div") == w)
                      for w in ("control", "strong")] for v in ("control", "a", "b")]
    assert chi2_contingency(art_b_variant).pvalue > 0.001


def test_overrides_follow_the_layer_order_and_the_variants():
    alloc = allocator()
    member = next(m for m in MEMBERS if set(alloc.assign(m, NOW)) == {"art_b", "div"}
                  and alloc.assign(m, NOW)["div"] == "strong" and alloc.assign(m, NOW)["art_b"] == "b")
    assert alloc.overrides(member, NOW) == [{"artwork": {"alpha": 0.2}}, {"selectors": {"diversity": {"mmr_lambda": 0.5}}}]
    control = next(m for m in MEMBERS if alloc.assign(m, NOW) == {"art_a": "control"})
    assert alloc.overrides(control, NOW) == [{}]
    assert [(e.name, v.name) for e, v in alloc.placements(member, NOW)] == [("art_b", "b"), ("div", "strong")]


def test_outside_its_window_nobody_is_in_an_experiment():
    alloc = allocator()
    start = datetime(2025, 1, 10, tzinfo=UTC)
    end = datetime(2025, 2, 1, tzinfo=UTC)
    in_div = [m for m in range(5000) if "div" in alloc.assign(m, NOW)]
    assert in_div
    for m in in_div:
        assert "div" not in alloc.assign(m, start - timedelta(milliseconds=1))
        assert "div" in alloc.assign(m, start)  # start is inclusive
        assert "div" in alloc.assign(m, epoch_ms_of(end) - 1)
        assert "div" not in alloc.assign(m, end)  # end is exclusive
    before = [alloc.assign(m, start - timedelta(days=1)) for m in range(5000)]
    assert not any("div" in a for a in before) and any("art_a" in a for a in before)  # others run on


def test_now_is_an_aware_datetime_or_epoch_milliseconds():
    alloc = allocator()
    ms = epoch_ms_of(NOW)
    assert ms == 1736899200000
    assert all(alloc.assign(m, ms) == alloc.assign(m, NOW) for m in range(500))
    with pytest.raises(ValueError, match="now: expected an aware datetime"):
        alloc.assign(1, datetime(2025, 1, 15))
    with pytest.raises(ValueError, match="now: expected an aware datetime or epoch milliseconds"):
        alloc.assign(1, ms / 1000.0)  # seconds from time.time(): refused, not misread


def edit(raw: dict, name: str, **changes) -> dict:
    raw = copy.deepcopy(raw)
    exp = next(e for e in raw["experiments"] if e["name"] == name)
    exp.update(changes)
    return raw


def others_of(assignment: dict[str, str], edited: str) -> dict[str, str]:
    return {exp: variant for exp, variant in assignment.items() if exp != edited}


@pytest.mark.parametrize("name, changes", [
    ("art_a", {"traffic": 0.1}),
    ("art_a", {"traffic": 0.0}),
    ("art_a", {"salt": "art_a-reshuffled"}),
    ("art_a", {"variants": {"control": {"weight": 5}, "ts": {"weight": 1}, "new": {"weight": 2}}}),
    ("art_a", {"end": "2025-01-12T00:00:00Z"}),  # already over at NOW
    ("art_b", {"traffic": 0.7}),  # grows into the free end of the layer
    ("art_b", {"offset": 0.5, "traffic": 0.5, "salt": "art_b-2"}),
    ("div", {"traffic": 0.8, "variants": {"control": {"weight": 1}}}),
])
def test_editing_one_experiment_moves_nobody_in_any_other(base_assignments, name, changes):
    after = assignments(allocator(edit(spec_dict(), name, **changes)))
    moved = [m for m in MEMBERS if others_of(after[m], name) != others_of(base_assignments[m], name)]
    assert moved == []
    assert any(after[m] != base_assignments[m] for m in MEMBERS)  # the edit did change its own


def test_packing_a_layer_without_offsets_would_not_isolate_edits(base_assignments):
    """The counterfactual the declared offsets avoid: art_b packed after art_a moves when art_a
    shrinks. (Shown with offsets written as packing would compute them.)"""
    packed = edit(edit(spec_dict(), "art_a", traffic=0.1), "art_b", offset=0.1)
    after = assignments(allocator(packed))
    assert any(after[m].get("art_b") != base_assignments[m].get("art_b") for m in MEMBERS)


def test_a_ramp_up_keeps_every_member_on_their_variant(base_assignments):
    after = assignments(allocator(edit(spec_dict(), "art_b", traffic=0.7)))
    kept = [m for m in MEMBERS if "art_b" in base_assignments[m]]
    assert all(after[m]["art_b"] == base_assignments[m]["art_b"] for m in kept)
    grown = sum(1 for a in after if "art_b" in a)
    assert grown > len(kept) * 1.5


def test_an_allocator_needs_a_validated_spec():
    with pytest.raises(ValueError, match="spec: expected an ExperimentSpec"):
        Allocator(spec_dict())
    assert allocator().version == parse_spec(spec_dict()).version
