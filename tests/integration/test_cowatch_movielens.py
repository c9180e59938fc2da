"""Co-watch computed incrementally equals recomputing every day, on MovieLens 100K (216 daily
snapshots: a data-heavy check, so it lives here rather than in the unit tier; a sampled-days short
form runs in `make test`, every day in `make test-slow`)."""

from __future__ import annotations

import pytest
from cowatch_reference import builder_of, compare_every_day

from features.definitions import FeatureSpec, SnapshotBuilder, day_number
from producers.movielens.importer import import_movielens


def _movielens_builder(movielens_100k, tmp_path_factory) -> SnapshotBuilder:
    target = tmp_path_factory.mktemp("ml") / "ml-100k"
    import_movielens(movielens_100k, target)
    return builder_of(target, FeatureSpec())


def test_incremental_equals_recomputed_on_movielens_sampled_days(movielens_100k, tmp_path_factory):
    builder = _movielens_builder(movielens_100k, tmp_path_factory)
    days = builder.as_of_days()
    assert days[0] == day_number("1997-09-20")
    compare_every_day(builder, days, every=72)  # 4 days compared, every day advanced


@pytest.mark.slow
def test_incremental_equals_recomputed_on_movielens_every_day(movielens_100k, tmp_path_factory):
    builder = _movielens_builder(movielens_100k, tmp_path_factory)
    days = builder.as_of_days()
    assert len(days) == 216
    tie_rows = compare_every_day(builder, days)
    assert tie_rows > 0  # the old dense path's boundary picks did differ, and only there
