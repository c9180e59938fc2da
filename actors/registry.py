"""Model registry: versioned model artifacts on disk, promote / rollback / reject, atomic writes.

Part 2's retraining job registers candidates and promotes them after a quality gate; Part 3's
serving replicas watch the promoted version and hot-swap. Everything lives in plain files so any
process can open the same root (read-only or not) and a restarted actor loses nothing.

Layout under `root`:

    versions/v0001/manifest.json + artifact files   one directory per version, never edited
                                                     except manifest.json (reject), atomically
    PROMOTED                                         JSON pointer: the serving version and the
                                                     chain of versions it replaced (the truth)
    history.jsonl                                    audit log, one JSON object per action
    LAST_VERSION                                     highest number ever allocated (no reuse)
    .lock                                            fcntl lock serialising every mutation
    .staging/<id>/ + <id>.lock                       registrations in progress

Why this shape:
- A version becomes visible by one `os.rename` of a fully written, fsynced staging directory,
  so a half-written version is never visible. The staging directory's owner holds an flock on
  `<id>.lock`; a leftover whose lock can be taken belongs to a dead process and is removed.
- "promoted" is never stored in a manifest. It is derived from the PROMOTED pointer, which also
  carries the rollback chain, so one atomic rename changes both the serving version and what a
  rollback returns to; a crash can never leave two promoted versions. history.jsonl is written
  after the pointer and is for people: a lost history line is noted as "recovered" next time.
- Manifests store only "candidate" or "rejected"; "retired" (served once, not now) is derived.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Mapping

from actors.named import lazy_remote, start_bound_actor
from marquee.durable import fsync_path, write_atomic

log = logging.getLogger(__name__)

ACTOR_NAME = "marquee-registry"
NAMESPACE = "marquee"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
STATUSES = ("candidate", "promoted", "retired", "rejected")
CHAIN_LIMIT = 100  # rollback chain entries kept in the pointer
_VERSION_RE = re.compile(r"^v(\d{4,})$")
_COPY_CHUNK = 1 << 20


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
    match = _VERSION_RE.match(version) if isinstance(version, str) else None
    if match is None:
        raise RegistryError(f"version {version!r}: expected 'v' followed by at least 4 digits, like 'v0001'")
    return int(match.group(1))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------
# Small durable-file helpers
# ---------------------------------------------------------------------------------------------


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


def _check_name(name: Any) -> str:
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


def _collect_files(files: Mapping[str, bytes | Path] | Path) -> dict[str, bytes | Path]:
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
        return {_check_name(name): path for name, path in found.items()}
    if not isinstance(files, Mapping):
        raise RegistryError(f"files: expected a dict of name -> bytes/Path or a Path, got {type(files).__name__}")
    if not files:
        raise RegistryError("files: no artifact files given; a version needs at least one file")
    out: dict[str, bytes | Path] = {}
    for name, value in files.items():
        _check_name(name)
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


def _json_dict(value: Any, what: str) -> dict:
    if not isinstance(value, Mapping):
        raise RegistryError(f"{what}: expected a dict, got {type(value).__name__}")
    value = dict(value)
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what}: not JSON-serialisable ({exc})") from None
    return value


# ---------------------------------------------------------------------------------------------
# The plain registry (no Ray)
# ---------------------------------------------------------------------------------------------


class Registry:
    """Versioned model artifacts under `root`. Safe to share between threads and processes on
    one host (every mutation holds an flock on root/.lock; readers need no lock because every
    visible change is a single rename). `read_only=True` never creates or changes a file."""

    def __init__(self, root: Path | str, *, read_only: bool = False):
        self.root = Path(root)
        self.read_only = read_only
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / ".staging"
        self.pointer_path = self.root / "PROMOTED"
        self.history_path = self.root / "history.jsonl"
        self.counter_path = self.root / "LAST_VERSION"
        self.lock_path = self.root / ".lock"
        if not read_only:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(exist_ok=True)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r}{', read_only=True' if self.read_only else ''})"

    # -- reading -------------------------------------------------------------------------------

    def get(self, version: str | int) -> ModelVersion:
        version = self._normalise(version)
        manifest = self._read_manifest(version)
        if manifest is None:
            raise self._unknown(version)
        return self._to_model_version(manifest, self._read_pointer(), self._ever_promoted())

    def list(self) -> list[ModelVersion]:
        """Every visible version, ascending by number (staging leftovers are invisible)."""
        pointer, served = self._read_pointer(), self._ever_promoted()
        out = []
        for version in self._version_names():
            manifest = self._read_manifest(version)
            if manifest is not None:
                out.append(self._to_model_version(manifest, pointer, served))
        return out

    def versions(self) -> list[str]:
        """Visible version names, ascending (cheaper than list())."""
        return [v for v in self._version_names() if (self.versions_dir / v / MANIFEST).is_file()]

    def promoted_version(self) -> str | None:
        """The serving version's name, from the pointer alone: what replicas poll."""
        return self._read_pointer().get("version")

    def promoted(self) -> ModelVersion | None:
        version = self.promoted_version()
        if version is None:
            return None
        try:
            return self.get(version)
        except UnknownVersionError:
            raise RegistryError(
                f"PROMOTED names {version}, but {self.versions_dir / version} is missing; "
                "the registry directory was altered by hand"
            ) from None

    def rollback_target(self) -> str | None:
        """The version `rollback()` would return to, or None."""
        return self._rollback_target(self._read_pointer())

    def history(self, actions: tuple[str, ...] | list[str] | None = None) -> list[dict]:
        """Audit entries, oldest first: {time, action, from, to, reason} (+ extra keys for some
        actions). Actions: register, promote, rollback, reject, gc, recovered."""
        entries = self._read_history()
        if actions is not None:
            entries = [e for e in entries if e.get("action") in set(actions)]
        return entries

    def artifact_path(self, version: str | int, name: str) -> Path:
        model = self.get(version)
        if name not in model.files:
            raise RegistryError(f"{model.version} has no artifact {name!r}; it has {', '.join(model.files)}")
        return Path(model.path) / name

    def read_artifact(self, version: str | int, name: str) -> bytes:
        return self.artifact_path(version, name).read_bytes()

    def verify(self, version: str | int) -> None:
        """Check every artifact's size and sha256 against the manifest; raise on a mismatch."""
        version = self._normalise(version)
        manifest = self._read_manifest(version)
        if manifest is None:
            raise self._unknown(version)
        for name, meta in manifest["files"].items():
            path = self.versions_dir / version / name
            if not path.is_file():
                raise RegistryError(f"{version}: artifact {name!r} is missing")
            digest = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(_COPY_CHUNK), b""):
                    digest.update(chunk)
            if digest.hexdigest() != meta["sha256"]:
                raise RegistryError(f"{version}: artifact {name!r} does not match its sha256 in the manifest")

    def watch(self, since_version: str | None, timeout_s: float = 0.0, poll_s: float = 0.05) -> str | None:
        """Wait up to `timeout_s` for the promoted version to differ from `since_version`; return
        the promoted version (unchanged after a timeout). A long-poll for serving replicas."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            current = self.promoted_version()
            if current != since_version or time.monotonic() >= deadline:
                return current
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))

    # -- writing -------------------------------------------------------------------------------

    def register(
        self,
        files: Mapping[str, bytes | Path] | Path,
        *,
        metrics: Mapping[str, Any],
        data_window: Mapping[str, Any],
        feature_schema_hash: str,
        parent: str | None = None,
        notes: str = "",
    ) -> ModelVersion:
        """Store a new candidate version. `files` is {name: bytes | Path} or a Path (a file, or a
        directory copied recursively). Artifacts are written and fsynced into a private staging
        directory outside the lock; the version number is allocated and the directory renamed
        into versions/ under the lock, so concurrent registrations never collide."""
        self._writable()
        sources = _collect_files(files)
        metrics = _json_dict(metrics, "metrics")
        data_window = _json_dict(data_window, "data_window")
        if not isinstance(feature_schema_hash, str) or not feature_schema_hash:
            raise RegistryError(f"feature_schema_hash: expected a non-empty string, got {feature_schema_hash!r}")
        if parent is not None:
            parent = self._normalise(parent)
            if self._read_manifest(parent) is None:
                raise self._unknown(parent, what="parent")
        if not isinstance(notes, str):
            raise RegistryError(f"notes: expected a string, got {type(notes).__name__}")

        self._clean_staging()
        with self._staging() as stage:
            written = {name: _write_artifact(stage / name, source) for name, source in sources.items()}
            for directory in sorted({(stage / name).parent for name in sources}, key=lambda p: -len(p.parts)):
                fsync_path(directory)
            with self._locked():
                number = self._next_number()
                version = version_name(number)
                manifest = {
                    "format": MANIFEST_FORMAT,
                    "version": version,
                    "created": _now(),
                    "metrics": metrics,
                    "data_window": data_window,
                    "feature_schema_hash": feature_schema_hash,
                    "parent": parent,
                    "notes": notes,
                    "status": "candidate",
                    "files": written,
                    "rejection": None,
                }
                write_atomic(stage / MANIFEST, _json_bytes(manifest))
                os.rename(stage, self.versions_dir / version)
                fsync_path(self.versions_dir)
                write_atomic(self.counter_path, f"{number}\n".encode())
                self._append_history("register", None, version, notes, parent=parent)
        log.info("registry %s: registered %s", self.root, version)
        return self.get(version)

    def promote(self, version: str | int, *, reason: str = "") -> ModelVersion:
        """Make `version` the serving one. Promoting the already promoted version is a no-op."""
        self._writable()
        version = self._normalise(version)
        with self._locked():
            manifest = self._require(version)
            if manifest["status"] == "rejected":
                raise RegistryError(
                    f"cannot promote {version}: it was rejected ({manifest['rejection']['reason']!r}); "
                    "register a new candidate instead"
                )
            pointer = self._read_pointer()
            current = pointer.get("version")
            if current != version:
                chain = [v for v in pointer.get("chain", []) if v not in (version, current)]
                if current is not None:
                    chain.append(current)
                self._write_pointer(version, chain)
                self._append_history("promote", current, version, reason)
        return self.get(version)

    def rollback(self, *, to: str | int | None = None, reason: str = "") -> ModelVersion:
        """Serve the version promoted before the current one (skipping rejected or removed ones),
        or `to`. The version rolled away from leaves the chain, so a second rollback goes further
        back instead of returning to it."""
        self._writable()
        with self._locked():
            pointer = self._read_pointer()
            current = pointer.get("version")
            if current is None:
                raise RegistryError("cannot roll back: no version is promoted")
            if to is None:
                target = self._rollback_target(pointer)
                if target is None:
                    raise RegistryError(
                        f"cannot roll back from {current}: no earlier promoted version is left "
                        "(give `to=` explicitly)"
                    )
            else:
                target = self._normalise(to)
                manifest = self._require(target)
                if target == current:
                    raise RegistryError(f"cannot roll back to {target}: it is the promoted version")
                if manifest["status"] == "rejected":
                    raise RegistryError(f"cannot roll back to {target}: it was rejected ({manifest['rejection']['reason']!r})")
            chain = [v for v in pointer.get("chain", []) if v not in (target, current)]
            self._write_pointer(target, chain)
            self._append_history("rollback", current, target, reason)
        return self.get(target)

    def reject(self, version: str | int, reason: str) -> ModelVersion:
        """Mark a version refused (by the quality gate); it can never be promoted. Rejecting an
        already rejected version changes nothing; rejecting the promoted one is an error."""
        self._writable()
        version = self._normalise(version)
        if not isinstance(reason, str) or not reason.strip():
            raise RegistryError("reject: give a non-empty reason")
        with self._locked():
            manifest = self._require(version)
            if self._read_pointer().get("version") == version:
                raise RegistryError(f"cannot reject {version}: it is promoted; roll back or promote another first")
            if manifest["status"] != "rejected":
                manifest["status"] = "rejected"
                manifest["rejection"] = {"time": _now(), "reason": reason}
                write_atomic(self.versions_dir / version / MANIFEST, _json_bytes(manifest))
                self._append_history("reject", None, version, reason)
        return self.get(version)

    def gc(self, keep: int = 10) -> list[str]:
        """Remove old versions: the promoted one and its rollback target are always kept, plus the
        newest `keep` of the others. Returns the removed names (ascending). Each removal is a
        rename out of versions/ first, so a half-deleted version is never visible."""
        self._writable()
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
            raise RegistryError(f"gc: keep must be an integer >= 0, got {keep!r}")
        with self._locked():
            pointer = self._read_pointer()
            protected = {pointer.get("version"), self._rollback_target(pointer)}
            others = [v for v in self._version_names() if v not in protected]
            doomed = others[: max(len(others) - keep, 0)]
            for version in doomed:
                trash = self.staging_dir / f"gc-{version}-{uuid.uuid4().hex[:8]}"
                os.rename(self.versions_dir / version, trash)
                shutil.rmtree(trash, ignore_errors=True)
            if doomed:
                fsync_path(self.versions_dir)
                self._append_history("gc", None, None, f"keep={keep}", removed=doomed)
        return doomed

    # -- internals: versions and manifests ------------------------------------------------------

    def _version_names(self) -> list[str]:
        try:
            names = [p.name for p in self.versions_dir.iterdir() if _VERSION_RE.match(p.name)]
        except FileNotFoundError:
            return []
        return sorted(names, key=version_number)

    def _normalise(self, version: str | int) -> str:
        if isinstance(version, int) and not isinstance(version, bool):
            if version < 1:
                raise RegistryError(f"version {version}: numbers start at 1")
            return version_name(version)
        version_number(version)  # validates the shape
        return version

    def _read_manifest(self, version: str) -> dict | None:
        path = self.versions_dir / version / MANIFEST
        try:
            manifest = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path}: unreadable manifest ({exc})") from None
        if manifest.get("version") != version:
            raise RegistryError(f"{path}: manifest names {manifest.get('version')!r}, not {version}")
        return manifest

    def _require(self, version: str) -> dict:
        manifest = self._read_manifest(version)
        if manifest is None:
            raise self._unknown(version)
        return manifest

    def _unknown(self, version: str, what: str = "version") -> UnknownVersionError:
        known = self.versions()
        listed = ", ".join(known) if len(known) <= 20 else ", ".join(known[:5] + ["..."] + known[-10:])
        return UnknownVersionError(f"{what} {version} is not in the registry at {self.root} (known: {listed or 'none'})")

    def _to_model_version(self, manifest: dict, pointer: dict, served: set[str]) -> ModelVersion:
        version = manifest["version"]
        if pointer.get("version") == version:
            status = "promoted"
        elif manifest["status"] == "rejected":
            status = "rejected"
        elif version in served or version in pointer.get("chain", []):
            status = "retired"
        else:
            status = "candidate"
        rejection = manifest.get("rejection") or {}
        return ModelVersion(
            version=version,
            created=manifest["created"],
            metrics=manifest["metrics"],
            data_window=manifest["data_window"],
            feature_schema_hash=manifest["feature_schema_hash"],
            parent=manifest["parent"],
            status=status,
            path=str(self.versions_dir / version),
            notes=manifest.get("notes", ""),
            files=tuple(manifest["files"]),
            rejected_reason=rejection.get("reason"),
        )

    def _next_number(self) -> int:
        """1 + the highest number ever seen: in versions/ or in LAST_VERSION (gc never frees one)."""
        highest = max((version_number(v) for v in self._version_names()), default=0)
        try:
            highest = max(highest, int(self.counter_path.read_text().strip() or 0))
        except FileNotFoundError:
            pass
        except ValueError:
            raise RegistryError(f"{self.counter_path}: not an integer; fix or delete it") from None
        return highest + 1

    # -- internals: pointer and history ----------------------------------------------------------

    def _read_pointer(self) -> dict:
        try:
            pointer = json.loads(self.pointer_path.read_text())
        except FileNotFoundError:
            return {}
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{self.pointer_path}: unreadable pointer ({exc})") from None
        if not isinstance(pointer, dict) or not isinstance(pointer.get("version"), str):
            raise RegistryError(f"{self.pointer_path}: expected {{'version': ...}}, got {pointer!r}")
        return pointer

    def _write_pointer(self, version: str, chain: list[str]) -> None:
        pointer = {"version": version, "since": _now(), "chain": chain[-CHAIN_LIMIT:]}
        write_atomic(self.pointer_path, _json_bytes(pointer))

    def _rollback_target(self, pointer: dict) -> str | None:
        for version in reversed(pointer.get("chain", [])):
            manifest = self._read_manifest(version)
            if manifest is not None and manifest["status"] != "rejected":
                return version
        return None

    def _read_history(self) -> list[dict]:
        try:
            text = self.history_path.read_text()
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a crash mid-append
                log.warning("registry %s: skipping unreadable history line %d", self.root, number)
        return entries

    def _ever_promoted(self) -> set[str]:
        return {e["to"] for e in self._read_history() if e.get("action") in ("promote", "rollback", "recovered")}

    def _append_history(self, action: str, from_: str | None, to: str | None, reason: str, **extra: Any) -> None:
        entry = {"time": _now(), "action": action, "from": from_, "to": to, "reason": reason, **extra}
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        with open(self.history_path, "ab+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":  # a torn last line: start ours on a fresh one
                    line = b"\n" + line
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())

    def _recover_history(self) -> None:
        """Note a pointer change whose history line was lost in a crash (pointer is the truth)."""
        current = self._read_pointer().get("version")
        moves = self.history(("promote", "rollback", "recovered"))
        last = moves[-1]["to"] if moves else None
        if current is not None and current != last:
            self._append_history("recovered", last, current, "PROMOTED changed but its history line was lost (crash)")

    # -- internals: locking and staging ---------------------------------------------------------

    def _writable(self) -> None:
        if self.read_only:
            raise RegistryError(f"registry at {self.root} was opened read-only")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive flock on root/.lock for the whole mutation. flock belongs to the open file,
        not the process, so each call's own open() also excludes other threads of this process.
        Never nest: a second _locked() in the same thread would wait for itself."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._recover_history()
            for stale in self.root.glob(".PROMOTED.*.tmp"):  # only lock holders write these
                stale.unlink(missing_ok=True)
            yield
        finally:
            os.close(fd)  # releases the flock

    @contextmanager
    def _staging(self) -> Iterator[Path]:
        """A private staging directory whose lock file this process holds until it is renamed
        away (success) or removed (failure); a crash releases the lock and leaves it to
        `_clean_staging`."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        while True:
            name = f"{os.getpid()}-{uuid.uuid4().hex}"
            lock_path = self.staging_dir / f"{name}.lock"
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a cleaner removed it between create and lock: take a new name
        stage = self.staging_dir / name
        try:
            stage.mkdir()
            yield stage
        finally:
            shutil.rmtree(stage, ignore_errors=True)  # gone already after a successful rename
            lock_path.unlink(missing_ok=True)
            os.close(fd)

    def _clean_staging(self) -> None:
        """Remove staging leftovers of dead writers (their lock can be taken) and gc trash."""
        try:
            entries = list(self.staging_dir.iterdir())
        except FileNotFoundError:
            return
        for entry in entries:
            if entry.name.endswith(".lock"):
                try:
                    fd = os.open(entry, os.O_RDWR)
                except FileNotFoundError:
                    continue
                try:
                    if _try_lock(fd):
                        shutil.rmtree(self.staging_dir / entry.name[: -len(".lock")], ignore_errors=True)
                        entry.unlink(missing_ok=True)
                        log.info("registry %s: removed staging leftover %s", self.root, entry.stem)
                finally:
                    os.close(fd)
            elif entry.is_dir() and not (self.staging_dir / f"{entry.name}.lock").exists():
                shutil.rmtree(entry, ignore_errors=True)  # gc trash, or a dir without an owner


def _write_artifact(path: Path, source: bytes | Path) -> dict[str, Any]:
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
                for chunk in iter(lambda: src.read(_COPY_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


# ---------------------------------------------------------------------------------------------
# Ray wrapper
# ---------------------------------------------------------------------------------------------


class _RegistryActorImpl:
    """The body of RegistryActor: a Registry on a root directory. It holds no state of its own,
    so a restart loses nothing; it runs threaded so a waiting `watch` never blocks promotes."""

    def __init__(self, root: str):
        self._registry = Registry(root)

    def root(self) -> str:
        return str(self._registry.root)

    def register(self, files: dict[str, bytes] | str, **kw: Any) -> ModelVersion:
        if isinstance(files, str):
            files = Path(files)
        return self._registry.register(files, **kw)

    def get(self, version: str | int) -> ModelVersion:
        return self._registry.get(version)

    def list(self) -> list[ModelVersion]:
        return self._registry.list()

    def promoted(self) -> ModelVersion | None:
        return self._registry.promoted()

    def promoted_version(self) -> str | None:
        return self._registry.promoted_version()

    def watch(self, since_version: str | None, timeout_s: float = 10.0) -> str | None:
        return self._registry.watch(since_version, timeout_s=min(timeout_s, 60.0))

    def promote(self, version: str | int, reason: str = "") -> ModelVersion:
        return self._registry.promote(version, reason=reason)

    def rollback(self, to: str | int | None = None, reason: str = "") -> ModelVersion:
        return self._registry.rollback(to=to, reason=reason)

    def reject(self, version: str | int, reason: str) -> ModelVersion:
        return self._registry.reject(version, reason)

    def history(self, actions: list[str] | None = None) -> list[dict]:
        return self._registry.history(actions)

    def artifact_path(self, version: str | int, name: str) -> str:
        return str(self._registry.artifact_path(version, name))

    def read_artifact(self, version: str | int, name: str) -> bytes:
        """For a process on another node without the registry's disk."""
        return self._registry.read_artifact(version, name)

    def gc(self, keep: int = 10) -> list[str]:
        return self._registry.gc(keep)

    def pid(self) -> int:
        """The worker process id, so chaos tests can kill it."""
        return os.getpid()


# Calls that may run twice without harm are retried across an actor restart (so a caller never
# notices one); register and rollback are not (a retry could add a version or roll back twice),
# nor gc (a retry would report an empty removal list).
_RETRY_SAFE = (
    "root", "get", "list", "promoted", "promoted_version", "watch", "history",
    "artifact_path", "read_artifact", "promote", "reject", "pid",
)


def _build_remote_class():
    import ray

    for method in _RETRY_SAFE:  # ray.method only tags the function; it stays callable as is
        ray.method(max_task_retries=-1)(getattr(_RegistryActorImpl, method))
    return ray.remote(num_cpus=0, max_concurrency=16)(_RegistryActorImpl)


_remote_class = lazy_remote(_build_remote_class)


def __getattr__(name: str):
    if name == "RegistryActor":
        return _remote_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def start_registry(
    root: Path | str | None = None,
    lifetime: str | None = None,
    *,
    name: str = ACTOR_NAME,
    namespace: str = NAMESPACE,
):
    """Get or create the named registry actor (num_cpus=0; restarts forever, rebuilding from
    disk). `lifetime` is None (dies with the driver) or "detached". Raises if an actor of that
    name already serves another root. Reads, promote and reject are retried across a restart;
    register, rollback and gc are not (not idempotent): a caller that gets RayActorError from
    one should re-read list() / promoted_version() before trying again."""
    if root is None:
        from marquee.home import Paths

        root = Paths().registry
    return start_bound_actor(_remote_class(), root, name=name, namespace=namespace,
                             lifetime=lifetime, error=RegistryError)


# ---------------------------------------------------------------------------------------------
# CLI (`marquee registry ...` once cli.py wires it)
# ---------------------------------------------------------------------------------------------


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=None, help="registry root (default: MARQUEE_HOME/registry)")
    sub = parser.add_subparsers(dest="registry_command", required=True)
    sub.add_parser("list", help="every version with its status and metrics")
    sub.add_parser("history", help="the audit log")
    promote = sub.add_parser("promote", help="serve a version")
    promote.add_argument("version")
    promote.add_argument("--reason", default="")
    rollback = sub.add_parser("rollback", help="serve the previously promoted version (or --to)")
    rollback.add_argument("--to", default=None)
    rollback.add_argument("--reason", default="")
    reject = sub.add_parser("reject", help="refuse a candidate")
    reject.add_argument("version")
    reject.add_argument("--reason", required=True)
    gc = sub.add_parser("gc", help="remove old versions")
    gc.add_argument("--keep", type=int, default=10)


def cli_main(args: argparse.Namespace) -> int:
    from marquee.home import Paths

    command = args.registry_command
    registry = Registry(args.root or Paths().registry, read_only=command in ("list", "history"))
    try:
        if command == "list":
            for m in registry.list():
                print(json.dumps({"version": m.version, "status": m.status, "created": m.created, "metrics": m.metrics}))
        elif command == "history":
            for entry in registry.history():
                print(json.dumps(entry))
        elif command == "promote":
            print(registry.promote(args.version, reason=args.reason).version)
        elif command == "rollback":
            print(registry.rollback(to=args.to, reason=args.reason).version)
        elif command == "reject":
            print(registry.reject(args.version, args.reason).version)
        elif command == "gc":
            print(json.dumps(registry.gc(args.keep)))
    except RegistryError as exc:
        print(f"marquee registry: {exc}", file=sys.stderr)
        return 2
    return 0
