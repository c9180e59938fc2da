"""The experiments file: its typed model and its validation, refused whole.

Every running experiment is declared in one YAML file:

    holdout: 0.05                      # share of members held out of every experiment
    layers: [artwork, ranking]         # experiments of one layer are mutually exclusive
    experiments:
      - name: artwork_ts
        layer: artwork
        offset: 0.0                    # where its range of the layer's buckets begins
        traffic: 0.5                   # how many of the layer's buckets it owns
        salt: artwork_ts-1             # its variants' hash (default: its name)
        start: 2025-01-06T00:00:00Z    # optional, ISO 8601 UTC; start inclusive, end exclusive
        end: 2025-02-03T00:00:00Z
        variants:
          control: {weight: 1}
          linear_ts: {weight: 1, override: {artwork: {policy: linear_ts}}}

An experiment owns the declared range [offset, offset + traffic) of its layer's buckets, so
editing one experiment moves nobody in another (experiments/allocation.py says why). Shares are
multiples of 1/BUCKETS. A variant is a weight and a pipeline-config override; variants are laid
out in name order, so their order in the file means nothing.

`parse_spec` checks everything and refuses the whole file with one SpecError listing the
problems, each naming its field (`experiments[2].variants.B.override.artwork.policy: ...`):
unknown or missing keys, bad shares, weights, names and times, duplicate names or salts, an
unknown layer, ranges that overlap or a layer's traffic over 1, two layers setting the same
config path (the later would silently win), and an override the pipeline refuses. It lists each
entry's problems and then those between the experiments that parsed (an experiment with a bad
field is not also checked against the others). The pipeline's validator comes from the caller
(`validate_override`; serving passes `lambda o: check(apply_override(HomepageConfig(), o))`):
this library sits below deployments and cannot import it. `ExperimentSpec.fingerprint` is the sha256
of the canonical content (comments, key order and the order of experiments and variants do not
change it), so serving can say which file it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from marquee.settings import (
    SettingsError,
    assign,
    check_choice,
    check_mapping,
    check_names,
    check_number,
    fail,
)

BUCKETS = 10_000  # hash buckets of the holdout, of each layer and of each experiment's variants
NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")  # layer, experiment and variant names (they appear in paths)
SALT_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
UTC_EXAMPLE = "2025-01-06T00:00:00Z"

OverrideValidator = Callable[[dict], None]  # raises ValueError for an override the pipeline refuses


class SpecError(SettingsError):
    """The experiments file is refused whole; `problems` lists each, naming its field."""

    def __init__(self, problems: list[str], where: str = "") -> None:
        self.problems = list(problems)
        head = f"{where}: " if where else ""
        if len(self.problems) == 1:
            message = head + self.problems[0]
        else:
            message = f"{head}{len(self.problems)} problems:\n  " + "\n  ".join(self.problems)
        super().__init__(message)


def check_name(name: str, value: Any) -> str:
    """A name made of letters, digits, '_' and '-' (it appears in field paths and logs)."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise fail(name, "a name of letters, digits, '_' or '-'", value)
    return value


def check_share(name: str, value: Any, *, gt: float | None = None, ge: float | None = 0.0,
                le: float | None = 1.0, lt: float | None = None) -> float:
    """A share within the bounds in steps of 1/BUCKETS (it must be a whole number of buckets)."""
    value = check_number(name, value, ge=None if gt is not None else ge, gt=gt, le=le, lt=lt)
    if abs(value * BUCKETS - round(value * BUCKETS)) > 1e-6:
        raise fail(name, f"a share in steps of {1 / BUCKETS:g} (a whole number of {BUCKETS} buckets)", value)
    return float(value)


def check_layers(value: Any) -> tuple[str, ...]:
    """The layers: distinct names, in the order their overrides apply."""
    layers = tuple(check_names("layers", value, "layer names"))
    for i, layer in enumerate(layers):
        check_name(f"layers[{i}]", layer)
    return layers


def to_buckets(share: float) -> int:
    """A validated share as a number of buckets."""
    return round(share * BUCKETS)


def check_utc(name: str, value: Any) -> datetime | None:
    """None, or an ISO 8601 UTC time (a string or a YAML timestamp) as an aware datetime."""
    if value is None:
        return None
    when = value
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise fail(name, f"an ISO 8601 UTC time like {UTC_EXAMPLE}", value) from None
    if (not isinstance(when, datetime) or when.tzinfo is None
            or when.utcoffset().total_seconds() != 0):
        raise fail(name, f"an ISO 8601 UTC time like {UTC_EXAMPLE}", value)
    return when.astimezone(UTC)


def utc_text(when: datetime | None) -> str | None:
    """The canonical form of a time: ISO 8601 with a Z."""
    return None if when is None else when.isoformat().replace("+00:00", "Z")


def epoch_ms(when: datetime) -> int:
    return round(when.timestamp() * 1000)


# -- the model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One arm of an experiment: its weight among its siblings and the pipeline-config override
    it serves ({} for control). The override is shared, never copied per request: read-only."""

    name: str
    weight: float
    override: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("name", self.name)
        assign(self, "weight", float(check_number("weight", self.weight, gt=0)))
        check_mapping("override", self.override, "a mapping of pipeline-config overrides")


@dataclass(frozen=True)
class Experiment:
    """One experiment: the range of its layer's buckets it owns, its variants, its time window.

    Derived (not arguments): `first`/`stop`, its bucket range [first, stop) in the layer;
    `arms`, the variants in name order, and `bounds`, each arm's exclusive upper bucket of the
    experiment's own hash; `start_ms`/`end_ms`, the window in epoch milliseconds."""

    name: str
    layer: str
    traffic: float
    variants: tuple[Variant, ...]
    offset: float = 0.0
    salt: str | None = None  # None: the name
    start: datetime | str | None = None
    end: datetime | str | None = None
    first: int = field(init=False, repr=False, compare=False)
    stop: int = field(init=False, repr=False, compare=False)
    arms: tuple[Variant, ...] = field(init=False, repr=False, compare=False)
    bounds: tuple[int, ...] = field(init=False, repr=False, compare=False)
    start_ms: float = field(init=False, repr=False, compare=False)
    end_ms: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name("name", self.name)
        check_name("layer", self.layer)
        assign(self, "traffic", check_share("traffic", self.traffic))
        assign(self, "offset", check_share("offset", self.offset, lt=1.0, le=None))
        if to_buckets(self.offset) + to_buckets(self.traffic) > BUCKETS:
            raise fail("traffic", f"at most {1 - self.offset:g} (offset {self.offset:g} + traffic <= 1)",
                       self.traffic)
        salt = self.name if self.salt is None else self.salt
        if not isinstance(salt, str) or not SALT_RE.match(salt):
            raise fail("salt", "a salt of letters, digits, '_', '.', ':' or '-'", salt)
        assign(self, "salt", salt)
        assign(self, "start", check_utc("start", self.start))
        assign(self, "end", check_utc("end", self.end))
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise fail("end", f"a time after start ({utc_text(self.start)})", utc_text(self.end))
        self._lay_out_variants(self.variants)
        assign(self, "first", to_buckets(self.offset))
        assign(self, "stop", to_buckets(self.offset) + to_buckets(self.traffic))
        assign(self, "start_ms", float("-inf") if self.start is None else epoch_ms(self.start))
        assign(self, "end_ms", float("inf") if self.end is None else epoch_ms(self.end))

    def _lay_out_variants(self, variants: Any) -> None:
        if isinstance(variants, (str, Mapping)) or not isinstance(variants, (list, tuple)) or not variants:
            raise fail("variants", "at least one variant", variants)
        if not all(isinstance(v, Variant) for v in variants):
            raise fail("variants", "Variant entries", variants)
        check_names("variants", [v.name for v in variants], "variant names")
        arms = tuple(sorted(variants, key=lambda v: v.name))
        total = sum(v.weight for v in arms)
        bounds, running = [], 0.0
        for arm in arms:
            running += arm.weight
            bounds.append(round(running / total * BUCKETS))
        for arm, low, high in zip(arms, [0] + bounds[:-1], bounds):
            if high == low:
                raise fail(f"variants.{arm.name}.weight", f"a weight that earns at least one of {BUCKETS} "
                           f"buckets against the others (total {total:g})", arm.weight)
        assign(self, "variants", tuple(variants))
        assign(self, "arms", arms)
        assign(self, "bounds", tuple(bounds))

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain data (variants by name, times with a Z): what `parse_spec` reads."""
        return {"name": self.name, "layer": self.layer, "offset": self.offset, "traffic": self.traffic,
                "salt": self.salt, "start": utc_text(self.start), "end": utc_text(self.end),
                "variants": {v.name: {"weight": v.weight, "override": v.override} for v in self.arms}}


@dataclass(frozen=True)
class ExperimentSpec:
    """The whole file: the holdout share, the layers in order, the experiments. Checked whole
    on construction (the rules between experiments); `fingerprint` names its content."""

    layers: tuple[str, ...]
    experiments: tuple[Experiment, ...] = ()
    holdout: float = 0.0
    fingerprint: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        assign(self, "layers", check_layers(self.layers))
        assign(self, "holdout", check_share("holdout", self.holdout, lt=1.0, le=None))
        assign(self, "experiments", tuple(self.experiments))
        if not all(isinstance(e, Experiment) for e in self.experiments):
            raise fail("experiments", "Experiment entries", self.experiments)
        problems = cross_problems(self.layers, list(enumerate(self.experiments)))
        if problems:
            raise SpecError(problems)
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        assign(self, "fingerprint", hashlib.sha256(canonical.encode()).hexdigest())

    @property
    def version(self) -> str:
        """A short name of the content (the fingerprint's first 12 hex digits), for logs and pages."""
        return self.fingerprint[:12]

    def experiment(self, name: str) -> Experiment:
        for exp in self.experiments:
            if exp.name == name:
                return exp
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain data (experiments by name): what `parse_spec` reads back."""
        return {"holdout": self.holdout, "layers": list(self.layers),
                "experiments": [e.to_dict() for e in sorted(self.experiments, key=lambda e: e.name)]}


# -- the rules between experiments --------------------------------------------------------------------


def cross_problems(layers: tuple[str, ...], indexed: list[tuple[int, Experiment]]) -> list[str]:
    """What is wrong between experiments (each given with its index in the file): an unknown
    layer, a name or salt used twice, a layer's traffic over 1 or ranges that overlap, and two
    layers setting the same config path."""
    problems: list[str] = []
    names: dict[str, int] = {}
    salts: dict[str, int] = {}
    by_layer: dict[str, list[tuple[int, Experiment]]] = {}
    for i, exp in indexed:
        where = f"experiments[{i}]"
        if exp.name in names:
            problems.append(f"{where}.name: {exp.name!r} is also the name of experiments[{names[exp.name]}]")
        names.setdefault(exp.name, i)
        if exp.salt in salts:
            problems.append(f"{where}.salt: {exp.salt!r} is also the salt of experiments[{salts[exp.salt]}] "
                            "(their variants would be correlated)")
        salts.setdefault(exp.salt, i)
        try:
            check_choice(f"{where}.layer", exp.layer, layers)
        except SettingsError as exc:
            problems.append(str(exc))
            continue
        by_layer.setdefault(exp.layer, []).append((i, exp))
    for layer, members in by_layer.items():
        problems += _range_problems(layer, members)
    problems += _path_conflicts(by_layer)
    return problems


def _range_problems(layer: str, members: list[tuple[int, Experiment]]) -> list[str]:
    total = sum(to_buckets(exp.traffic) for _, exp in members)
    if total > BUCKETS:
        last = members[-1][0]
        parts = " + ".join(f"experiments[{i}] {exp.name!r} {exp.traffic:g}" for i, exp in members)
        return [(f"experiments[{last}].traffic: the traffic of layer {layer!r} sums to {total / BUCKETS:g} "
                 f"(over 1): {parts}")]
    problems = []
    for n, (j, b) in enumerate(members):
        clash = next(((i, a) for i, a in members[:n]
                      if b.first < a.stop and a.first < b.stop and a.first < a.stop and b.first < b.stop), None)
        if clash is not None:
            i, a = clash
            problems.append(f"experiments[{j}].offset: its buckets [{b.offset:g}, {b.offset + b.traffic:g}) "
                            f"of layer {layer!r} overlap those of experiments[{i}] {a.name!r} "
                            f"[{a.offset:g}, {a.offset + a.traffic:g})")
    return problems


def override_paths(override: Mapping, prefix: str = "") -> list[str]:
    """The config paths an override sets (its leaves; an empty mapping sets nothing)."""
    paths = []
    for key, value in override.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        paths += override_paths(value, path) if isinstance(value, Mapping) else [path]
    return paths


def _path_conflicts(by_layer: dict[str, list[tuple[int, Experiment]]]) -> list[str]:
    owner: dict[str, tuple[str, int, str]] = {}  # config path -> (layer, experiment index, variant)
    problems = []
    for layer, members in by_layer.items():
        for i, exp in members:
            for variant in exp.variants:
                for path in override_paths(variant.override):
                    for taken, (other, j, arm) in owner.items():
                        if other != layer and (path == taken or path.startswith(taken + ".")
                                               or taken.startswith(path + ".")):
                            problems.append(
                                f"experiments[{i}].variants.{variant.name}.override.{path}: also set by "
                                f"experiments[{j}].variants.{arm} in layer {other!r}; a config path "
                                "belongs to one layer (the later layer would silently win)")
                            break
                    owner.setdefault(path, (layer, i, variant.name))
    return problems


# -- reading the file ---------------------------------------------------------------------------------


SPEC_KEYS = ("holdout", "layers", "experiments")
EXPERIMENT_KEYS = tuple(f.name for f in dataclasses.fields(Experiment) if f.init)
VARIANT_KEYS = ("weight", "override")


def parse_spec(raw: Any, validate_override: OverrideValidator | None = None) -> ExperimentSpec:
    """The spec from plain data (a loaded YAML file), or SpecError listing every problem.
    `validate_override(override)` raises ValueError for an override the pipeline refuses; a
    message starting `path: ` names a path inside the override."""
    problems: list[str] = []

    def attempt(where: str, build: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return build(*args, **kwargs)
        except SpecError as exc:
            problems.extend(exc.problems)
        except (SettingsError, ValueError, TypeError) as exc:
            problems.append(_prefixed(where, str(exc)))
        return None

    if not isinstance(raw, Mapping):
        raise SpecError([f"expected a mapping with {', '.join(SPEC_KEYS)}, got {raw!r}"])
    _unknown("", raw, SPEC_KEYS, problems)
    if "layers" not in raw:
        problems.append("layers: missing (a list of layer names)")
    layers = attempt("", check_layers, raw["layers"]) if "layers" in raw else None
    holdout = attempt("", check_share, "holdout", raw.get("holdout", 0.0), lt=1.0, le=None)
    entries = raw.get("experiments") or []
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, (list, tuple)):
        problems.append(f"experiments: expected a list of experiments, got {entries!r}")
        entries = []
    parsed = []
    for i, entry in enumerate(entries):
        exp = _experiment(f"experiments[{i}]", entry, attempt, problems, validate_override)
        if exp is not None:
            parsed.append((i, exp))
    if layers is not None:
        problems += cross_problems(layers, parsed)
    if problems:
        raise SpecError(problems)
    return ExperimentSpec(layers=layers, experiments=tuple(exp for _, exp in parsed), holdout=holdout)


def _experiment(where: str, entry: Any, attempt, problems: list[str],
                validate_override: OverrideValidator | None) -> Experiment | None:
    if not isinstance(entry, Mapping):
        problems.append(f"{where}: expected a mapping with {', '.join(EXPERIMENT_KEYS)}, got {entry!r}")
        return None
    before = len(problems)
    _unknown(where, entry, EXPERIMENT_KEYS, problems)
    for key in ("name", "layer", "traffic", "variants"):
        if key not in entry:
            problems.append(f"{where}.{key}: missing")
    raw_variants = entry.get("variants")
    variants = []
    if raw_variants is not None and not isinstance(raw_variants, Mapping):
        problems.append(f"{where}.variants: expected a mapping of variant name -> "
                        f"{{weight, override}}, got {raw_variants!r}")
    elif raw_variants is not None:
        for name, body in raw_variants.items():
            path = f"{where}.variants.{name}"
            if not isinstance(body, Mapping):
                problems.append(f"{path}: expected a mapping with {', '.join(VARIANT_KEYS)}, got {body!r}")
                continue
            _unknown(path, body, VARIANT_KEYS, problems)
            if "weight" not in body:
                problems.append(f"{path}.weight: missing")
                continue
            override = {} if body.get("override") is None else body["override"]
            variant = attempt(path, Variant, name, body["weight"], override)
            if variant is not None and validate_override is not None and variant.override:
                attempt(f"{path}.override", validate_override, variant.override)
            variants.append(variant)
    if len(problems) > before:
        return None
    kw = {key: entry[key] for key in EXPERIMENT_KEYS if key in entry}
    kw["variants"] = tuple(variants)
    return attempt(where, Experiment, **kw)


def _unknown(where: str, raw: Mapping, known: tuple[str, ...], problems: list[str]) -> None:
    unknown = sorted(str(key) for key in raw if key not in known)
    if unknown:
        head = f"{where}: " if where else ""
        problems.append(f"{head}unknown key(s) {unknown}; expected {', '.join(known)}")


_PATH_HEAD = re.compile(r"^[\w\-\[\].]+: ")


def _prefixed(where: str, message: str) -> str:
    """`message` placed under `where`: `where.field: ...` when it names a field, else `where: ...`."""
    if not where:
        return message
    return f"{where}.{message}" if _PATH_HEAD.match(message) else f"{where}: {message}"


class _StrictLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key written twice in one mapping (PyYAML keeps the last)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            twice = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping says so
        if twice:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                    key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_spec(path: str | Path, validate_override: OverrideValidator | None = None) -> ExperimentSpec:
    """The spec in a YAML file, or SpecError (prefixed with the file) listing every problem."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise SpecError([f"not valid YAML: {exc}"], str(path)) from None
    try:
        return parse_spec(raw, validate_override)
    except SpecError as exc:
        raise SpecError(exc.problems, str(path)) from None
