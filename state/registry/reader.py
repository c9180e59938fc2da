"""Reading a registry: versions with their derived status, the promoted version, the history,
artifacts and their verification. Readers take no lock: every visible change is one rename."""

from __future__ import annotations

from pathlib import Path

from models.bundle import DatasetIdentity
from state.registry import layout
from state.registry.catalog import CATALOG, read_catalog, version_dataset
from state.registry.layout import MANIFEST, ModelVersion, RegistryError, UnknownVersionError
from state.registry.watch import wait_for_change


class RegistryReader:
    """A read-only view of the registry under `root` (creates nothing)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.versions_dir = self.root / "versions"
        self.staging_dir = self.root / layout.STAGING
        self.pointer_path = self.root / layout.POINTER
        self.history_path = self.root / layout.HISTORY
        self.counter_path = self.root / layout.COUNTER
        self.lock_path = self.root / layout.LOCK
        self.catalog_path = self.root / CATALOG

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
        for version in layout.version_names(self.versions_dir):
            manifest = self._read_manifest(version)
            if manifest is not None:
                out.append(self._to_model_version(manifest, pointer, served))
        return out

    def versions(self) -> list[str]:
        """Visible version names, ascending (cheaper than list())."""
        return [v for v in layout.version_names(self.versions_dir) if (self.versions_dir / v / MANIFEST).is_file()]

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
        actions). Actions: register, promote, rollback, reject, gc, recovered, bind-catalog."""
        entries = layout.read_history(self.history_path)
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
        manifest = self._require(version)
        layout.verify_files(version, self.versions_dir / version, manifest["files"])

    def watch(self, since_version: str | None, timeout_s: float = 0.0, poll_s: float = 0.05) -> str | None:
        """Wait up to `timeout_s` for the promoted version to differ from `since_version`; return
        the promoted version (unchanged after a timeout)."""
        return wait_for_change(self.promoted_version, since_version, timeout_s, poll_s)

    # -- catalogs ------------------------------------------------------------------------------

    def catalog(self) -> DatasetIdentity | None:
        """The catalog this registry serves (root/CATALOG), or None before it is bound."""
        return read_catalog(self.catalog_path)

    def dataset_of(self, version: str | int) -> DatasetIdentity:
        """The catalog `version` was trained on (LegacyFormatError for a previous-format version)."""
        model = self.get(version)
        return version_dataset(model.version, Path(model.path), model.files)

    def why_not_servable(self) -> str | None:
        """Why the promoted version cannot serve this registry's catalog, or None when it can:
        nothing promoted, a previous-format version, or another catalog (`marquee up` retrains)."""
        version = self.promoted_version()
        if version is None:
            return "no version is promoted"
        try:
            trained = self.dataset_of(version)
        except RegistryError as exc:
            return str(exc)
        served = self.catalog()
        if served is not None and not trained.same_catalog(served):
            return f"{version} was trained on {trained.describe()}, not the served {served.describe()}"
        return None

    # -- internals -----------------------------------------------------------------------------

    def _normalise(self, version: str | int) -> str:
        if isinstance(version, int) and not isinstance(version, bool):
            if version < 1:
                raise RegistryError(f"version {version}: numbers start at 1")
            return layout.version_name(version)
        layout.version_number(version)  # validates the shape
        return version

    def _read_manifest(self, version: str) -> dict | None:
        return layout.read_manifest(self.versions_dir, version)

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

    def _read_pointer(self) -> dict:
        return layout.read_pointer(self.pointer_path)

    def _rollback_target(self, pointer: dict) -> str | None:
        for version in reversed(pointer.get("chain", [])):
            manifest = self._read_manifest(version)
            if manifest is not None and manifest["status"] != "rejected":
                return version
        return None

    def _ever_promoted(self) -> set[str]:
        return {e["to"] for e in self.history() if e.get("action") in ("promote", "rollback", "recovered")}
