"""The issue's scenario at unit level: a home serves one catalog; a model trained on another one
(MovieLens, in a home serving the world) is refused by the registry at promotion and by serving
at load, each naming both catalogs, and the old version keeps serving."""

from __future__ import annotations

import pytest

from bundle_fakes import fit_small_pipeline, register_bundle
from deployments.model import ModelLoadError, ServingModel
from deployments.model_holder import ModelHolder, served_catalog
from state.registry import CatalogMismatchError, Registry


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A registry serving the fitted world model (v0001) that also holds a model of another
    catalog (v0002: named movielens, with titles the world does not have)."""
    fitted = fit_small_pipeline(tmp_path_factory.mktemp("catalogs"), with_store=False)
    registry = Registry(fitted.root / "registry")
    world = register_bundle(registry, fitted.bundle(), fitted.root / "b1")
    registry.promote(world, reason="marquee up")
    other = register_bundle(registry, fitted.bundle("movielens:ml-100k", extra_titles=(10_001, 10_002)),
                            fitted.root / "b2")
    served = served_catalog(fitted.dataset, fitted.data.titles.column("title_id").to_numpy())
    return fitted, registry, world, other, served


def test_the_registry_refuses_to_promote_a_model_of_another_catalog(home):
    fitted, registry, world, other, served = home
    with pytest.raises(CatalogMismatchError) as info:
        registry.promote(other, reason="retrain on movielens")
    message = str(info.value)
    movielens = registry.dataset_of(other)
    assert f"movielens:ml-100k (catalog fingerprint {movielens.fingerprint[:16]}" in message
    assert f"this registry serves {served.name} (catalog fingerprint {served.fingerprint[:16]}" in message
    assert registry.promoted_version() == world
    assert registry.catalog().same_catalog(served)


def test_serving_refuses_to_load_it_and_keeps_the_old_version(home):
    fitted, registry, world, other, served = home
    assert ServingModel.load(registry.root, world, catalog=served).dataset.same_catalog(served)
    with pytest.raises(ModelLoadError, match=rf"{other} was trained on movielens:ml-100k .* but this replica "
                                             rf"serves {served.name} \(catalog fingerprint {served.fingerprint[:16]}"):
        ServingModel.load(registry.root, other, catalog=served)
    holder = ModelHolder(registry.root, catalog=served)
    assert holder.refresh() and holder.version == world
    holder.retarget(other)  # an operator pins it through the hot config: refused too
    assert not holder.refresh()
    status = holder.status()
    assert status["version"] == world and status["failed_versions"] == [other]
    assert "movielens:ml-100k" in status["last_error"] and served.fingerprint[:16] in status["last_error"]


def test_a_replica_refuses_a_promoted_model_of_another_catalog(home, tmp_path):
    """A registry that never saw the world (its first promotion bound it to movielens): a world
    replica following it serves no model rather than wrong ids, and says why."""
    fitted, _, _, _, served = home
    registry = Registry(tmp_path / "registry")
    other = register_bundle(registry, fitted.bundle("movielens:ml-100k", extra_titles=(10_001,)), tmp_path / "b")
    registry.promote(other)
    holder = ModelHolder(registry.root, catalog=served)
    assert not holder.refresh() and holder.model is None
    assert "movielens:ml-100k" in holder.last_error and served.name in holder.last_error
