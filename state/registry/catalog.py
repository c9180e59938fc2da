"""Which catalog a registry serves, and which catalog each version was trained on.

A model ranks the titles of the catalog it was trained on; serving it to another catalog's
members gives pages of wrong ids that look healthy. So the registry records the catalog it serves
in root/CATALOG (set by `marquee up` from the served dataset, or by the first promotion), and
promote / rollback refuse a version whose bundle names another catalog."""

from __future__ import annotations

from pathlib import Path

from marquee.durable import write_atomic
from models.bundle import (BUNDLE_DIR, LEGACY_PICKLE, BundleError, DatasetIdentity, mismatch_message,
                           read_dataset)
from state.registry.layout import RegistryError, json_bytes, now_iso, read_json_record

CATALOG = "CATALOG"


class CatalogMismatchError(RegistryError):
    """A version (or a dataset) of another catalog than the one this registry serves."""


class LegacyFormatError(RegistryError):
    """A version written in the previous format (a pickle): it can be listed, never served."""


def read_catalog(path: Path) -> DatasetIdentity | None:
    data = read_json_record(path, "catalog record")
    if data is None:
        return None
    try:
        return DatasetIdentity.from_dict({k: data.get(k) for k in ("name", "fingerprint", "titles")},
                                         f"{path}")
    except (BundleError, AttributeError) as exc:
        raise RegistryError(f"{path}: {exc}") from None


def write_catalog(path: Path, identity: DatasetIdentity, reason: str) -> None:
    write_atomic(path, json_bytes({**identity.to_dict(), "since": now_iso(), "reason": reason}))


def version_dataset(version: str, version_dir: Path, files: tuple[str, ...] | list[str]) -> DatasetIdentity:
    """The catalog a version was trained on, from its bundle manifest."""
    if any(name.startswith(f"{BUNDLE_DIR}/") for name in files):
        try:
            return read_dataset(version_dir / BUNDLE_DIR)
        except BundleError as exc:
            raise RegistryError(f"{version}: {exc}") from None
    if LEGACY_PICKLE in files:
        raise LegacyFormatError(
            f"{version} was written in the previous format ({LEGACY_PICKLE}) and cannot be served "
            "(a pickle can run code when loaded): retrain (`marquee retrain`) to register a bundle")
    raise RegistryError(f"{version} holds no model bundle ({BUNDLE_DIR}/manifest.json); it has {', '.join(files)}")


def check_same(version: str, trained: DatasetIdentity, served: DatasetIdentity | None, action: str) -> None:
    if served is not None and not trained.same_catalog(served):
        raise CatalogMismatchError(f"cannot {action} {version}: "
                                   + mismatch_message(version, trained, served, "this registry"))
