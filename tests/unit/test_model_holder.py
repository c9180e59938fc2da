"""ModelHolder follows the registry and survives bad versions; Ranker batches by version."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from bundle_fakes import WORLD, manifest_only
from deployments.model import ModelLoadError
from deployments.model_holder import FOLLOW_PROMOTED, ModelHolder
from deployments.ranking import Ranker
from state.registry import Registry


class FakeModel:
    """Scores a feature row by its first column (times `scale`), so slices can be traced back."""

    def __init__(self, version: str, scale: float = 1.0, short_by: int = 0):
        self.version, self.scale, self.short_by = version, scale, short_by
        self.rank_calls: list[int] = []

    def rank(self, features: np.ndarray) -> np.ndarray:
        self.rank_calls.append(len(features))
        return features[: len(features) - self.short_by, 0] * self.scale


class FakeLoader:
    """Loads any version except those in `broken`; records what it was asked for."""

    def __init__(self, broken: tuple[str, ...] = ()):
        self.broken = set(broken)
        self.calls: list[str] = []
        self.catalogs: list = []  # what each load was asked to check
        self.models: dict[str, FakeModel] = {}

    def __call__(self, root, version: str, catalog=None) -> FakeModel:
        self.calls.append(version)
        self.catalogs.append(catalog)
        if version in self.broken:
            raise ModelLoadError(f"{version}: model/boosters/play.ubj does not match its sha256")
        model = self.models[version] = FakeModel(version, scale=float(version[1:]))
        return model


def register(registry: Registry, n: int = 1) -> list[str]:
    return [registry.register({"model/manifest.json": manifest_only(), "model/x.npy": f"model {i}".encode()},
                              metrics={"auc": 0.7},
                              data_window={"days": 7}, feature_schema_hash="h").version for i in range(n)]


@pytest.fixture
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry")


# -- ModelHolder -----------------------------------------------------------------------------------


@pytest.fixture
def frozen_gc():
    """A process whose GC was frozen at start (as Serve replicas are); unfrozen afterwards."""
    gc.freeze()
    yield
    gc.unfreeze()


def test_swapped_in_model_joins_a_frozen_gc(registry, frozen_gc):
    versions = register(registry, 2)
    registry.promote(versions[0])
    loader = FakeLoader()
    holder = ModelHolder(registry.root, loader=loader)
    assert holder.refresh()
    registry.promote(versions[1])
    assert holder.refresh()
    # frozen objects are out of the collector's generations: full scans skip the new model
    tracked = {id(obj) for obj in gc.get_objects()}
    assert id(holder.model) not in tracked and id(holder.model.__dict__) not in tracked
    assert gc.get_freeze_count() > 0


def test_gc_left_alone_where_nothing_froze_it(registry):
    versions = register(registry)
    registry.promote(versions[0])
    assert gc.get_freeze_count() == 0
    holder = ModelHolder(registry.root, loader=FakeLoader())
    assert holder.refresh()
    assert gc.get_freeze_count() == 0
    assert id(holder.model) in {id(obj) for obj in gc.get_objects()}


def test_nothing_promoted_nothing_loaded(registry):
    register(registry)
    loader = FakeLoader()
    holder = ModelHolder(registry.root, loader=loader)
    assert holder.refresh() is False
    assert holder.model is None and holder.version is None and loader.calls == []


def test_missing_registry_is_not_an_error(tmp_path):
    holder = ModelHolder(tmp_path / "nowhere", loader=FakeLoader())
    assert holder.refresh() is False and holder.version is None


def test_follows_the_promoted_pointer(registry):
    v1, v2 = register(registry, 2)
    loader = FakeLoader()
    holder = ModelHolder(registry.root, loader=loader)
    registry.promote(v1)
    assert holder.refresh() is True and holder.version == v1
    assert holder.refresh() is False  # unchanged pointer: no reload
    registry.promote(v2)
    assert holder.refresh() is True and holder.version == v2
    registry.rollback()
    assert holder.refresh() is True and holder.version == v1
    assert loader.calls == [v1, v2, v1]
    assert holder.swaps == 3


def test_a_version_that_fails_to_load_keeps_the_old_model(registry):
    v1, v2 = register(registry, 2)
    loader = FakeLoader(broken=(v2,))
    holder = ModelHolder(registry.root, loader=loader)
    registry.promote(v1)
    holder.refresh()
    served = holder.model
    registry.promote(v2)
    assert holder.refresh() is False
    assert holder.model is served and holder.version == v1
    assert v2 in holder.last_error and "sha256" in holder.last_error
    assert holder.status()["failed_versions"] == [v2]
    assert holder.refresh() is False
    assert loader.calls == [v1, v2]  # a failed version is not retried on every poll


def test_a_failed_version_is_tried_again_after_a_growing_back_off(registry):
    from deployments.model_holder import RETRY_FIRST_S

    v1, v2 = register(registry, 2)
    now = [0.0]
    loader = FakeLoader(broken=(v2,))
    holder = ModelHolder(registry.root, loader=loader, clock=lambda: now[0])
    registry.promote(v1)
    holder.refresh()
    registry.promote(v2)
    assert holder.refresh() is False and loader.calls == [v1, v2]
    now[0] = RETRY_FIRST_S - 1
    assert holder.refresh() is False and loader.calls == [v1, v2]  # not yet
    now[0] = RETRY_FIRST_S
    assert holder.refresh() is False and loader.calls == [v1, v2, v2]  # tried again, still broken
    now[0] = RETRY_FIRST_S + 2 * RETRY_FIRST_S - 1
    assert holder.refresh() is False and loader.calls == [v1, v2, v2]  # the wait doubled
    loader.broken.clear()  # the passing fault is over
    now[0] = RETRY_FIRST_S + 2 * RETRY_FIRST_S
    assert holder.refresh() is True and holder.version == v2
    assert holder.status()["failed_versions"] == [] and holder.last_error is None


def test_a_good_version_after_a_bad_one_clears_the_error(registry):
    v1, v2, v3 = register(registry, 3)
    holder = ModelHolder(registry.root, loader=FakeLoader(broken=(v2,)))
    registry.promote(v2)
    assert holder.refresh() is False and holder.model is None  # nothing to keep: still nothing
    registry.promote(v3)
    assert holder.refresh() is True and holder.version == v3
    assert holder.last_error is None
    assert holder.status()["failed_versions"] == [v2]


def test_retarget_pins_a_version_and_back(registry):
    v1, v2 = register(registry, 2)
    registry.promote(v2)
    holder = ModelHolder(registry.root, loader=FakeLoader())
    holder.refresh()
    holder.retarget(v1)
    assert holder.version == v2  # takes effect on the next refresh
    assert holder.refresh() is True and holder.version == v1
    assert holder.status()["target"] == v1
    holder.retarget(FOLLOW_PROMOTED)
    assert holder.refresh() is True and holder.version == v2


def test_retargeting_forgets_failed_versions(registry):
    (v1,) = register(registry)
    loader = FakeLoader(broken=(v1,))
    holder = ModelHolder(registry.root, target=v1, loader=loader)
    assert holder.refresh() is False and holder.failed == {v1}
    loader.broken.clear()  # e.g. the artifact was repaired
    holder.retarget(FOLLOW_PROMOTED)
    holder.retarget(v1)
    assert holder.refresh() is True and holder.version == v1


def test_unreadable_registry_is_recorded_not_raised(registry):
    (v1,) = register(registry)
    registry.promote(v1)
    holder = ModelHolder(registry.root, loader=FakeLoader())
    holder.refresh()
    registry.pointer_path.write_text("{broken")
    assert holder.refresh() is False
    assert holder.version == v1 and "registry unreadable" in holder.last_error


def test_status(registry):
    (v1,) = register(registry)
    registry.promote(v1)
    loader = FakeLoader()
    holder = ModelHolder(registry.root, loader=loader, catalog=WORLD)
    assert holder.status() == {"version": None, "target": FOLLOW_PROMOTED, "last_error": None,
                               "failed_versions": [], "swaps": 0, "catalog": WORLD.to_dict()}
    holder.refresh()
    assert holder.status() == {"version": v1, "target": FOLLOW_PROMOTED, "last_error": None,
                               "failed_versions": [], "swaps": 1, "catalog": WORLD.to_dict()}
    assert loader.catalogs == [WORLD]  # the loader is told which catalog to insist on


# -- Ranker ----------------------------------------------------------------------------------------


def rows(*values: float) -> np.ndarray:
    return np.array([[v, 0.0] for v in values], dtype=np.float32)


def test_score_many_groups_by_version_and_returns_slices_in_order(tmp_path):
    loader = FakeLoader()
    ranker = Ranker(tmp_path, loader=loader)
    requests = [("v0001", rows(1, 2)), ("v0002", rows(3)), ("v0001", rows(4, 5, 6)), ("v0002", rows(7, 8))]
    out = ranker.score_many(requests)
    assert [o.tolist() for o in out] == [[1, 2], [6], [4, 5, 6], [14, 16]]  # v0002 scales by 2
    assert sorted(loader.calls) == ["v0001", "v0002"]  # each version loaded once
    assert loader.models["v0001"].rank_calls == [5]  # one booster call per version
    assert loader.models["v0002"].rank_calls == [3]


def test_score_many_with_empty_requests(tmp_path):
    ranker = Ranker(tmp_path, loader=FakeLoader())
    empty = np.zeros((0, 2), dtype=np.float32)
    out = ranker.score_many([("v0001", empty), ("v0001", rows(9)), ("v0003", empty)])
    assert [len(o) for o in out] == [0, 1, 0]
    assert out[1].tolist() == [9.0]
    assert ranker.score_many([]) == []


def test_score_rejects_a_model_returning_the_wrong_length(tmp_path):
    ranker = Ranker(tmp_path, loader=lambda root, version: FakeModel(version, short_by=1))
    with pytest.raises(AssertionError, match="2 scores for 3 rows"):
        ranker.score("v0001", rows(1, 2, 3))
    with pytest.raises(AssertionError):
        ranker.score_many([("v0001", rows(1, 2)), ("v0001", rows(3))])


def test_ranker_uses_the_held_model_and_caches_others(registry):
    v1, v2, v3, v4 = register(registry, 4)
    registry.promote(v1)
    loader = FakeLoader()
    holder = ModelHolder(registry.root, loader=loader)
    holder.refresh()
    ranker = Ranker(registry.root, holder=holder, loader=loader, keep=2)
    assert ranker.model(v1) is holder.model
    ranker.model(v2), ranker.model(v3), ranker.model(v2)
    assert loader.calls == [v1, v2, v3]  # v2 came from the cache the second time
    ranker.model(v4)  # keeps the 2 most recently used: v3 is evicted, v2 stays
    ranker.model(v2)
    assert loader.calls == [v1, v2, v3, v4]
    ranker.model(v3)
    assert loader.calls[-1] == v3


def test_ranker_propagates_a_load_error(tmp_path):
    ranker = Ranker(tmp_path, loader=FakeLoader(broken=("v0009",)))
    with pytest.raises(ModelLoadError, match="v0009"):
        ranker.score("v0009", rows(1))
