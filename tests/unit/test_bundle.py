"""The model bundle: a fitted pipeline written as XGBoost files and .npy arrays and read back
scores exactly as the model in memory did; every file is verified, nothing is unpickled, and a
bundle of another catalog is refused."""

from __future__ import annotations

import hashlib
import io
import json
import shutil

import numpy as np
import pytest
import xgboost

from bundle_fakes import MOVIELENS, fit_small_pipeline
from deployments.model import LiveMember, ServingModel
from models.bundle import (MANIFEST, BundleError, CatalogMismatchError, DatasetIdentity, catalog_fingerprint,
                           dataset_name, feature_schema_hash, load_bundle, read_manifest, write_bundle)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return fit_small_pipeline(tmp_path_factory.mktemp("bundle"))


@pytest.fixture(scope="module")
def written(fitted):
    bundle = fitted.bundle()
    out = fitted.root / "written"
    write_bundle(bundle, out)
    return bundle, out


def histories_of(fitted, member: int) -> tuple[int, ...]:
    data = fitted.pipeline.serving_.data
    rows = np.flatnonzero(data.members == member)[::-1]
    return tuple(int(fitted.split.title_ids[t]) for t in data.titles[rows])


def test_manifest_names_schema_settings_versions_dataset_and_a_sha256_per_file(fitted, written):
    bundle, out = written
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["features"]["names"] == fitted.pipeline.feature_names_
    assert manifest["features"]["schema_hash"] == feature_schema_hash(fitted.pipeline.feature_names_)
    assert manifest["config"]["rounds"] == 8 and manifest["config"]["depth"]["content"] == 3
    assert manifest["versions"] == {"xgboost": xgboost.__version__, "numpy": np.__version__}
    ids = np.sort(fitted.data.titles.column("title_id").to_numpy())
    expected = hashlib.sha256(ids.astype("<i8").tobytes()).hexdigest()
    assert manifest["dataset"] == {"name": dataset_name(fitted.dataset), "fingerprint": expected, "titles": len(ids)}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert {"boosters/play.ubj", "boosters/completion.ubj"} <= on_disk
    assert all(name.endswith(".npy") for name in on_disk if name.startswith("arrays/"))
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert [s["name"] for s in manifest["sources"]] == list(fitted.pipeline.serving_.sources)
    assert manifest["builder"]["snapshot"] is not None  # the store's features travel with the model


def test_loaded_bundle_serves_exactly_what_the_in_memory_model_serves(fitted, written):
    bundle, out = written
    in_memory, loaded = ServingModel(bundle, "mem"), ServingModel(load_bundle(out), "disk")
    assert loaded.feature_names == in_memory.feature_names and loaded.source_names == in_memory.source_names
    assert loaded.as_of_s == in_memory.as_of_s
    np.testing.assert_array_equal(loaded.title_ids, in_memory.title_ids)
    members = [LiveMember(m, histories_of(fitted, m), titles_played=5) for m in (0, 3, 7)]
    members.append(LiveMember(10**9, ()))  # a member the fit never saw
    for member in members:
        batches = [model.batch([member]) for model in (in_memory, loaded)]
        scores = [model.score_sources(b.histories) for model, b in zip((in_memory, loaded), batches)]
        for name in in_memory.source_names:
            np.testing.assert_array_equal(scores[1][name], scores[0][name], err_msg=name)
        got = [model.candidates(b, s) for model, b, s in zip((in_memory, loaded), batches, scores)]
        np.testing.assert_array_equal(got[1].titles, got[0].titles)
        np.testing.assert_array_equal(got[1].features, got[0].features)
        np.testing.assert_array_equal(loaded.rank(got[1].features), in_memory.rank(got[0].features))
    seed = int(in_memory.title_ids[0])
    assert loaded.similar(seed, 5) == in_memory.similar(seed, 5)


def test_loaded_bundle_ranks_training_members_like_the_fitted_pipeline(fitted, written):
    """Offline path, each member at their own now: the loaded builder and boosters against
    Pipeline.rank, exactly. (The frozen snapshot holds the store at the model's as-of only, which
    is serving's time; this path reads the store as of each member's now, as training did.)"""
    _, out = written
    loaded = load_bundle(out)
    loaded.builder.snapshot = None
    members = np.arange(6)
    candidates, expected = fitted.pipeline.rank(members)
    mine = loaded.builder.build(members)
    np.testing.assert_array_equal(mine.titles, candidates.titles)
    np.testing.assert_array_equal(mine.features, candidates.features)
    matrix = xgboost.DMatrix(mine.features, feature_names=loaded.feature_names)
    blended = (loaded.config.play_weight * loaded.boosters["play"].predict(matrix)
               + loaded.config.completion_weight * loaded.boosters["completion"].predict(matrix))
    np.testing.assert_array_equal(blended, expected)
    for name, source in fitted.pipeline.serving_.sources.items():  # every fitted state, exactly
        np.testing.assert_array_equal(loaded.builder.sources[name].score(members), source.score(members),
                                      err_msg=name)


@pytest.fixture
def copy(written, tmp_path):
    _, out = written
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def _rewrite_manifest(directory, change) -> None:
    manifest = json.loads((directory / MANIFEST).read_text())
    change(manifest)
    (directory / MANIFEST).write_text(json.dumps(manifest))


def test_a_changed_file_is_refused(copy):
    target = copy / "arrays" / "sources" / "recency_ease" / "weights.npy"
    weights = np.load(target)
    weights[0, 1] += 1.0
    np.save(target, weights)
    with pytest.raises(BundleError, match="arrays/sources/recency_ease/weights.npy does not match its sha256"):
        load_bundle(copy)


def test_a_missing_file_and_a_wrong_shape_are_refused(copy):
    (copy / "boosters" / "completion.ubj").unlink()
    with pytest.raises(BundleError, match="boosters/completion.ubj is missing"):
        load_bundle(copy)


def test_an_array_whose_manifest_entry_disagrees_is_refused(copy):
    _rewrite_manifest(copy, lambda m: m["arrays"]["data/titles"].update(shape=[3]))
    with pytest.raises(BundleError, match="array 'data/titles' is"):
        load_bundle(copy)


class _Exploit:
    """Unpickling this would create a file: the proof a loader ran code from a model file."""

    path = None

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_pickled_array_is_never_unpickled(copy, tmp_path):
    """An .npy holding pickled objects (with a matching sha256) fails to load without running."""
    marker = tmp_path / "pwned"
    _Exploit.path = marker
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Exploit()], dtype=object), allow_pickle=True)
    name = "arrays/data/titles.npy"
    (copy / name).write_bytes(buffer.getvalue())
    _rewrite_manifest(copy, lambda m: m["files"].update({name: hashlib.sha256(buffer.getvalue()).hexdigest()}))
    with pytest.raises(ValueError, match="allow_pickle"):
        load_bundle(copy)
    assert not marker.exists()


def test_an_unknown_source_kind_or_format_version_is_refused(copy):
    _rewrite_manifest(copy, lambda m: m["sources"][0].update(kind="os.system"))
    with pytest.raises(BundleError, match="unknown kind 'os.system'"):
        load_bundle(copy)
    _rewrite_manifest(copy, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format_version 99.*retrain"):
        read_manifest(copy)


def test_a_bundle_of_another_catalog_is_refused_naming_both(fitted, written):
    bundle, out = written
    with pytest.raises(CatalogMismatchError) as info:
        load_bundle(out, expect=MOVIELENS, subject="v0002", server="this replica")
    message = str(info.value)
    assert message.startswith(f"v0002 was trained on {bundle.dataset_name} (catalog fingerprint "
                              f"{bundle.dataset.fingerprint[:16]}")
    assert f"this replica serves movielens:ml-100k (catalog fingerprint {MOVIELENS.fingerprint[:16]}" in message
    same = DatasetIdentity.of_titles("world:renamed", fitted.data.titles.column("title_id").to_numpy())
    assert load_bundle(out, expect=same).dataset.same_catalog(same)  # the fingerprint decides, not the name


def test_fingerprint_ignores_order_and_repeats_but_not_membership():
    assert catalog_fingerprint([3, 1, 2, 2]) == catalog_fingerprint([1, 2, 3])
    assert catalog_fingerprint([1, 2, 3]) != catalog_fingerprint([1, 2, 4])
    with pytest.raises(BundleError, match="dataset.fingerprint"):
        DatasetIdentity("x", "not-a-hash", 1)


def test_model_titles_outside_the_catalog_are_refused(fitted):
    with pytest.raises(BundleError, match="model titles are not in the catalog"):
        fitted.pipeline.bundle("tiny", fitted.split.title_ids[:3], fitted.split.title_ids, fitted.split.member_ids)
