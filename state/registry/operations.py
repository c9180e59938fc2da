"""Changing a registry: register, promote, roll back, reject, gc, and binding the served catalog.

- A version becomes visible by one `os.rename` of a fully written, fsynced staging directory,
  so a half-written version is never visible.
- "promoted" is never stored in a manifest. It is derived from the PROMOTED pointer, which also
  carries the rollback chain, so one atomic rename changes both the serving version and what a
  rollback returns to; a crash can never leave two promoted versions. history.jsonl is written
  after the pointer and is for people: a lost history line is noted as "recovered" next time.
- Manifests store only "candidate" or "rejected"; "retired" (served once, not now) is derived.
- Promote and rollback accept only a version trained on the catalog the registry serves.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from marquee.durable import fsync_path, write_atomic
from models.bundle import DatasetIdentity
from state.registry import layout
from state.registry.catalog import CatalogMismatchError, check_same, version_dataset, write_catalog
from state.registry.layout import MANIFEST, ModelVersion, RegistryError, json_bytes, log, now_iso
from state.registry.locking import clean_staging, exclusive, staging, trash_name
from state.registry.reader import RegistryReader


class Registry(RegistryReader):
    """Versioned model artifacts under `root`. Safe to share between threads and processes on
    one host (every mutation holds an flock on root/.lock; readers need no lock because every
    visible change is a single rename). `read_only=True` never creates or changes a file."""

    def __init__(self, root: Path | str, *, read_only: bool = False):
        super().__init__(root)
        self.read_only = read_only
        if not read_only:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(exist_ok=True)

    def __repr__(self) -> str:
        return f"Registry({str(self.root)!r}{', read_only=True' if self.read_only else ''})"

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
        sources = layout.collect_files(files)
        metrics = layout.json_dict(metrics, "metrics")
        data_window = layout.json_dict(data_window, "data_window")
        if not isinstance(feature_schema_hash, str) or not feature_schema_hash:
            raise RegistryError(f"feature_schema_hash: expected a non-empty string, got {feature_schema_hash!r}")
        if parent is not None:
            parent = self._normalise(parent)
            if self._read_manifest(parent) is None:
                raise self._unknown(parent, what="parent")
        if not isinstance(notes, str):
            raise RegistryError(f"notes: expected a string, got {type(notes).__name__}")

        clean_staging(self.staging_dir)
        with staging(self.staging_dir) as stage:
            written = {name: layout.write_artifact(stage / name, source) for name, source in sources.items()}
            for directory in sorted({(stage / name).parent for name in sources}, key=lambda p: -len(p.parts)):
                fsync_path(directory)
            with self._locked():
                number = self._next_number()
                version = layout.version_name(number)
                manifest = layout.new_manifest(version, metrics=metrics, data_window=data_window,
                                               feature_schema_hash=feature_schema_hash, parent=parent,
                                               notes=notes, files=written)
                write_atomic(stage / MANIFEST, json_bytes(manifest))
                os.rename(stage, self.versions_dir / version)
                fsync_path(self.versions_dir)
                write_atomic(self.counter_path, f"{number}\n".encode())
                self._append_history("register", None, version, notes, parent=parent)
        log.info("registry %s: registered %s", self.root, version)
        return self.get(version)

    def promote(self, version: str | int, *, reason: str = "") -> ModelVersion:
        """Make `version` the serving one. Promoting the already promoted version is a no-op.
        Refused for a version of another catalog than the registry serves (the first promotion
        binds the registry to its version's catalog when nothing bound it before)."""
        self._writable()
        version = self._normalise(version)
        with self._locked():
            manifest = self._require(version)
            if manifest["status"] == "rejected":
                raise RegistryError(
                    f"cannot promote {version}: it was rejected ({manifest['rejection']['reason']!r}); "
                    "register a new candidate instead"
                )
            trained = self._dataset_of_manifest(manifest, "promote")
            served = self.catalog()
            check_same(version, trained, served, "promote")
            if served is None:
                self._bind(trained, f"first promotion ({version})")
            pointer = self._read_pointer()
            current = pointer.get("version")
            if current != version:
                chain = [v for v in pointer.get("chain", []) if v not in (version, current)]
                if current is not None:
                    chain.append(current)
                layout.write_pointer(self.pointer_path, version, chain)
                self._append_history("promote", current, version, reason)
        return self.get(version)

    def rollback(self, *, to: str | int | None = None, reason: str = "") -> ModelVersion:
        """Serve the version promoted before the current one (skipping rejected or removed ones),
        or `to`. The version rolled away from leaves the chain, so a second rollback goes further
        back instead of returning to it. A target of another catalog is refused."""
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
                if target == current:
                    self._require(target)
                    raise RegistryError(f"cannot roll back to {target}: it is the promoted version")
            manifest = self._require(target)
            if manifest["status"] == "rejected":
                raise RegistryError(f"cannot roll back to {target}: it was rejected ({manifest['rejection']['reason']!r})")
            check_same(target, self._dataset_of_manifest(manifest, "roll back to"), self.catalog(), "roll back to")
            chain = [v for v in pointer.get("chain", []) if v not in (target, current)]
            layout.write_pointer(self.pointer_path, target, chain)
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
                manifest["rejection"] = {"time": now_iso(), "reason": reason}
                write_atomic(self.versions_dir / version / MANIFEST, json_bytes(manifest))
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
            others = [v for v in layout.version_names(self.versions_dir) if v not in protected]
            doomed = others[: max(len(others) - keep, 0)]
            for version in doomed:
                trash = trash_name(self.staging_dir, version)
                os.rename(self.versions_dir / version, trash)
                shutil.rmtree(trash, ignore_errors=True)
            if doomed:
                fsync_path(self.versions_dir)
                self._append_history("gc", None, None, f"keep={keep}", removed=doomed)
        return doomed

    def bind_catalog(self, identity: DatasetIdentity, *, reason: str = "") -> DatasetIdentity:
        """Record the catalog this registry serves (`marquee up` does, from its dataset). Binding
        the same catalog again changes nothing; another one is refused: one home serves one
        catalog, and its versions rank that catalog's titles."""
        self._writable()
        with self._locked():
            served = self.catalog()
            if served is None:
                self._bind(identity, reason)
                return identity
            if not served.same_catalog(identity):
                raise CatalogMismatchError(
                    f"the registry at {self.root} serves {served.describe()}, not {identity.describe()}: "
                    "its models rank that catalog's titles; serve the other dataset from another home "
                    "(--home or MARQUEE_HOME)")
            return served

    # -- internals -----------------------------------------------------------------------------

    def _bind(self, identity: DatasetIdentity, reason: str) -> None:
        write_catalog(self.catalog_path, identity, reason)
        self._append_history("bind-catalog", None, None, reason, catalog=identity.to_dict())

    def _dataset_of_manifest(self, manifest: dict, action: str) -> DatasetIdentity:
        version = manifest["version"]
        try:
            return version_dataset(version, self.versions_dir / version, tuple(manifest["files"]))
        except RegistryError as exc:
            raise type(exc)(f"cannot {action} {version}: {exc}") from None

    def _next_number(self) -> int:
        """1 + the highest number ever seen: in versions/ or in LAST_VERSION (gc never frees one)."""
        highest = max((layout.version_number(v) for v in layout.version_names(self.versions_dir)), default=0)
        try:
            highest = max(highest, int(self.counter_path.read_text().strip() or 0))
        except FileNotFoundError:
            pass
        except ValueError:
            raise RegistryError(f"{self.counter_path}: not an integer; fix or delete it") from None
        return highest + 1

    def _append_history(self, action: str, from_: str | None, to: str | None, reason: str, **extra: Any) -> None:
        layout.append_history(self.history_path, action, from_, to, reason, **extra)

    def _recover_history(self) -> None:
        """Note a pointer change whose history line was lost in a crash (pointer is the truth)."""
        current = self._read_pointer().get("version")
        moves = self.history(("promote", "rollback", "recovered"))
        last = moves[-1]["to"] if moves else None
        if current is not None and current != last:
            self._append_history("recovered", last, current, "PROMOTED changed but its history line was lost (crash)")

    def _writable(self) -> None:
        if self.read_only:
            raise RegistryError(f"registry at {self.root} was opened read-only")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The registry's mutation lock, with crash leftovers of earlier holders cleared."""
        with exclusive(self.lock_path):
            self._recover_history()
            for stale in self.root.glob(".PROMOTED.*.tmp"):  # only lock holders write these
                stale.unlink(missing_ok=True)
            yield
