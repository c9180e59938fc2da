"""The registry's files: names, the version manifest, artifacts and their sha256, the PROMOTED
pointer and the audit history. Plain functions over paths; the mechanisms (locking, operations,
watching) are in the sibling modules."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from marquee.durable import write_atomic
from marquee.names import MODEL_VERSION_RE

log = logging.getLogger("state.registry")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
POINTER = "PROMOTED"
HISTORY = "history.jsonl"
COUNTER = "LAST_VERSION"
LOCK = ".lock"
STAGING = ".staging"
STATUSES = ("candidate", "promoted", "retired", "rejected")
CHAIN_LIMIT = 100  # rollback chain entries kept in the pointer
COPY_CHUNK = 1 << 20


class RegistryError(Exception):
    """Input or state the registry cannot accept; the message names what was wrong."""


class UnknownVersionError(RegistryError, KeyError):
    """A version that is not in the registry (KeyError-like, so `except KeyError` catches it)."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelVersion:
    """One registered version as callers see it; `status` is derived, never trusted from disk."""

    version: str  # "v0001", "v0002", ... (numeric order; see version_number)
    created: str  # ISO 8601, UTC
    metrics: dict  # e.g. {"ndcg@10": 0.17}
    data_window: dict  # {"start": iso, "end": iso, "dataset": path}
    feature_schema_hash: str
    parent: str | None  # the version serving when this one was trained to replace it
    status: str  # candidate | promoted | retired | rejected
    path: str  # directory holding the artifact files
    notes: str = ""
    files: tuple[str, ...] = ()
    rejected_reason: str | None = None

    @property
    def number(self) -> int:
        return version_number(self.version)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["files"] = list(self.files)
        return data


def version_name(number: int) -> str:
    return f"v{number:04d}"


def version_number(version: str) -> int:
    match = MODEL_VERSION_RE.match(version) if isinstance(version, str) else None
    if match is None:
        raise RegistryError(f"version {version!r}: expected 'v' followed by at least 4 digits, like 'v0001'")
    return int(match.group(1))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# -- artifacts -----------------------------------------------------------------------------------


def check_name(name: Any) -> str:
    """An artifact name: a relative POSIX path inside the version directory, not the manifest."""
    if not isinstance(name, str) or not name:
        raise RegistryError(f"files: artifact name {name!r} must be a non-empty string")
    path = PurePosixPath(name)
    parts = path.parts
    if path.is_absolute() or path.as_posix() != name or "\\" in name or ".." in parts:
        raise RegistryError(
            f"files: artifact name {name!r} must be a plain relative path (no leading '/', './', "
            "'..', '//', trailing '/' or '\\')"
        )
    if name == MANIFEST or parts[-1].startswith(".") and parts[-1].endswith(".tmp"):
        raise RegistryError(f"files: artifact name {name!r} is reserved by the registry")
    return name


def collect_files(files: Mapping[str, bytes | Path] | Path) -> dict[str, bytes | Path]:
    """Normalise register()'s `files` argument to {relative name: bytes or file Path}."""
    if isinstance(files, (str, os.PathLike)):
        source = Path(files)
        if source.is_file():
            return {source.name: source}
        if not source.is_dir():
            raise RegistryError(f"files: {source} is neither a file nor a directory")
        found = {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*")) if p.is_file()}
        if not found:
            raise RegistryError(f"files: directory {source} holds no files; nothing to register")
        return {check_name(name): path for name, path in found.items()}
    if not isinstance(files, Mapping):
        raise RegistryError(f"files: expected a dict of name -> bytes/Path or a Path, got {type(files).__name__}")
    if not files:
        raise RegistryError("files: no artifact files given; a version needs at least one file")
    out: dict[str, bytes | Path] = {}
    for name, value in files.items():
        check_name(name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            out[name] = bytes(value)
        elif isinstance(value, os.PathLike):
            path = Path(value)
            if not path.is_file():
                raise RegistryError(f"files[{name!r}]: {path} is not a file")
            out[name] = path
        else:
            raise RegistryError(
                f"files[{name!r}]: got {type(value).__name__}; pass bytes (the content) or a "
                "pathlib.Path (a file to copy)"
            )
    for name in out:
        for parent in PurePosixPath(name).parents:
            if str(parent) in out:
                raise RegistryError(f"files: {parent!s} is both a file and the directory of {name!r}")
    return out


def json_dict(value: Any, what: str) -> dict:
    if not isinstance(value, Mapping):
        raise RegistryError(f"{what}: expected a dict, got {type(value).__name__}")
    value = dict(value)
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what}: not JSON-serialisable ({exc})") from None
    return value


def write_artifact(path: Path, source: bytes | Path) -> dict[str, Any]:
    """Write one artifact (bytes, or a copy of a file), fsync it, return its size and sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(path, "wb") as out:
        if isinstance(source, bytes):
            out.write(source)
            digest.update(source)
            size = len(source)
        else:
            with open(source, "rb") as src:
                for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def verify_files(version: str, version_dir: Path, files: Mapping[str, Mapping[str, Any]]) -> None:
    """Check every artifact's sha256 against the manifest; raise RegistryError on a mismatch."""
    for name, meta in files.items():
        path = version_dir / name
        if not path.is_file():
            raise RegistryError(f"{version}: artifact {name!r} is missing")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(COPY_CHUNK), b""):
                digest.update(chunk)
        if digest.hexdigest() != meta["sha256"]:
            raise RegistryError(f"{version}: artifact {name!r} does not match its sha256 in the manifest")


# -- manifests -----------------------------------------------------------------------------------


def read_json_record(path: Path, what: str) -> Any:
    """A registry JSON file, or None when it does not exist; unreadable JSON is a RegistryError."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: unreadable {what} ({exc})") from None


def read_manifest(versions_dir: Path, version: str) -> dict | None:
    """A version's manifest, or None when the version is not (or no longer) visible."""
    path = versions_dir / version / MANIFEST
    manifest = read_json_record(path, "manifest")
    if manifest is None:
        return None
    if manifest.get("version") != version:
        raise RegistryError(f"{path}: manifest names {manifest.get('version')!r}, not {version}")
    return manifest


def new_manifest(version: str, *, metrics: dict, data_window: dict, feature_schema_hash: str,
                 parent: str | None, notes: str, files: dict) -> dict:
    return {
        "format": MANIFEST_FORMAT,
        "version": version,
        "created": now_iso(),
        "metrics": metrics,
        "data_window": data_window,
        "feature_schema_hash": feature_schema_hash,
        "parent": parent,
        "notes": notes,
        "status": "candidate",
        "files": files,
        "rejection": None,
    }


def version_names(versions_dir: Path) -> list[str]:
    try:
        names = [p.name for p in versions_dir.iterdir() if MODEL_VERSION_RE.match(p.name)]
    except FileNotFoundError:
        return []
    return sorted(names, key=version_number)


# -- the PROMOTED pointer ------------------------------------------------------------------------


def read_pointer(path: Path) -> dict:
    """{'version', 'since', 'chain'} or {} when nothing was ever promoted."""
    try:
        pointer = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: unreadable pointer ({exc})") from None
    if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
        raise RegistryError(f"{path}: expected {{'version': ...}}, got {pointer!r}")
    return pointer


def write_pointer(path: Path, version: str, chain: list[str]) -> None:
    pointer = {"version": version, "since": now_iso(), "chain": chain[-CHAIN_LIMIT:]}
    write_atomic(path, json_bytes(pointer))


# -- the audit history ---------------------------------------------------------------------------


def read_history(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash mid-append
            log.warning("registry history %s: skipping unreadable line %d", path, number)
    return entries


def append_history(path: Path, action: str, from_: str | None, to: str | None, reason: str, **extra: Any) -> None:
    entry = {"time": now_iso(), "action": action, "from": from_, "to": to, "reason": reason, **extra}
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    with open(path, "ab+") as fh:
        fh.seek(0, os.SEEK_END)
        if fh.tell() > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":  # a torn last line: start ours on a fresh one
                line = b"\n" + line
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())
