"""A trained model as explicit files, bound to the catalog it was trained on.

Layout (a directory; in the registry it is `versions/vNNNN/model/`):

    manifest.json               format and version, feature schema (names in order, hash), the
                                pipeline settings, library versions, the dataset (name and the
                                sha256 fingerprint of its catalog's sorted title ids), how every
                                source and array is put together, and a sha256 per file
    boosters/play.ubj           the two rankers in XGBoost's own format (UBJSON: exact floats)
    boosters/completion.ubj
    arrays/<group>/<name>.npy   every fitted array: the training rows the feature builder counts
                                from, each candidate source's fitted state, the feature-store
                                snapshot at the model's as-of, the title/member id maps

Why: a pickle runs code when it is loaded, so a registry file that is a pickle is a program, and
it ties serving to training's private classes. These files hold data only (`np.load` with
allow_pickle=False, XGBoost's own loader), every one is checked against its sha256 before use, and
the manifest says which catalog the model ranks, so serving can refuse a model of another one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.pipeline_config import PipelineConfig
from models.protocol import TrainData
from models.ranker_features import FeatureBuilder, SnapshotFeatures, StoreLink
from models.retrieval import SOURCE_KINDS

BUNDLE_DIR = "model"  # the bundle's directory inside a registry version
MANIFEST = "manifest.json"
FORMAT = "marquee-model-bundle"
FORMAT_VERSION = 1
OBJECTIVES = ("play", "completion")
LEGACY_PICKLE = "pipeline.pkl"  # what a version of the previous format holds instead
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class BundleError(ValueError):
    """A bundle that cannot be written or loaded; the message names the file or field."""


class CatalogMismatchError(BundleError):
    """A model trained on another catalog than the one it would serve."""


def feature_schema_hash(names: list[str]) -> str:
    """A short hash of the feature names in order: two models with the same hash read the same
    ranker rows."""
    return hashlib.sha256(json.dumps(list(names)).encode()).hexdigest()[:16]


def catalog_fingerprint(title_ids: Any) -> str:
    """sha256 of the catalog's sorted, distinct title ids (as little-endian int64)."""
    ids = np.unique(np.asarray(title_ids, dtype=np.int64))
    return hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()


@dataclass(frozen=True)
class DatasetIdentity:
    """Which catalog a model ranks: a human name ("world:world", "movielens:ml-100k") and the
    fingerprint that decides (two catalogs are the same when their fingerprints are)."""

    name: str
    fingerprint: str
    titles: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise BundleError(f"dataset.name: expected a non-empty string, got {self.name!r}")
        if not isinstance(self.fingerprint, str) or not re.fullmatch(r"[0-9a-f]{64}", self.fingerprint):
            raise BundleError(f"dataset.fingerprint: expected 64 hex digits (sha256), got {self.fingerprint!r}")
        if isinstance(self.titles, bool) or not isinstance(self.titles, int) or self.titles < 0:
            raise BundleError(f"dataset.titles: expected a count >= 0, got {self.titles!r}")

    @classmethod
    def of_titles(cls, name: str, title_ids: Any) -> "DatasetIdentity":
        ids = np.unique(np.asarray(title_ids, dtype=np.int64))
        return cls(name, catalog_fingerprint(ids), int(len(ids)))

    @classmethod
    def of_dataset_dir(cls, directory: str | Path, title_ids: Any = None) -> "DatasetIdentity":
        """A Marquee dataset directory's catalog (what `marquee up` serves). `title_ids`: the
        catalog's ids when already loaded (a serving replica), else read from the dataset."""
        if title_ids is None:
            from marquee.dataset import load_dataset

            title_ids = load_dataset(directory).titles.column("title_id").to_numpy()
        return cls.of_titles(dataset_name(directory), np.fromiter(title_ids, dtype=np.int64))

    def same_catalog(self, other: "DatasetIdentity") -> bool:
        return self.fingerprint == other.fingerprint

    def describe(self) -> str:
        return f"{self.name} (catalog fingerprint {self.fingerprint[:16]}, {self.titles} titles)"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, what: str = "dataset") -> "DatasetIdentity":
        if not isinstance(data, dict) or set(data) != {"name", "fingerprint", "titles"}:
            raise BundleError(f"{what}: expected {{name, fingerprint, titles}}, got {data!r}")
        return cls(data["name"], data["fingerprint"], data["titles"])


def dataset_name(directory: str | Path) -> str:
    """`<source>:<directory name>` of a Marquee dataset, as training names it ("world:world")."""
    manifest = json.loads((Path(directory) / "manifest.json").read_text())
    return f"{manifest.get('source', 'dataset')}:{Path(directory).name}"


def mismatch_message(subject: str, trained: DatasetIdentity, served: DatasetIdentity, server: str) -> str:
    return (f"{subject} was trained on {trained.describe()}, but {server} serves {served.describe()}: "
            "a model ranks the catalog it was trained on; retrain on the served dataset")


@dataclass
class ModelBundle:
    """Everything serving needs of a trained pipeline, as plain objects (written and read here)."""

    feature_names: list[str]
    config: PipelineConfig
    boosters: dict  # objective -> xgboost.Booster
    builder: FeatureBuilder  # fitted sources + training rows; snapshot set when a store was linked
    title_ids: np.ndarray  # model title index -> title_id
    member_ids: np.ndarray  # model member index -> member_id
    catalog_title_ids: np.ndarray  # every title of the catalog trained on (the fingerprint's input)
    dataset_name: str
    training: dict = field(default_factory=dict)  # rows, positives, seconds: for people

    def __post_init__(self) -> None:
        self.title_ids = np.asarray(self.title_ids, dtype=np.int64)
        self.member_ids = np.asarray(self.member_ids, dtype=np.int64)
        self.catalog_title_ids = np.unique(np.asarray(self.catalog_title_ids, dtype=np.int64))
        self.feature_names = list(self.feature_names)
        if sorted(self.boosters) != sorted(OBJECTIVES):
            raise BundleError(f"boosters: expected {OBJECTIVES}, got {sorted(self.boosters)}")
        n_members, n_titles = self.builder.data.shape
        if len(self.title_ids) != n_titles or len(self.member_ids) != n_members:
            raise BundleError(f"title_ids/member_ids: {len(self.title_ids)} titles and {len(self.member_ids)} "
                              f"members for a model of {n_titles} titles and {n_members} members")
        outside = np.setdiff1d(self.title_ids, self.catalog_title_ids)
        if len(outside):
            raise BundleError(f"title_ids: {len(outside)} model titles are not in the catalog "
                              f"{self.dataset_name} (e.g. {outside[:3].tolist()})")

    @property
    def dataset(self) -> DatasetIdentity:
        return DatasetIdentity.of_titles(self.dataset_name, self.catalog_title_ids)

    @property
    def as_of_s(self) -> int:
        """The model's point in time: its last training interaction (seconds)."""
        timestamps = self.builder.data.timestamps
        return int(timestamps.max()) if len(timestamps) else 0


# -- writing -----------------------------------------------------------------------------------------


def write_bundle(bundle: ModelBundle, directory: str | Path) -> dict:
    """Write `bundle` into `directory` (created; must not hold a bundle yet); returns the manifest."""
    import xgboost

    directory = Path(directory)
    if (directory / MANIFEST).exists():
        raise BundleError(f"{directory}: already holds a bundle")
    builder, files, arrays = bundle.builder, {}, {}

    def put(key: str, array: np.ndarray) -> None:
        array = np.asarray(array)
        if not _KEY_RE.match(key) or ".." in key.split("/") or array.dtype == object:
            raise BundleError(f"array {key!r}: needs a plain name and a numeric dtype, got {array.dtype}")
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        name = f"arrays/{key}.npy"
        files[name] = _write_file(directory / name, buffer.getvalue())
        arrays[key] = {"file": name, "dtype": array.dtype.str, "shape": list(array.shape)}

    data = builder.data
    for column in ("members", "titles", "timestamps"):
        put(f"data/{column}", getattr(data, column))
    if data.strong is not None:
        put("data/strong", data.strong)
    put("ids/titles", bundle.title_ids)
    put("ids/members", bundle.member_ids)
    put("ids/catalog_titles", bundle.catalog_title_ids)
    sources = []
    for name, source in builder.sources.items():
        kind = type(source).__name__
        if SOURCE_KINDS.get(kind) is not type(source):
            raise BundleError(f"source {name!r}: {kind} has no array form (known: {', '.join(SOURCE_KINDS)})")
        params, state = source.to_arrays()
        for key, array in state.items():
            put(f"sources/{name}/{key}", array)
        sources.append({"name": name, "kind": kind, "params": params, "arrays": sorted(state)})
    store = None
    if builder.store is not None:
        store = {"dir": str(builder.store.store_dir), "version": builder.store.version}
        put("store/member_ids", builder.store.member_ids)
        put("store/title_ids", builder.store.title_ids)
    snapshot = None
    if builder.snapshot is not None:
        params, state = builder.snapshot.to_arrays()
        for key, array in state.items():
            put(f"snapshot/{key}", array)
        snapshot = {"params": params, "arrays": sorted(state)}
    boosters = {}
    for objective in OBJECTIVES:
        name = f"boosters/{objective}.ubj"
        files[name] = _write_file(directory / name, bytes(bundle.boosters[objective].save_raw("ubj")))
        boosters[objective] = name
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": bundle.dataset.to_dict(),
        "features": {"names": bundle.feature_names, "schema_hash": feature_schema_hash(bundle.feature_names)},
        "config": dataclasses.asdict(bundle.config),
        "versions": {"xgboost": xgboost.__version__, "numpy": np.__version__},
        "training": bundle.training,
        "builder": {"shape": list(data.shape), "depth": dict(builder.depth),
                    "strong_rate": builder._strong_key is not None, "store": store, "snapshot": snapshot},
        "sources": sources,
        "boosters": boosters,
        "arrays": arrays,
        "files": files,
    }
    (directory / MANIFEST).write_bytes((json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return manifest


def registry_files(directory: str | Path) -> dict[str, Path]:
    """The files of the bundle written in `directory`, named as a registry version holds them
    ("model/manifest.json", ...): what `Registry.register` takes."""
    directory = Path(directory)
    return {f"{BUNDLE_DIR}/{path.relative_to(directory).as_posix()}": path
            for path in sorted(directory.rglob("*")) if path.is_file()}


def _write_file(path: Path, content: bytes) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


# -- reading -----------------------------------------------------------------------------------------


def read_manifest(directory: str | Path) -> dict:
    """The bundle's manifest, its format checked (files are not read: see load_bundle)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path}: no bundle manifest") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {manifest.get('format_version')!r}; this code reads "
                          f"version {FORMAT_VERSION} only: retrain to write a current bundle")
    missing = {"dataset", "features", "config", "versions", "builder", "sources", "boosters", "arrays",
               "files"} - set(manifest)
    if missing:
        raise BundleError(f"{path}: manifest lacks {', '.join(sorted(missing))}")
    manifest["dataset"] = DatasetIdentity.from_dict(manifest["dataset"], f"{path}: dataset")
    return manifest


def read_dataset(directory: str | Path) -> DatasetIdentity:
    """The catalog a bundle was trained on, from its manifest alone (what promotion checks)."""
    return read_manifest(directory)["dataset"]


def load_bundle(directory: str | Path, *, expect: DatasetIdentity | None = None,
                subject: str | None = None, server: str = "this server") -> ModelBundle:
    """Read a bundle, verifying every file's sha256, the feature schema and the dataset; `expect`
    is the catalog it must have been trained on (CatalogMismatchError otherwise, before any file
    beyond the manifest is read); `subject` and `server` name the model and the server in that
    message. Never unpickles."""
    import xgboost

    directory = Path(directory)
    manifest = read_manifest(directory)
    dataset: DatasetIdentity = manifest["dataset"]
    if expect is not None and not dataset.same_catalog(expect):
        raise CatalogMismatchError(mismatch_message(subject or f"the model in {directory}", dataset, expect, server))
    contents = _verified_files(directory, manifest["files"])
    arrays = {}
    for key, meta in manifest["arrays"].items():
        raw = contents.get(meta["file"])
        if raw is None:
            raise BundleError(f"{directory}: array {key!r} names {meta['file']!r}, which has no sha256 in the manifest")
        array = np.load(io.BytesIO(raw), allow_pickle=False)
        if array.dtype.str != meta["dtype"] or list(array.shape) != meta["shape"]:
            raise BundleError(f"{directory}: array {key!r} is {array.dtype.str}{list(array.shape)}, the "
                              f"manifest says {meta['dtype']}{meta['shape']}")
        arrays[key] = array

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {key[len(prefix):]: array for key, array in arrays.items() if key.startswith(prefix)}

    spec = manifest["builder"]
    data = TrainData.from_rows(arrays["data/members"], arrays["data/titles"], arrays["data/timestamps"],
                               tuple(spec["shape"]), arrays.get("data/strong"))
    sources = {}
    for source in manifest["sources"]:
        kind = SOURCE_KINDS.get(source["kind"])
        if kind is None:
            raise BundleError(f"{directory}: source {source['name']!r} is of unknown kind {source['kind']!r}")
        state = group(f"sources/{source['name']}/")
        if sorted(state) != sorted(source["arrays"]):
            raise BundleError(f"{directory}: source {source['name']!r} arrays {sorted(state)} != {source['arrays']}")
        sources[source["name"]] = kind.from_arrays(source["params"], state, data)
    store = None
    if spec["store"] is not None:
        store = StoreLink(spec["store"]["dir"], arrays["store/member_ids"], arrays["store/title_ids"],
                          spec["store"]["version"])
    snapshot = None
    if spec["snapshot"] is not None:
        snapshot = SnapshotFeatures.from_arrays(spec["snapshot"]["params"], group("snapshot/"))
    builder = FeatureBuilder(data, sources, spec["depth"], strong=data.strong if spec["strong_rate"] else None,
                             store=store, snapshot=snapshot)
    names = manifest["features"]["names"]
    if feature_schema_hash(names) != manifest["features"]["schema_hash"]:
        raise BundleError(f"{directory}: feature names do not match the manifest's schema_hash")
    boosters = {}
    for objective in OBJECTIVES:
        booster = xgboost.Booster()
        booster.load_model(bytearray(contents[manifest["boosters"][objective]]))
        if booster.num_features() != len(names) or (booster.feature_names is not None
                                                     and list(booster.feature_names) != names):
            raise BundleError(f"{directory}: the {objective} booster reads {booster.num_features()} features, "
                              f"not the manifest's {len(names)} ({names[:3]}...)")
        boosters[objective] = booster
    try:
        config = PipelineConfig(**manifest["config"])
    except (TypeError, ValueError) as exc:
        raise BundleError(f"{directory}: config: {exc}") from None
    bundle = ModelBundle(names, config, boosters, builder, arrays["ids/titles"], arrays["ids/members"],
                         arrays["ids/catalog_titles"], dataset.name, manifest.get("training", {}))
    if bundle.dataset != dataset:
        raise BundleError(f"{directory}: the catalog's title ids do not give the manifest's fingerprint")
    return bundle


def _verified_files(directory: Path, files: dict) -> dict[str, bytes]:
    contents = {}
    for name, digest in files.items():
        if not isinstance(name, str) or not _KEY_RE.match(name) or ".." in name.split("/"):
            raise BundleError(f"{directory}: file name {name!r} is not a plain relative path")
        try:
            raw = (directory / name).read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{directory}: {name} is missing") from None
        if hashlib.sha256(raw).hexdigest() != digest:
            raise BundleError(f"{directory}: {name} does not match its sha256 in the manifest")
        contents[name] = raw
    return contents
