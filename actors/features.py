"""The online feature store: the latest offline snapshot, sharded across actors, read in batches.

- `FeatureShard` (plain class): one entity's rows for the keys hashed to it, as an Arrow table
  with a sorted key index. Versions change in two phases (`stage`, then `commit`); the previous
  version stays readable until the next commit, so reads that started on it finish on it.
- `FeatureShardActor`: the thin Ray actor around it (num_cpus=0: it is memory, not compute).
- `FeatureStore` (client): routes keys to shards with a stable hash, sends ONE batched call per
  shard in parallel, reassembles in input order, and never returns a mix of versions: if the
  shards answered from different versions (a publish was mid-commit) it re-reads the stragglers
  pinned to the newest version, which every shard holds (staged or committed) by then.

Unknown keys get the entity's defaults flagged `cold_start: True`; a read never raises for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np
import pyarrow as pa


ENTITIES = ("member", "title", "cowatch")
KEY_COLUMN = {"member": "member_id", "title": "title_id", "cowatch": "title_id"}
NAMESPACE = "marquee"
DEFAULT_SHARDS = 2


class FeatureStoreError(RuntimeError):
    """A publish or read could not be completed; the message says which shard or version."""


class StaleVersionError(FeatureStoreError):
    """A read pinned to a version this shard no longer (or not yet) holds."""


def actor_name(entity: str, index: int) -> str:
    return f"marquee-features-{entity}-{index}"


# ---------------------------------------------------------------------------------------------
# Routing: a stable hash (Python's hash() is salted per process; every process must agree)
# ---------------------------------------------------------------------------------------------


def _splitmix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def shard_of(keys: Sequence[int] | np.ndarray | pa.Array | pa.ChunkedArray, num_shards: int) -> np.ndarray:
    """Shard index of each integer key: splitmix64(key) mod num_shards (same in every process)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        keys = keys.to_numpy(zero_copy_only=False) if isinstance(keys, pa.Array) else keys.to_numpy()
    array = np.asarray(keys)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"feature keys must be integers, got {array.dtype}")
    with np.errstate(over="ignore"):
        return (_splitmix64(array.astype(np.int64)) % np.uint64(num_shards)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# One shard
# ---------------------------------------------------------------------------------------------


@dataclass
class _Snapshot:
    keys: np.ndarray  # sorted int64
    table: pa.Table  # rows aligned with keys
    defaults: dict[str, Any]


def _index(table: pa.Table, key: str) -> tuple[np.ndarray, pa.Table]:
    if key not in table.column_names:
        raise FeatureStoreError(f"snapshot lacks its key column {key!r}")
    table = table.sort_by(key)
    keys = table.column(key).to_numpy().astype(np.int64)
    if len(keys) > 1 and (np.diff(keys) == 0).any():
        raise FeatureStoreError(f"snapshot has duplicate {key} values")
    return keys, table


class FeatureShard:
    """One entity's snapshot for the keys routed to this shard. Not thread-safe by itself: the
    actor runs one call at a time, which makes every read and every commit atomic."""

    def __init__(self, entity: str):
        if entity not in KEY_COLUMN:
            raise FeatureStoreError(f"unknown entity {entity!r}; expected one of {', '.join(KEY_COLUMN)}")
        self.entity = entity
        self.key = KEY_COLUMN[entity]
        self._staged: dict[str, _Snapshot] = {}
        self._current: str | None = None
        self._previous: str | None = None
        self._committed: dict[str, _Snapshot] = {}
        self._empty_defaults: dict[str, Any] = {}

    def stage(self, version: str, table: pa.Table, defaults: Mapping[str, Any] | None = None) -> int:
        """Load `version` beside the serving one; returns its row count. Nothing is served yet."""
        keys, table = _index(table, self.key)
        self._staged[version] = _Snapshot(keys, table, dict(defaults or {}))
        return table.num_rows

    def commit(self, version: str) -> str:
        """Serve `version`; keep the one it replaces until the next commit; drop anything older."""
        if version == self._current:
            return version
        if version not in self._staged:
            raise FeatureStoreError(f"{self.entity} shard: commit of version {version!r} that was never staged")
        self._committed[version] = self._staged.pop(version)
        self._previous, self._current = self._current, version
        self._committed = {v: s for v, s in self._committed.items() if v in (self._current, self._previous)}
        return version

    def version(self) -> str | None:
        return self._current

    def versions(self) -> dict[str, Any]:
        return {"current": self._current, "previous": self._previous, "staged": sorted(self._staged)}

    def _snapshot(self, version: str | None) -> tuple[str | None, _Snapshot | None]:
        if version is None:
            version = self._current
        if version is None:
            return None, None
        snap = self._committed.get(version) or self._staged.get(version)
        if snap is None:
            raise StaleVersionError(
                f"{self.entity} shard holds {self.versions()}, not the requested version {version!r}")
        return version, snap

    def read(self, keys: Sequence[int], version: str | None = None) -> tuple[str | None, list[dict]]:
        """(version served, one row per key in order). Unknown keys: defaults + cold_start True."""
        served, snap = self._snapshot(version)
        wanted = np.asarray(list(keys), dtype=np.int64)
        if snap is None or len(snap.keys) == 0:
            defaults = snap.defaults if snap is not None else self._empty_defaults
            return served, [self._cold(int(k), defaults) for k in wanted]
        pos = np.minimum(np.searchsorted(snap.keys, wanted), len(snap.keys) - 1)
        found = snap.keys[pos] == wanted
        rows = snap.table.take(pa.array(pos[found])).to_pylist() if found.any() else []
        out, it = [], iter(rows)
        for key, hit in zip(wanted.tolist(), found.tolist()):
            if hit:
                row = next(it)
                row["cold_start"] = False
                out.append(row)
            else:
                out.append(self._cold(key, snap.defaults))
        return served, out

    def get_many(self, keys: Sequence[int], version: str | None = None) -> list[dict]:
        return self.read(keys, version)[1]

    def _cold(self, key: int, defaults: Mapping[str, Any]) -> dict[str, Any]:
        row = {self.key: key}
        for name, value in defaults.items():
            row[name] = list(value) if isinstance(value, list) else value
        row["cold_start"] = True
        return row


class FeatureShardActor(FeatureShard):
    """The Ray actor form of FeatureShard (decorated with ray.remote where it is created, so this
    module imports without Ray)."""


# ---------------------------------------------------------------------------------------------
# Calling shards: directly (tests, one process) or through Ray
# ---------------------------------------------------------------------------------------------


class ShardBackend(Protocol):
    def submit(self, shard: Any, method: str, *args: Any) -> Any: ...

    def gather(self, pending: list[Any]) -> list[Any]: ...


class LocalBackend:
    """Plain objects, called in turn."""

    def submit(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method)(*args)

    def gather(self, pending: list[Any]) -> list[Any]:
        return list(pending)


class RayBackend:
    """Actor handles: submit every call, then one ray.get, so shards work in parallel."""

    def submit(self, shard: Any, method: str, *args: Any) -> Any:
        return getattr(shard, method).remote(*args)

    def gather(self, pending: list[Any]) -> list[Any]:
        import ray

        return ray.get(pending)


# ---------------------------------------------------------------------------------------------
# The client
# ---------------------------------------------------------------------------------------------


def cowatch_rows(table: pa.Table) -> pa.Table:
    """Co-watch pairs (title_id, other_title_id, count, score, rank) -> one row per title with a
    ranked `neighbours` list, the shape the 'because you watched' source reads."""
    table = table.sort_by([("title_id", "ascending"), ("rank", "ascending")])
    ids = table.column("title_id").to_numpy()
    if len(ids) == 0:
        neighbours = pa.array([], pa.list_(pa.struct([("title_id", pa.int64()), ("count", pa.int32()),
                                                       ("score", pa.float32())])))
        return pa.table({"title_id": pa.array([], pa.int64()), "neighbours": neighbours})
    unique, starts = np.unique(ids, return_index=True)
    offsets = pa.array(np.append(starts, len(ids)).astype(np.int32))
    values = pa.StructArray.from_arrays(
        [table.column("other_title_id").combine_chunks(), table.column("count").combine_chunks(),
         table.column("score").combine_chunks()],
        names=["title_id", "count", "score"])
    return pa.table({"title_id": pa.array(unique, pa.int64()),
                     "neighbours": pa.ListArray.from_arrays(offsets, values)})


class FeatureStore:
    """Sharded online features. Build with `local()` (no Ray), `create()` (Ray actors, named so
    other processes can `connect()`), or directly from shard objects and a backend."""

    def __init__(self, shards: Mapping[str, Sequence[Any]], backend: ShardBackend | None = None):
        missing = [e for e in ENTITIES if not shards.get(e)]
        if missing:
            raise FeatureStoreError(f"no shards for entity(ies) {', '.join(missing)}")
        self.shards = {e: list(s) for e, s in shards.items()}
        self.backend = backend or LocalBackend()
        self.version: str | None = None  # the version this client last saw everywhere

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_factory(cls, factory: Callable[[str, int], Any], num_shards: int = DEFAULT_SHARDS,
                     backend: ShardBackend | None = None) -> "FeatureStore":
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        return cls({e: [factory(e, i) for i in range(num_shards)] for e in ENTITIES}, backend)

    @classmethod
    def local(cls, num_shards: int = DEFAULT_SHARDS) -> "FeatureStore":
        return cls.from_factory(lambda entity, _i: FeatureShard(entity), num_shards, LocalBackend())

    @classmethod
    def create(cls, num_shards: int = DEFAULT_SHARDS, *, detached: bool = False) -> "FeatureStore":
        """Start (or reuse, by name) the shard actors on the connected Ray cluster."""
        import ray

        remote = ray.remote(FeatureShardActor)
        options: dict[str, Any] = {"namespace": NAMESPACE, "num_cpus": 0, "get_if_exists": True}
        if detached:
            options["lifetime"] = "detached"

        def factory(entity: str, i: int):
            return remote.options(name=actor_name(entity, i), **options).remote(entity)

        store = cls.from_factory(factory, num_shards, RayBackend())
        store.version = store._current_version()
        return store

    @classmethod
    def connect(cls) -> "FeatureStore":
        """Find the shard actors another process created (names marquee-features-{entity}-{i})."""
        import ray

        shards: dict[str, list[Any]] = {}
        for entity in ENTITIES:
            found = []
            while True:
                try:
                    found.append(ray.get_actor(actor_name(entity, len(found)), namespace=NAMESPACE))
                except ValueError:
                    break
            shards[entity] = found
        if not all(shards.values()):
            raise FeatureStoreError(
                f"no feature store actors in namespace {NAMESPACE!r} (start them with FeatureStore.create())")
        store = cls(shards, RayBackend())
        store.version = store._current_version()
        return store

    def _current_version(self) -> str | None:
        versions = self.backend.gather([self.backend.submit(s, "version") for s in self.shards["member"]])
        return max((v for v in versions if v), default=None)

    # -- publish -----------------------------------------------------------------------------
    def publish(self, store_dir: Path | str, version: str | None = None) -> str:
        """Load the latest snapshot of every entity of an offline version: stage on every shard,
        then commit on every shard. Returns the version now served."""
        from features.offline_store import defaults_for, features_as_of, read_manifest, resolve_version_dir

        version_dir = resolve_version_dir(store_dir, version)
        manifest = read_manifest(version_dir)
        name = manifest["version"]
        tables = {e: features_as_of(version_dir, e, manifest["as_of_last"]) for e in ENTITIES}
        tables["cowatch"] = cowatch_rows(tables["cowatch"])
        pending = []
        for entity, table in tables.items():
            shards = self.shards[entity]
            route = shard_of(table.column(KEY_COLUMN[entity]), len(shards))
            defaults = defaults_for(entity, manifest)
            for i, shard in enumerate(shards):
                part = table.filter(pa.array(route == i))
                pending.append(self.backend.submit(shard, "stage", name, part, defaults))
        self.backend.gather(pending)  # every shard holds the new version before any serves it
        commits = [self.backend.submit(s, "commit", name) for e in ENTITIES for s in self.shards[e]]
        self.backend.gather(commits)
        self.version = name
        return name

    # -- read --------------------------------------------------------------------------------
    def get_many(self, entity: str, keys: Iterable[int]) -> list[dict]:
        """Rows for `keys` in input order, all from ONE version; unknown keys are cold_start."""
        if entity not in self.shards:
            raise FeatureStoreError(f"unknown entity {entity!r}; expected one of {', '.join(ENTITIES)}")
        keys = np.asarray(list(keys), dtype=np.int64)
        shards = self.shards[entity]
        route = shard_of(keys, len(shards))
        asked = [(i, np.flatnonzero(route == i)) for i in range(len(shards))]
        asked = [(i, positions) for i, positions in asked if len(positions)]
        for attempt in range(3):
            try:
                replies = self._read_consistent(shards, keys, asked)
                break
            except StaleVersionError:  # two publishes overtook this read: read afresh
                if attempt == 2:
                    raise
        served = {v for v, _ in replies}
        if served and None not in served:
            self.version = max(served)
        out: list[dict | None] = [None] * len(keys)
        for (_, positions), (version, rows) in zip(asked, replies):
            for position, row in zip(positions.tolist(), rows):
                row["version"] = version
                out[position] = row
        return out  # type: ignore[return-value]

    def _read_consistent(self, shards: list[Any], keys: np.ndarray,
                         asked: list[tuple[int, np.ndarray]]) -> list[tuple[str | None, list[dict]]]:
        """One batched read per shard, in parallel; if the shards answered from different
        versions (a publish is between its commits), re-read the others pinned to the newest,
        which every shard already holds, staged or committed."""
        replies = self.backend.gather(
            [self.backend.submit(shards[i], "read", keys[p].tolist(), None) for i, p in asked])
        served = {v for v, _ in replies}
        if len(served) > 1:
            newest = max(v for v in served if v is not None)
            again = [n for n, (v, _) in enumerate(replies) if v != newest]
            fixed = self.backend.gather(
                [self.backend.submit(shards[asked[n][0]], "read", keys[asked[n][1]].tolist(), newest)
                 for n in again])
            for n, reply in zip(again, fixed):
                replies[n] = reply
        return replies

    def versions(self) -> dict[str, list[Any]]:
        """What every shard holds (current, previous, staged): for dashboards and debugging."""
        return {e: self.backend.gather([self.backend.submit(s, "versions") for s in shards])
                for e, shards in self.shards.items()}
