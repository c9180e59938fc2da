"""HomepageConfig: the homepage pipeline as data, and variants as overrides of it.

One typed config names everything a page is made of: the candidate sources and their policies,
the filters in order, the scorer, the row plan, the selectors with their settings, the
decorators and the artwork policy. Each section is a frozen dataclass checked when constructed
(messages name the field); `HomepageConfig.from_dict` names the path of a bad value
(`selectors.diversity.mmr_lambda: ...`). Whether the names refer to real components is checked
once when deployments/page_builder.py builds the pipeline.

A variant is an override and nothing else: `apply_override(base, {"selectors": {"diversity":
{"mmr_lambda": 0.4}}})` is a new validated config; nested mappings merge, anything else
replaces, and None removes a key (a source, or a value back to its default). The hot values of
user_config are the same override (plus `model_version`), so a bad one is refused whole before
anything changes and the old config keeps serving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deployments.candidates import FAULTS, MODEL_SOURCES, ROW_SOURCES, RetrievalConfig, SourcePolicy
from deployments.rows import RowPlan, RowSpec
from deployments.rules import DEFAULT_FILTERS
from deployments.selectors import EditorialSlot
from deployments.model_holder import FOLLOW_PROMOTED
from marquee.names import MODEL_VERSION_RE


def _number(name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None,
            integer: bool = False, positive: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ValueError(f"{name}: expected {'an integer' if integer else 'a number'}, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value!r}")


def _names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, (list, tuple)) \
            or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name}: expected a list of names, got {value!r}")
    out = tuple(value)
    dupes = sorted({v for v in out if out.count(v) > 1})
    if dupes:
        raise ValueError(f"{name}: named twice: {dupes}")
    return out


# -- sections ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    """One candidate source's policy: how long it may take, whether losing it fails the
    personalized page (fail_open False: the popular rows serve), and a chaos fault."""

    timeout_ms: float = 250.0
    fail_open: bool = True
    fault: str | None = None  # "raise" | "slow": injected failures for chaos tests

    def __post_init__(self) -> None:
        _number("timeout_ms", self.timeout_ms, positive=True)
        if not isinstance(self.fail_open, bool):
            raise ValueError(f"fail_open: expected true or false, got {self.fail_open!r}")
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"fault: expected one of {FAULTS} or null, got {self.fault!r}")


DEFAULT_SOURCES: Mapping[str, SourceConfig] = {name: SourceConfig() for name in MODEL_SOURCES + ROW_SOURCES}


@dataclass(frozen=True)
class CandidateSettings:
    """How many candidates the row sources give (the model sources' depths are training's)."""

    because_seeds: int = 3  # "because you watched" rows come from the most recent seeds
    because_depth: int = 20
    row_depth: int = 25  # titles per row source sent to the ranker: rows show 10 after filters
    cold_titles: int = 20  # titles nobody has played yet, matched to the member by content
    cold_title_weight: float = 1.0  # times the genre match; the page scales it by the median ranker score
    slow_fault_s: float = 2.0  # how long the "slow" fault sleeps

    def __post_init__(self) -> None:
        for name in ("because_seeds", "because_depth", "row_depth", "cold_titles"):
            _number(name, getattr(self, name), minimum=0, integer=True)
        for name in ("cold_title_weight", "slow_fault_s"):
            _number(name, getattr(self, name), minimum=0)


@dataclass(frozen=True)
class EditorialConfig:
    """Editorial decisions: titles pinned at row positions, and score boosts per title."""

    slots: tuple[EditorialSlot, ...] = ()
    boosts: Mapping[int, float] = field(default_factory=dict)  # title_id -> added score

    def __post_init__(self) -> None:
        object.__setattr__(self, "slots", tuple(self.slots))
        for slot in self.slots:
            if not isinstance(slot, EditorialSlot):
                raise ValueError(f"slots: expected EditorialSlot entries, got {type(slot).__name__}")
        for title, boost in self.boosts.items():
            _number(f"boosts.{title}", boost)


@dataclass(frozen=True)
class SeriesCapConfig:
    max_per_series: int = 2  # seasons of one show per row

    def __post_init__(self) -> None:
        _number("max_per_series", self.max_per_series, minimum=1, integer=True)


@dataclass(frozen=True)
class DiversityConfig:
    """MMR over genres: mmr_lambda 1.0 = pure score order; lower = a stronger diversity."""

    mmr_lambda: float = 0.7
    pool_factor: int = 5  # MMR looks at the best pool_factor x row-size titles (bounds the cost)

    def __post_init__(self) -> None:
        _number("mmr_lambda", self.mmr_lambda, minimum=0.0, maximum=1.0)
        _number("pool_factor", self.pool_factor, minimum=1, integer=True)


@dataclass(frozen=True)
class SelectorsConfig:
    """The per-row selectors; they run in this order on every row."""

    editorial_pins: EditorialConfig = EditorialConfig()
    series_cap: SeriesCapConfig = SeriesCapConfig()
    diversity: DiversityConfig = DiversityConfig()


@dataclass(frozen=True)
class ArtworkConfig:
    """The artwork bandit (bandits/policies.py) and how much it explores: epsilon for
    epsilon_greedy, alpha (the confidence width) for linucb, scale (of the posterior draws) for
    linear_ts; each policy reads only its own. Hot: an experiment may vary them per member."""

    policy: str = "linucb"  # what the nearline learner trains (actors/bandit_learner.py)
    epsilon: float = 0.1
    alpha: float = 0.03  # as `marquee bench bandit` tuned it (the learner's default too)
    scale: float = 1.0
    seed: int = 7

    def __post_init__(self) -> None:
        if not isinstance(self.policy, str) or not self.policy:
            raise ValueError(f"policy: expected a name, got {self.policy!r}")
        _number("epsilon", self.epsilon, minimum=0.0, maximum=1.0)
        _number("alpha", self.alpha, positive=True)
        _number("scale", self.scale, positive=True)
        _number("seed", self.seed, integer=True)

    def params_for(self, params: tuple[str, ...]) -> dict:
        """This config's values of the parameters a policy takes (the others keep its defaults)."""
        return {name: getattr(self, name) for name in ("epsilon", "alpha", "scale") if name in params}


@dataclass(frozen=True)
class InterleavingConfig:
    """Team-draft interleaving (experiments/interleaving.py) of two scorers' rankings, in the rows
    the model ranks (single rows of source `personalized`): `rankers` = (A, B), scorer names;
    empty: no interleaving. Why a config value: an interleaving experiment is then one variant
    override, `{"interleaving": {"rankers": ["popularity", "ranker"]}}`."""

    rankers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rankers", _names("rankers", self.rankers))
        if len(self.rankers) not in (0, 2):
            raise ValueError(f"rankers: expected two scorer names (A, B) or none, got {list(self.rankers)}")


@dataclass(frozen=True)
class HomepageConfig:
    """The whole homepage pipeline, as data (see the module docstring)."""

    sources: Mapping[str, SourceConfig] = field(default_factory=lambda: dict(DEFAULT_SOURCES))
    candidates: CandidateSettings = CandidateSettings()
    filters: tuple[str, ...] = DEFAULT_FILTERS
    scorer: str = "ranker"
    rows: RowPlan = RowPlan()
    selectors: SelectorsConfig = SelectorsConfig()
    decorators: tuple[str, ...] = ("explanation", "artwork")
    artwork: ArtworkConfig = ArtworkConfig()
    interleaving: InterleavingConfig = InterleavingConfig()

    def __post_init__(self) -> None:
        sections = {"candidates": CandidateSettings, "rows": RowPlan, "selectors": SelectorsConfig,
                    "artwork": ArtworkConfig, "interleaving": InterleavingConfig}
        for name, kind in sections.items():
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name}: expected a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.sources, Mapping) or not self.sources:
            raise ValueError("sources: name at least one candidate source")
        for name, source in self.sources.items():
            if not isinstance(source, SourceConfig):
                raise ValueError(f"sources.{name}: expected a SourceConfig, got {type(source).__name__}")
        object.__setattr__(self, "filters", _names("filters", self.filters))
        object.__setattr__(self, "decorators", _names("decorators", self.decorators))
        if not isinstance(self.scorer, str) or not self.scorer:
            raise ValueError(f"scorer: expected a name, got {self.scorer!r}")
        for slot in self.selectors.editorial_pins.slots:
            if not self.rows.produces(slot.row_id):
                raise ValueError(f"selectors.editorial_pins.slots: slot names row {slot.row_id!r}, which the "
                                 f"row plan cannot produce (rows: {', '.join(s.row_id for s in self.rows.rows)})")

    # -- what the stages read ----------------------------------------------------------------

    def retrieval(self) -> RetrievalConfig:
        """The candidate stage's settings."""
        c = self.candidates
        return RetrievalConfig(
            sources=tuple(self.sources),
            policies={name: SourcePolicy(s.timeout_ms, s.fail_open) for name, s in self.sources.items()},
            because_seeds=c.because_seeds, because_depth=c.because_depth, row_depth=c.row_depth,
            cold_titles=c.cold_titles, cold_title_weight=c.cold_title_weight,
            editorial_boost=dict(self.selectors.editorial_pins.boosts),
            faults={name: s.fault for name, s in self.sources.items() if s.fault is not None},
            slow_fault_s=c.slow_fault_s)

    # -- as data ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, dicts, numbers): what `from_dict` reads back."""
        return _plain(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "HomepageConfig":
        raw = _mapping("homepage config", raw or {})
        _known("", raw, cls)
        kw: dict[str, Any] = {}
        if "sources" in raw:
            sources = _mapping("sources", raw["sources"])
            kw["sources"] = {str(name): _flat(SourceConfig, value, f"sources.{name}") for name, value in sources.items()}
        if "candidates" in raw:
            kw["candidates"] = _flat(CandidateSettings, raw["candidates"], "candidates")
        for name in ("filters", "decorators", "scorer"):  # checked by __post_init__
            if name in raw:
                kw[name] = raw[name]
        if "rows" in raw:
            kw["rows"] = _row_plan(raw["rows"])
        if "selectors" in raw:
            kw["selectors"] = _selectors(raw["selectors"])
        if "artwork" in raw:
            kw["artwork"] = _flat(ArtworkConfig, raw["artwork"], "artwork")
        if "interleaving" in raw:
            kw["interleaving"] = _flat(InterleavingConfig, raw["interleaving"], "interleaving")
        return _within("", lambda: cls(**kw))


def apply_override(base: HomepageConfig, override: Mapping[str, Any] | None) -> HomepageConfig:
    """A variant: `base` with `override` merged in (nested mappings merge, anything else
    replaces, None removes the key), validated as a whole. `base` is unchanged."""
    if not override:
        return base
    return HomepageConfig.from_dict(_merge(base.to_dict(), _mapping("override", override)))


@dataclass(frozen=True)
class HotValues:
    """What user_config carries: the model to serve and the page config (an override of the
    base config). Parsed whole or refused whole."""

    model_version: str
    page: HomepageConfig

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, base: HomepageConfig | None = None) -> "HotValues":
        raw = dict(_mapping("user_config", raw or {}))
        version = raw.pop("model_version", FOLLOW_PROMOTED)
        if version != FOLLOW_PROMOTED and not (isinstance(version, str) and MODEL_VERSION_RE.match(version)):
            raise ValueError(f"user_config.model_version: expected {FOLLOW_PROMOTED!r} or vNNNN, got {version!r}")
        try:
            page = apply_override(base or HomepageConfig(), raw)
        except ValueError as exc:
            raise ValueError(f"user_config.{exc}") from None
        return cls(version, page)


# -- parsing helpers ------------------------------------------------------------------------------


def _mapping(where: str, raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    return raw


def _known(path: str, raw: Mapping[str, Any], cls: type) -> None:
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(cls) if f.init})
    if unknown:
        where = f"{path}: " if path else ""
        raise ValueError(f"{where}unknown key(s) {unknown}; expected "
                         f"{', '.join(f.name for f in dataclasses.fields(cls) if f.init)}")


def _within(path: str, build):
    """Run `build`, prefixing a ValueError/TypeError with where the value was."""
    try:
        return build()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}.{exc}" if path else str(exc)) from None


def _flat(cls: type, raw: Any, path: str):
    raw = _mapping(path, raw)
    _known(path, raw, cls)
    return _within(path, lambda: cls(**raw))


def _row_plan(raw: Any) -> RowPlan:
    raw = _mapping("rows", raw)
    _known("rows", raw, RowPlan)
    kw = dict(raw)
    if "rows" in kw:
        specs = kw["rows"]
        if isinstance(specs, (str, Mapping)):
            raise ValueError(f"rows.rows: expected a list of row specs, got {specs!r}")
        kw["rows"] = tuple(_flat(RowSpec, spec, f"rows.rows[{i}]") for i, spec in enumerate(specs))
    return _within("rows", lambda: RowPlan(**kw))


def _selectors(raw: Any) -> SelectorsConfig:
    raw = _mapping("selectors", raw)
    _known("selectors", raw, SelectorsConfig)
    kw: dict[str, Any] = {}
    if "editorial_pins" in raw:
        pins = dict(_mapping("selectors.editorial_pins", raw["editorial_pins"]))
        _known("selectors.editorial_pins", pins, EditorialConfig)
        if "slots" in pins:
            if isinstance(pins["slots"], (str, Mapping)):
                raise ValueError("selectors.editorial_pins.slots: expected a list of {row_id, position, title_id}")
            pins["slots"] = tuple(_flat(EditorialSlot, slot, f"selectors.editorial_pins.slots[{i}]")
                                  for i, slot in enumerate(pins["slots"]))
        if "boosts" in pins:
            boosts = _mapping("selectors.editorial_pins.boosts", pins["boosts"])
            pins["boosts"] = _within("selectors.editorial_pins.boosts",
                                     lambda: {int(k): float(v) for k, v in boosts.items()})
        kw["editorial_pins"] = _within("selectors.editorial_pins", lambda: EditorialConfig(**pins))
    if "series_cap" in raw:
        kw["series_cap"] = _flat(SeriesCapConfig, raw["series_cap"], "selectors.series_cap")
    if "diversity" in raw:
        kw["diversity"] = _flat(DiversityConfig, raw["diversity"], "selectors.diversity")
    return SelectorsConfig(**kw)


def _merge(base: Any, override: Any) -> Any:
    if not isinstance(base, Mapping) or not isinstance(override, Mapping):
        return override
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
