"""Versioned artwork-policy parameters on disk: what the nearline learner publishes and every
serving replica follows, like models in the registry, without a pickle anywhere.

    root/
      LATEST                      {"version": 12, "policy": "linucb", ...}: the pointer replicas poll
      versions/v000012/
        manifest.json             policy name, version, dim, params, created_at, sha256 per file
        design.npy response.npy   the policy's learned arrays (np.save, allow_pickle=False)
        member_ids.npy ...        optional: the members' theme counts published with it
      .staging/                   a version being written (renamed into versions/ when complete)
      .lock                       flock held by a publisher

Why a reader never sees half a version: every file is written atomically (marquee.durable) into a
staging directory, which is renamed into versions/ only when complete; LATEST is rewritten
(atomically) only after that rename. A reader follows LATEST or lists versions/ and never looks
in .staging. Version numbers are assigned by the store (the previous one + 1, under the lock), so
a learner restarted from an older checkpoint cannot overwrite a version a replica may serve; the
published policy's own `version` is set to the store's number, the one serving logs in its
decision records. Loading checks each file's sha256 against the manifest and every array's shape
against the policy (policy_from_state), and names the file at fault.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from bandits.policies import Policy, policy_from_state
from marquee.durable import fsync_path, write_atomic

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
POINTER = "LATEST"
VERSIONS = "versions"
STAGING = ".staging"
LOCK = ".lock"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # array names become file names
_STATE_KEYS = ("policy", "version", "dim")  # kept at the manifest's top level, not in params
_COUNT_ARRAYS = ("member_ids", "theme_impressions", "theme_plays")


class PolicyStoreError(Exception):
    """A store that cannot be read or written as asked; the message names the file at fault."""


@dataclass(frozen=True, eq=False)
class MemberThemeCounts:
    """Per member, homepage impressions and plays per artwork theme (the trials the learner
    joined): what bandits.context.member_vectors turns into theme_share and theme_lift. Serving
    reads one member with `lookup`, the shape deployments/artwork.py's MemberCounts takes."""

    member_ids: np.ndarray  # (n,) int64, ascending
    impressions: np.ndarray  # (n, themes) float64
    plays: np.ndarray  # (n, themes) float64
    _rows: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        ids = np.asarray(self.member_ids, np.int64)
        impressions = np.asarray(self.impressions, np.float64)
        plays = np.asarray(self.plays, np.float64)
        if ids.ndim != 1:
            raise ValueError(f"member_ids: expected (n,), got shape {ids.shape}")
        if impressions.ndim != 2 or impressions.shape[0] != ids.shape[0]:
            raise ValueError(f"impressions: expected ({ids.shape[0]}, themes), got shape {impressions.shape}")
        if plays.shape != impressions.shape:
            raise ValueError(f"plays: expected shape {impressions.shape}, got {plays.shape}")
        if ids.size and np.any(np.diff(ids) <= 0):
            raise ValueError("member_ids: expected strictly ascending ids")
        object.__setattr__(self, "member_ids", ids)
        object.__setattr__(self, "impressions", impressions)
        object.__setattr__(self, "plays", plays)
        object.__setattr__(self, "_rows", {int(m): i for i, m in enumerate(ids.tolist())})

    @classmethod
    def from_dict(cls, counts: Mapping[int, tuple[np.ndarray, np.ndarray]], n_themes: int) -> "MemberThemeCounts":
        ids = sorted(counts)
        impressions = np.zeros((len(ids), n_themes))
        plays = np.zeros((len(ids), n_themes))
        for row, member in enumerate(ids):
            impressions[row], plays[row] = counts[member]
        return cls(np.asarray(ids, np.int64), impressions, plays)

    def lookup(self, member_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        row = self._rows.get(int(member_id))
        return None if row is None else (self.impressions[row], self.plays[row])

    def __len__(self) -> int:
        return int(self.member_ids.shape[0])


@dataclass(frozen=True, eq=False)
class PublishedPolicy:
    """One version as a reader gets it."""

    version: int
    policy: Policy
    created_at: str
    metadata: dict
    member_counts: MemberThemeCounts | None
    path: Path


def version_dir_name(version: int) -> str:
    return f"v{version:06d}"


class PolicyStore:
    """Publish and read versioned policies under `root` (a directory of the home; the caller
    names it). Safe for many readers and several publishers (publishers serialise on a lock)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def pointer_path(self) -> Path:
        return self.root / POINTER

    def version_path(self, version: int) -> Path:
        return self.root / VERSIONS / version_dir_name(version)

    # -- writing -------------------------------------------------------------------------------

    def publish(self, policy: Policy, *, member_counts: MemberThemeCounts | None = None,
                metadata: Mapping[str, Any] | None = None) -> int:
        """Write `policy` (and the members' theme counts behind it) as the next version, point
        LATEST at it, set `policy.version` to it and return it."""
        state = policy.to_state()
        arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
        params = {k: _plain(k, v) for k, v in state.items() if k not in arrays and k not in _STATE_KEYS}
        if member_counts is not None:
            counts = dict(zip(_COUNT_ARRAYS, (member_counts.member_ids, member_counts.impressions,
                                              member_counts.plays)))
            clash = sorted(set(counts) & set(arrays))
            if clash:
                raise PolicyStoreError(f"policy array {clash[0]!r} clashes with the member counts' file name")
        else:
            counts = {}
        for name in [*arrays, *counts]:
            if not _NAME.match(name):
                raise PolicyStoreError(f"array name {name!r} is not a plain identifier")
        extra = json.loads(json.dumps(dict(metadata or {})))  # JSON values only; a copy
        self.root.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            version = (self._newest_on_disk() or 0) + 1
            final = self.version_path(version)
            stage = self.root / STAGING / f"{version_dir_name(version)}-{uuid.uuid4().hex[:8]}"
            stage.mkdir(parents=True)
            try:
                files = {}
                for name, array in [*arrays.items(), *counts.items()]:
                    files[f"{name}.npy"] = _write_npy(stage / f"{name}.npy", array)
                created_at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
                manifest = {
                    "format": MANIFEST_FORMAT, "policy": state["policy"], "version": version,
                    "dim": int(state["dim"]), "params": params, "created_at": created_at,
                    "arrays": sorted(arrays), "member_counts": bool(counts), "metadata": extra,
                    "files": files,
                }
                write_atomic(stage / MANIFEST, _json_bytes(manifest))
                final.parent.mkdir(parents=True, exist_ok=True)
                os.rename(stage, final)  # atomic; the number is ours under the lock
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            fsync_path(final.parent)
            pointer = {"version": version, "policy": state["policy"], "created_at": created_at}
            write_atomic(self.pointer_path, _json_bytes(pointer))
        policy.version = version
        return version

    def prune(self, keep: int, protect: Iterable[int] = ()) -> list[int]:
        """Remove all but the newest `keep` versions, never LATEST or one in `protect` (the
        version a learner's checkpoint resumes from); returns the removed versions."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep: expected an integer >= 1, got {keep!r}")
        removed = []
        with self._exclusive():
            versions = self.versions()
            spared = set(versions[-keep:]) | set(protect)
            latest = self.latest_version()
            if latest is not None:
                spared.add(latest)
            for version in versions:
                if version not in spared:
                    shutil.rmtree(self.version_path(version))
                    removed.append(version)
        return removed

    # -- reading -------------------------------------------------------------------------------

    def latest_version(self) -> int | None:
        """The version LATEST points at (None: nothing published): one small read, for polling."""
        try:
            raw = self.pointer_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            pointer = json.loads(raw)
            version = pointer["version"]
        except (ValueError, TypeError, KeyError):
            raise PolicyStoreError(f"{self.pointer_path}: not a policy pointer (expected JSON with a version)") from None
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise PolicyStoreError(f"{self.pointer_path}: version {version!r} is not an integer >= 1")
        return version

    def latest(self) -> tuple[int, Policy] | None:
        """(version, policy) LATEST points at, or None when nothing was published."""
        version = self.latest_version()
        if version is None:
            return None
        return version, self.load(version).policy

    def versions(self) -> list[int]:
        """Every complete version on disk, ascending."""
        folder = self.root / VERSIONS
        if not folder.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, version: int) -> PublishedPolicy:
        """One version, its files checked against the manifest's sha256."""
        path = self.version_path(version)
        manifest_path = path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except FileNotFoundError:
            raise PolicyStoreError(f"{manifest_path}: missing (version {version} is not in the store)") from None
        except ValueError as exc:
            raise PolicyStoreError(f"{manifest_path}: not valid JSON ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise PolicyStoreError(f"{manifest_path}: format {got!r}, expected {MANIFEST_FORMAT}")
        try:
            files, names = manifest["files"], manifest["arrays"]
            state: dict[str, Any] = {"policy": manifest["policy"], "version": manifest["version"],
                                     "dim": manifest["dim"], **manifest["params"]}
        except (KeyError, TypeError) as exc:
            raise PolicyStoreError(f"{manifest_path}: missing field {exc}") from None
        if manifest["version"] != version:
            raise PolicyStoreError(f"{manifest_path}: says version {manifest['version']!r}, its directory {version}")
        for name in names:
            state[name] = _read_npy(path, f"{name}.npy", files)
        try:
            policy = policy_from_state(state)
        except (ValueError, KeyError, TypeError) as exc:
            raise PolicyStoreError(f"{manifest_path}: does not describe a valid policy ({exc})") from None
        counts = None
        if manifest.get("member_counts"):
            arrays = [_read_npy(path, f"{name}.npy", files) for name in _COUNT_ARRAYS]
            try:
                counts = MemberThemeCounts(*arrays)
            except ValueError as exc:
                raise PolicyStoreError(f"{path}: member counts are inconsistent ({exc})") from None
        return PublishedPolicy(version, policy, manifest.get("created_at", ""), manifest.get("metadata", {}),
                               counts, path)

    # -- internals -----------------------------------------------------------------------------

    def _newest_on_disk(self) -> int | None:
        versions = self.versions()
        pointed = self.latest_version()
        return max([*versions[-1:], *([pointed] if pointed else [])], default=None)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The publishers' flock; under it, leftovers of a crashed publisher are removed."""
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            shutil.rmtree(self.root / STAGING, ignore_errors=True)
            yield
        finally:
            os.close(fd)


def _plain(key: str, value: Any) -> Any:
    """A policy parameter as JSON keeps it (numpy scalars become Python numbers)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise PolicyStoreError(f"policy state {key!r}: {type(value).__name__} is neither an array nor a JSON scalar")
    return value


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _write_npy(path: Path, array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    data = buffer.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def _read_npy(folder: Path, name: str, files: Mapping[str, str]) -> np.ndarray:
    path = folder / name
    expected = files.get(name) if isinstance(files, Mapping) else None
    if expected is None:
        raise PolicyStoreError(f"{folder / MANIFEST}: no sha256 for {name}")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyStoreError(f"{path}: missing") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise PolicyStoreError(f"{path}: sha256 differs from the manifest's (corrupt or replaced)")
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:  # includes "Object arrays cannot be loaded when allow_pickle=False"
        raise PolicyStoreError(f"{path}: not a plain .npy array ({exc})") from None
