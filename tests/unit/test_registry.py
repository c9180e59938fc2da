"""The plain model registry: versions, promote/rollback/reject, gc, and atomicity under crashes.

Crashes are real where it matters: a forked child dies with os._exit (no cleanup runs, its locks
are released by the kernel) at the exact step under test."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from bundle_fakes import MOVIELENS, WORLD, manifest_only
from models.bundle import DatasetIdentity
from state.registry import (CatalogMismatchError, LegacyFormatError, ModelVersion, Registry, RegistryError,
                            UnknownVersionError, layout)

WINDOW = {"start": "2024-01-01T00:00:00+00:00", "end": "2024-02-01T00:00:00+00:00", "dataset": "/data/x"}


def register(reg: Registry, payload: bytes = b"model", dataset: DatasetIdentity = WORLD, **kw) -> ModelVersion:
    """A version with an artifact and a bundle manifest naming `dataset` (what promote checks)."""
    kw.setdefault("metrics", {"ndcg@10": 0.1})
    kw.setdefault("data_window", WINDOW)
    kw.setdefault("feature_schema_hash", "abc123")
    return reg.register({"model.bin": payload, "model/manifest.json": manifest_only(dataset)}, **kw)


def fork_context():
    return multiprocessing.get_context("fork")


# -- register / get / list -------------------------------------------------------------------------


def test_register_get_list_round_trip(tmp_path):
    reg = Registry(tmp_path)
    first = reg.register(
        {"model.json": b'{"trees": []}', "emb/items.npy": b"\x00\x01\x02"},
        metrics={"ndcg@10": 0.17, "recall@20": 0.25},
        data_window=WINDOW,
        feature_schema_hash="f00d",
        notes="first ranker",
    )
    assert first.version == "v0001" and first.status == "candidate" and first.parent is None
    assert first.metrics == {"ndcg@10": 0.17, "recall@20": 0.25}
    assert first.data_window == WINDOW and first.feature_schema_hash == "f00d" and first.notes == "first ranker"
    assert set(first.files) == {"model.json", "emb/items.npy"}
    assert reg.read_artifact("v0001", "emb/items.npy") == b"\x00\x01\x02"
    assert reg.artifact_path(1, "model.json") == Path(first.path) / "model.json"
    reg.verify("v0001")

    second = register(reg, parent="v0001")
    assert second.version == "v0002" and second.parent == "v0001"
    assert [m.version for m in reg.list()] == ["v0001", "v0002"]
    assert reg.get("v0001") == first
    assert reg.promoted() is None and reg.promoted_version() is None


def test_register_from_a_directory_and_from_paths(tmp_path):
    src = tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"A" * 3_000_000)  # larger than one copy chunk
    (src / "sub" / "b.txt").write_bytes(b"B")
    reg = Registry(tmp_path / "reg")
    from_dir = reg.register(src, metrics={}, data_window={}, feature_schema_hash="h")
    assert set(from_dir.files) == {"a.txt", "sub/b.txt"}
    assert reg.read_artifact(from_dir.version, "a.txt") == b"A" * 3_000_000
    from_map = reg.register({"renamed.txt": src / "sub" / "b.txt"}, metrics={}, data_window={}, feature_schema_hash="h")
    assert reg.read_artifact(from_map.version, "renamed.txt") == b"B"
    single = reg.register(src / "a.txt", metrics={}, data_window={}, feature_schema_hash="h")
    assert single.files == ("a.txt",)


def test_version_numbers_sort_numerically_and_are_never_reused(tmp_path):
    reg = Registry(tmp_path)
    for _ in range(3):
        register(reg)
    reg.gc(keep=0)  # nothing promoted: all three go
    assert reg.list() == []
    assert register(reg).version == "v0004"  # LAST_VERSION remembers what gc removed
    (tmp_path / "LAST_VERSION").write_text("9999\n")
    assert register(reg).version == "v10000"
    assert [m.version for m in reg.list()] == ["v0004", "v10000"]


@pytest.mark.parametrize(
    "files, message",
    [
        ({}, "no artifact files"),
        ({"m.bin": "text"}, "pass bytes"),
        ({"../escape": b"x"}, "plain relative path"),
        ({"/abs": b"x"}, "plain relative path"),
        ({"a//b": b"x"}, "plain relative path"),
        ({"manifest.json": b"x"}, "reserved"),
        ({"a": b"x", "a/b": b"y"}, "both a file and the directory"),
        ({"m.bin": Path("/nonexistent/file")}, "is not a file"),
        (42, "expected a dict"),
    ],
)
def test_register_rejects_bad_files(tmp_path, files, message):
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match=message):
        reg.register(files, metrics={}, data_window={}, feature_schema_hash="h")
    assert reg.list() == []


def test_register_rejects_empty_directory_and_bad_metadata(tmp_path):
    reg = Registry(tmp_path / "reg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="holds no files"):
        reg.register(tmp_path / "empty", metrics={}, data_window={}, feature_schema_hash="h")
    with pytest.raises(RegistryError, match="feature_schema_hash"):
        register(reg, feature_schema_hash="")
    with pytest.raises(RegistryError, match="metrics: not JSON"):
        register(reg, metrics={"x": object()})
    with pytest.raises(RegistryError, match="data_window: expected a dict"):
        register(reg, data_window=["2024"])
    with pytest.raises(UnknownVersionError, match="parent v0007 is not in the registry"):
        register(reg, parent="v0007")
    assert reg.list() == []


def test_unknown_version_names_it_and_the_known_ones(tmp_path):
    reg = Registry(tmp_path)
    register(reg)
    register(reg)
    with pytest.raises(KeyError) as info:
        reg.get("v0042")
    assert isinstance(info.value, RegistryError)
    assert str(info.value).startswith("version v0042 is not in the registry")
    assert "known: v0001, v0002" in str(info.value)
    with pytest.raises(RegistryError, match="expected 'v' followed by at least 4 digits"):
        reg.get("latest")
    with pytest.raises(UnknownVersionError):
        reg.promote("v0042")
    with pytest.raises(RegistryError, match="has no artifact 'nope'"):
        reg.artifact_path("v0001", "nope")


# -- promote / rollback / reject / history ---------------------------------------------------------


def test_promote_rollback_and_history(tmp_path):
    reg = Registry(tmp_path)
    for _ in range(3):
        register(reg)
    reg.promote("v0001", reason="first")
    reg.promote("v0002", reason="better ndcg")
    assert reg.promote("v0003").status == "promoted"
    assert reg.promote("v0003").version == "v0003"  # promoting the promoted one is a no-op
    assert {m.version: m.status for m in reg.list()} == {"v0001": "retired", "v0002": "retired", "v0003": "promoted"}
    assert reg.rollback_target() == "v0002"

    assert reg.rollback(reason="latency").version == "v0002"
    assert reg.rollback().version == "v0001"  # goes further back, never back to v0003
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        reg.rollback()
    assert reg.rollback(to="v0003", reason="fixed").version == "v0003"
    with pytest.raises(RegistryError, match="it is the promoted version"):
        reg.rollback(to="v0003")

    moves = [(e["action"], e["from"], e["to"], e["reason"]) for e in reg.history(("promote", "rollback"))]
    assert moves == [
        ("promote", None, "v0001", "first"),
        ("promote", "v0001", "v0002", "better ndcg"),
        ("promote", "v0002", "v0003", ""),
        ("rollback", "v0003", "v0002", "latency"),
        ("rollback", "v0002", "v0001", ""),
        ("rollback", "v0001", "v0003", "fixed"),
    ]
    assert all("time" in e for e in reg.history())
    # Nothing on disk says "promoted" except the pointer.
    for version in ("v0001", "v0002", "v0003"):
        assert json.loads((tmp_path / "versions" / version / "manifest.json").read_text())["status"] == "candidate"


def test_rollback_with_nothing_promoted_is_an_error(tmp_path):
    reg = Registry(tmp_path)
    register(reg)
    with pytest.raises(RegistryError, match="no version is promoted"):
        reg.rollback()


def test_reject_blocks_promotion_and_is_skipped_by_rollback(tmp_path):
    reg = Registry(tmp_path)
    for _ in range(4):
        register(reg)
    rejected = reg.reject("v0004", "ndcg below gate: 0.09 < 0.12")
    assert rejected.status == "rejected" and rejected.rejected_reason == "ndcg below gate: 0.09 < 0.12"
    assert reg.reject("v0004", "again").rejected_reason == "ndcg below gate: 0.09 < 0.12"  # idempotent
    with pytest.raises(RegistryError, match="cannot promote v0004: it was rejected"):
        reg.promote("v0004")

    reg.promote("v0001")
    reg.promote("v0002")
    reg.promote("v0003")
    with pytest.raises(RegistryError, match="cannot roll back to v0004: it was rejected"):
        reg.rollback(to="v0004")
    with pytest.raises(RegistryError, match="cannot reject v0003: it is promoted"):
        reg.reject("v0003", "late")
    reg.reject("v0002", "found a leak")  # a retired version can be refused too
    assert reg.rollback_target() == "v0001"
    assert reg.rollback().version == "v0001"
    with pytest.raises(RegistryError, match="non-empty reason"):
        reg.reject("v0003", " ")
    assert [e["to"] for e in reg.history(["reject"])] == ["v0004", "v0002"]


def test_gc_keeps_promoted_rollback_target_and_newest(tmp_path):
    reg = Registry(tmp_path)
    for _ in range(8):
        register(reg)
    reg.promote("v0002")
    reg.promote("v0003")  # rollback target: v0002
    removed = reg.gc(keep=2)
    assert removed == ["v0001", "v0004", "v0005", "v0006"]
    assert [m.version for m in reg.list()] == ["v0002", "v0003", "v0007", "v0008"]
    assert reg.gc(keep=2) == []
    assert reg.history(["gc"])[-1]["removed"] == removed
    assert list((tmp_path / ".staging").iterdir()) == []
    assert reg.rollback().version == "v0002"
    with pytest.raises(RegistryError, match="keep must be an integer >= 0"):
        reg.gc(keep=-1)


def test_rollback_skips_versions_removed_by_hand(tmp_path):
    reg = Registry(tmp_path)
    for _ in range(3):
        register(reg)
    for version in ("v0001", "v0002", "v0003"):
        reg.promote(version)
    os.rename(tmp_path / "versions" / "v0002", tmp_path / "elsewhere")
    assert reg.rollback().version == "v0001"


def test_read_only_registry_reads_and_refuses_writes(tmp_path):
    writer = Registry(tmp_path)
    register(writer)
    writer.promote(1)
    reader = Registry(tmp_path, read_only=True)
    assert reader.promoted().version == "v0001"
    with pytest.raises(RegistryError, match="read-only"):
        reader.promote(1)
    with pytest.raises(RegistryError, match="read-only"):
        register(reader)
    missing = Registry(tmp_path / "absent", read_only=True)
    assert missing.list() == [] and missing.promoted() is None and not (tmp_path / "absent").exists()


def test_watch_returns_a_change_or_the_same_version_after_the_timeout(tmp_path):
    reg = Registry(tmp_path)
    register(reg)
    register(reg)
    assert reg.watch(None) is None
    reg.promote(1)
    assert reg.watch(None, timeout_s=5) == "v0001"  # already different: returns at once
    assert reg.watch("v0001", timeout_s=0.05, poll_s=0.01) == "v0001"
    reg.promote(2)
    assert reg.watch("v0001", timeout_s=5) == "v0002"


def test_verify_detects_a_corrupted_artifact(tmp_path):
    reg = Registry(tmp_path)
    model = register(reg, payload=b"good bytes")
    Path(model.path, "model.bin").write_bytes(b"evil bytes")
    with pytest.raises(RegistryError, match="does not match its sha256"):
        reg.verify(model.version)


# -- the served catalog ----------------------------------------------------------------------------


def test_first_promotion_binds_the_catalog_and_another_catalog_is_refused(tmp_path):
    reg = Registry(tmp_path)
    register(reg)
    register(reg, dataset=MOVIELENS)
    assert reg.catalog() is None
    reg.promote("v0001")
    assert reg.catalog() == WORLD
    assert json.loads((tmp_path / "CATALOG").read_text())["fingerprint"] == WORLD.fingerprint
    with pytest.raises(CatalogMismatchError) as info:
        reg.promote("v0002")
    message = str(info.value)
    assert message.startswith("cannot promote v0002: v0002 was trained on movielens:ml-100k (catalog fingerprint "
                              f"{MOVIELENS.fingerprint[:16]}")
    assert f"this registry serves world:world (catalog fingerprint {WORLD.fingerprint[:16]}" in message
    assert reg.promoted_version() == "v0001"
    assert [e["action"] for e in reg.history()] == ["register", "register", "bind-catalog", "promote"]


def test_rollback_to_another_catalog_is_refused(tmp_path):
    reg = Registry(tmp_path)
    register(reg, dataset=MOVIELENS)
    reg.promote("v0001")  # binds movielens
    register(reg)
    with pytest.raises(CatalogMismatchError, match="cannot roll back to v0002"):
        reg.rollback(to="v0002")


def test_bind_catalog_keeps_the_same_and_refuses_another(tmp_path):
    reg = Registry(tmp_path)
    assert reg.bind_catalog(WORLD, reason="marquee up") == WORLD
    same = DatasetIdentity(WORLD.name + "-renamed", WORLD.fingerprint, WORLD.titles)
    assert reg.bind_catalog(same) == WORLD  # the fingerprint decides, the first record stays
    with pytest.raises(CatalogMismatchError, match="serves world:world .* not movielens:ml-100k"):
        reg.bind_catalog(MOVIELENS)
    register(reg, dataset=MOVIELENS)
    with pytest.raises(CatalogMismatchError, match="cannot promote v0001"):
        reg.promote("v0001")  # bound before any promotion: `marquee up` set it
    assert Registry(tmp_path, read_only=True).catalog() == WORLD


def test_a_previous_format_version_is_listed_but_never_promoted(tmp_path):
    reg = Registry(tmp_path)
    old = reg.register({"pipeline.pkl": b"\x80\x04", "title_ids.json": b"[1]"}, metrics={}, data_window={},
                       feature_schema_hash="h")
    assert [m.version for m in reg.list()] == [old.version]
    with pytest.raises(LegacyFormatError, match=r"cannot promote v0001: v0001 was written in the previous "
                                                r"format \(pipeline.pkl\).*retrain"):
        reg.promote(old.version)
    plain = reg.register({"notes.txt": b"x"}, metrics={}, data_window={}, feature_schema_hash="h")
    with pytest.raises(RegistryError, match="holds no model bundle"):
        reg.promote(plain.version)


def test_why_not_servable_names_a_previous_format_promoted_version(tmp_path):
    """What `marquee up` asks to decide whether to train: a registry of the old format (its
    PROMOTED written back then) names a version serving refuses."""
    reg = Registry(tmp_path)
    assert reg.why_not_servable() == "no version is promoted"
    reg.register({"pipeline.pkl": b"\x80\x04"}, metrics={}, data_window={}, feature_schema_hash="h")
    layout.write_pointer(reg.pointer_path, "v0001", [])  # as the previous code promoted it
    assert "previous format (pipeline.pkl)" in reg.why_not_servable()
    register(reg)
    reg.promote("v0002")
    assert reg.why_not_servable() is None


# -- atomicity -------------------------------------------------------------------------------------


def test_exception_mid_register_leaves_nothing_visible(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    real = layout.write_artifact
    calls = []

    def fail_on_second(path, source):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(path, source)

    monkeypatch.setattr(layout, "write_artifact", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        reg.register({"a": b"1", "b": b"2", "c": b"3"}, metrics={}, data_window={}, feature_schema_hash="h")
    monkeypatch.undo()
    assert reg.list() == [] and reg.history() == []
    assert list((tmp_path / ".staging").iterdir()) == []
    assert register(reg).version == "v0001"


def _register_then_die_at_rename(root: str) -> None:
    """Child: write every artifact and the manifest, then die just before the rename."""

    def die(src, dst):
        os._exit(17)

    os.rename = die
    Registry(root).register({"a": b"1" * 1000, "b": b"2"}, metrics={}, data_window={}, feature_schema_hash="h")


def test_crash_before_rename_leaves_no_version_and_next_register_cleans_up(tmp_path):
    reg = Registry(tmp_path)
    child = fork_context().Process(target=_register_then_die_at_rename, args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 17
    leftovers = sorted(p.name for p in (tmp_path / ".staging").iterdir())
    assert len(leftovers) == 2 and leftovers[1] == leftovers[0] + ".lock"  # staged dir + its lock
    assert (tmp_path / ".staging" / leftovers[0] / "manifest.json").is_file()  # fully staged
    assert reg.list() == [] and reg.versions() == []

    assert register(reg).version == "v0001"
    assert list((tmp_path / ".staging").iterdir()) == []


def _stage_and_wait(root: str, staged, release) -> None:
    """Child: hold a registration in staging until told to finish."""
    real = layout.write_artifact

    def slow(path, source):
        meta = real(path, source)
        staged.set()
        release.wait(30)
        return meta

    layout.write_artifact = slow
    Registry(root).register({"a": b"1"}, metrics={}, data_window={}, feature_schema_hash="h")


def test_cleanup_never_touches_a_live_registration(tmp_path):
    ctx = fork_context()
    staged, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_stage_and_wait, args=(str(tmp_path), staged, release))
    child.start()
    try:
        assert staged.wait(30)
        reg = Registry(tmp_path)
        assert register(reg).version == "v0001"  # cleans staging: must skip the live one
    finally:
        release.set()
        child.join(30)
    assert child.exitcode == 0
    assert [m.version for m in reg.list()] == ["v0001", "v0002"]


def test_crash_before_pointer_rename_keeps_the_old_promoted_version(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    register(reg)
    register(reg)
    reg.promote("v0001")

    def crash(src, dst):
        raise SystemExit("killed between writing PROMOTED's temp file and renaming it")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(SystemExit):
        reg.promote("v0002")
    monkeypatch.undo()
    assert reg.promoted().version == "v0001"
    assert [m.status for m in reg.list()] == ["promoted", "candidate"]
    assert [e["to"] for e in reg.history(["promote"])] == ["v0001"]


def _promote_then_die_at_pointer_rename(root: str) -> None:
    def die(src, dst):
        if Path(dst).name == "PROMOTED":
            os._exit(19)
        return real(src, dst)

    real = os.replace
    os.replace = die
    Registry(root).promote("v0002")


def test_real_crash_before_pointer_rename_leaves_old_pointer_and_tmp_is_cleaned(tmp_path):
    reg = Registry(tmp_path)
    register(reg)
    register(reg)
    reg.promote("v0001")
    child = fork_context().Process(target=_promote_then_die_at_pointer_rename, args=(str(tmp_path),))
    child.start()
    child.join(30)
    assert child.exitcode == 19
    assert list(tmp_path.glob(".PROMOTED.*.tmp"))  # the temp file the crash left behind
    assert reg.promoted_version() == "v0001"
    assert reg.promote("v0002").status == "promoted"  # the lock is free again
    assert not list(tmp_path.glob(".PROMOTED.*.tmp"))


def test_lost_history_line_after_pointer_write_is_recorded_as_recovered(tmp_path, monkeypatch):
    reg = Registry(tmp_path)
    for _ in range(3):
        register(reg)
    reg.promote("v0001")

    def crash(*args, **kwargs):
        raise SystemExit("killed after the pointer rename, before the history append")

    monkeypatch.setattr(Registry, "_append_history", crash)
    with pytest.raises(SystemExit):
        reg.promote("v0002")
    monkeypatch.undo()
    assert reg.promoted_version() == "v0002"  # the pointer is the truth
    assert reg.rollback_target() == "v0001"  # and it carries the rollback chain
    reg.promote("v0003")
    moves = [(e["action"], e["from"], e["to"]) for e in reg.history(("promote", "recovered"))]
    assert moves == [("promote", None, "v0001"), ("recovered", "v0001", "v0002"), ("promote", "v0002", "v0003")]


def test_torn_history_line_is_skipped_and_the_next_append_starts_a_new_line(tmp_path):
    reg = Registry(tmp_path)
    register(reg)
    with open(tmp_path / "history.jsonl", "ab") as fh:
        fh.write(b'{"action": "prom')  # a crash mid-append
    reg.promote(1)
    assert [e["action"] for e in reg.history()] == ["register", "bind-catalog", "promote"]


def _register_many(root: str, count: int, queue) -> None:
    reg = Registry(root)
    queue.put([reg.register({"m": os.urandom(64)}, metrics={}, data_window={}, feature_schema_hash="h").version
               for _ in range(count)])


def test_concurrent_registers_from_two_processes_get_distinct_versions(tmp_path):
    ctx = fork_context()
    queue = ctx.Queue()
    children = [ctx.Process(target=_register_many, args=(str(tmp_path), 10, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0  # a collision would surface here as a failed rename
    got = [queue.get(timeout=5) for _ in children]
    versions = got[0] + got[1]
    assert len(set(versions)) == 20
    assert sorted(versions) == [f"v{n:04d}" for n in range(1, 21)]
    assert [m.version for m in Registry(tmp_path).list()] == sorted(versions)
    assert len(Registry(tmp_path).history(["register"])) == 20
