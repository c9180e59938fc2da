"""Co-watch computed incrementally (each day adds its own pairs to the previous day's counts)
gives the same snapshots as recomputing every day from all plays (tests/cowatch_reference.py,
the computation as it was): on a small world and on random events (MovieLens 100K:
tests/integration/test_cowatch_movielens.py)."""

from __future__ import annotations

import pytest
from cowatch_reference import builder_of as _builder
from cowatch_reference import compare_every_day as _compare_every_day
from cowatch_reference import cowatch_from_scratch
from feature_data import random_dataset

from features.cowatch import CowatchCounts
from features.definitions import FeatureSpec
from producers.world.generate import generate_world
from training.features import day_runs, features_as_of, run_feature_job


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("cw") / "world"
    generate_world(members=300, titles=120, days=20, seed=5, out=out)
    return out


@pytest.mark.parametrize("k", [3, 50])
def test_incremental_equals_recomputed_on_a_small_world(small_world, k):
    builder = _builder(small_world, FeatureSpec(cowatch_k=k))
    assert builder.cowatch_index.n_titles == 120
    _compare_every_day(builder, builder.as_of_days())


def test_the_feature_job_writes_the_recomputed_tables(small_world, tmp_path):
    """Same Parquet content in the offline store: every co-watch snapshot the job wrote (in runs
    of consecutive days) equals the from-scratch table of its day."""
    spec = FeatureSpec(cowatch_k=5)
    result = run_feature_job(small_world, tmp_path / "f", engine="arrow", spec=spec)
    builder = _builder(small_world, spec)
    days = builder.as_of_days()
    assert result.snapshots == len(days)
    for day in days:
        stored = features_as_of(tmp_path / "f", "cowatch", day)
        assert stored.equals(cowatch_from_scratch(builder, day, exact_ties=True)), day


def test_sparse_and_dense_counts_agree_and_time_only_moves_forward(tmp_path):
    dataset, _ = random_dataset(tmp_path / "ds", n_events=3000, n_members=60, n_titles=30, days=9, seed=2)
    builder = _builder(dataset, FeatureSpec(cowatch_k=4))
    dense, sparse = builder.cowatch_counts(), CowatchCounts(builder.cowatch_index, 4, dense_cells_limit=0)
    assert dense.dense and not sparse.dense
    for day in builder.as_of_days()[::2]:  # skipping days: a step adds several days' pairs
        table = dense.advance(day).table(builder.vocab.title_ids)
        assert table.equals(sparse.advance(day).table(builder.vocab.title_ids))
        assert table.equals(cowatch_from_scratch(builder, day, exact_ties=True))
    with pytest.raises(ValueError, match="cannot go back"):
        dense.advance(builder.as_of_days()[0])


def test_day_runs_are_consecutive_and_cover_every_day(small_world):
    builder = _builder(small_world, FeatureSpec())
    days = builder.as_of_days()
    runs = day_runs(builder, days, 4)
    assert [d for run in runs for d in run] == days and 2 <= len(runs) <= 4
    assert all(run == list(range(run[0], run[-1] + 1)) for run in runs)
    assert len(runs[0]) >= len(runs[-1])  # early days are cheaper: more of them per run


