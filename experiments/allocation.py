"""Which experiments and variants a member is in: deterministic hashing, layers, a holdout.

Every decision is a bucket in [0, BUCKETS) from a stable hash (blake2b, never Python's hash(),
which changes per process) of the member id and a salt, each kind of decision in its own domain:

1. holdout: bucket(member, HOLDOUT_SALT) < holdout share x BUCKETS: in no experiment at all;
2. per layer, in the file's layer order: bucket(member, layer name) picks the one experiment of
   the layer, if any, whose declared range [offset, offset + traffic) holds it (the ranges of a
   layer never overlap, so a member is in at most one experiment of each layer), and outside the
   experiment's [start, end) window the member is in none of the layer;
3. within the experiment: bucket(member, the experiment's salt) against the cumulative variant
   weights (variants in name order) picks the variant.

Sticky: the same member gets the same assignment for the same file, in any process.

Edit isolation: whether a member is in experiment B depends only on the member, the holdout
share, B's layer name and B's own range; which variant of B, only on B's salt and B's variants.
Editing another experiment A (its traffic, offset, variants, salt, times) touches none of those,
so it changes no member's variant in B. (Packing a layer's experiments one after another would
not have this property: a change of one experiment's traffic would shift all after it.) Growing
A's traffic keeps every member A had, on the same variant: a ramp-up only adds members. Changing
the holdout share, a layer's name or the layer list changes assignments everywhere, by design.

Serving's business, not here: first exposure, logging, merging the overrides into the config.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from hashlib import blake2b
from typing import Any

from experiments.spec import (
    BUCKETS,
    Experiment,
    ExperimentSpec,
    Variant,
    epoch_ms,
    to_buckets,
)
from marquee.settings import fail

HOLDOUT_SALT = "marquee-holdout"  # fixed: the held-out members stay held out across files

# each kind of decision hashes in its own domain, so a salt equal to a layer's name correlates nothing
HOLDOUT, LAYER, VARIANT = "holdout", "layer", "variant"


def bucket(member_id: Any, salt: str, domain: str = VARIANT) -> int:
    """The member's bucket in [0, BUCKETS) for `salt`: the same in every process and version."""
    key = f"{domain}\x1f{salt}\x1f{member_id}".encode()
    return int.from_bytes(blake2b(key, digest_size=8).digest(), "big") % BUCKETS


def epoch_ms_of(now: Any) -> int:
    """`now` as epoch milliseconds: an aware datetime, or an int already in milliseconds (a float
    is refused: it is usually time.time(), in seconds)."""
    if isinstance(now, datetime):
        if now.tzinfo is None:
            raise fail("now", "an aware datetime (with a time zone) or epoch milliseconds", now)
        return epoch_ms(now)
    if isinstance(now, int) and not isinstance(now, bool):
        return now
    raise fail("now", "an aware datetime or epoch milliseconds (an int)", now)


class Allocator:
    """Assignments of members to experiments and variants under one validated spec."""

    def __init__(self, spec: ExperimentSpec) -> None:
        if not isinstance(spec, ExperimentSpec):
            raise fail("spec", "an ExperimentSpec", spec)
        self.spec = spec
        self._holdout = to_buckets(spec.holdout)
        self._layers: list[tuple[str, list[int], list[Experiment]]] = []
        for layer in spec.layers:
            members = sorted((e for e in spec.experiments if e.layer == layer and e.stop > e.first),
                             key=lambda e: e.first)
            if members:
                self._layers.append((layer, [e.first for e in members], members))

    @property
    def version(self) -> str:
        """Which file this allocator runs (ExperimentSpec.version)."""
        return self.spec.version

    def held_out(self, member_id: Any) -> bool:
        """Whether the member is in the global holdout (no experiment at all)."""
        return bucket(member_id, HOLDOUT_SALT, HOLDOUT) < self._holdout

    def placements(self, member_id: Any, now: Any) -> list[tuple[Experiment, Variant]]:
        """The (experiment, variant) pairs the member is in at `now`, in layer order: the one
        computation `assign` and `overrides` present (serving may call it once for both)."""
        now_ms = epoch_ms_of(now)
        if self._holdout and bucket(member_id, HOLDOUT_SALT, HOLDOUT) < self._holdout:
            return []
        out = []
        for layer, firsts, members in self._layers:
            b = bucket(member_id, layer, LAYER)
            i = bisect_right(firsts, b) - 1
            if i < 0:
                continue
            exp = members[i]
            if b >= exp.stop or not exp.start_ms <= now_ms < exp.end_ms:
                continue
            out.append((exp, exp.arms[bisect_right(exp.bounds, bucket(member_id, exp.salt, VARIANT))]))
        return out

    def assign(self, member_id: Any, now: Any) -> dict[str, str]:
        """{experiment: variant} for the member at `now` ({} when held out or in none)."""
        return {exp.name: variant.name for exp, variant in self.placements(member_id, now)}

    def overrides(self, member_id: Any, now: Any) -> list[dict]:
        """The member's variants' pipeline-config overrides at `now`, in layer order (one per
        experiment the member is in, {} for a control); shared objects: read-only."""
        return [variant.override for _, variant in self.placements(member_id, now)]
