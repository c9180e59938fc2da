"""Model registry: versioned model artifacts on disk, promote / rollback / reject, atomic writes,
and the catalog the registry serves.

The retraining job registers candidates and promotes them after a quality gate; serving replicas
watch the promoted version and hot-swap. Everything lives in plain files so any process can open
the same root (read-only or not) and a restarted process loses nothing.

Layout under `root`:

    versions/v0001/manifest.json + artifact files   one directory per version, never edited
                                                     except manifest.json (reject), atomically;
                                                     a model is a bundle under model/ (models/bundle.py)
    PROMOTED                                         JSON pointer: the serving version and the
                                                     chain of versions it replaced (the truth)
    CATALOG                                          the catalog served: name + fingerprint
    history.jsonl                                    audit log, one JSON object per action
    LAST_VERSION                                     highest number ever allocated (no reuse)
    .lock                                            fcntl lock serialising every mutation
    .staging/<id>/ + <id>.lock                       registrations in progress

Modules, one mechanism each: layout (the files and their formats, sha256 verification), locking
(the mutation lock and staging directories), reader (read-only view), operations (register,
promote, rollback, reject, gc, bind_catalog), catalog (which catalog a version and the registry
belong to), watch (the long-poll on PROMOTED).
"""

from state.registry.catalog import CATALOG, CatalogMismatchError, LegacyFormatError
from state.registry.layout import (MANIFEST, POINTER as POINTER_FILE, STATUSES, ModelVersion, RegistryError, UnknownVersionError,
                                   version_name, version_number)
from state.registry.operations import Registry
from state.registry.reader import RegistryReader

__all__ = [
    "CATALOG", "MANIFEST", "POINTER_FILE", "STATUSES", "CatalogMismatchError", "LegacyFormatError", "ModelVersion",
    "Registry", "RegistryError", "RegistryReader", "UnknownVersionError", "version_name", "version_number",
]
