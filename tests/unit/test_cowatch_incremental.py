"""Co-watch computed incrementally (each day adds its own pairs to the previous day's counts)
gives the same snapshots as recomputing every day from all plays (tests/cowatch_reference.py,
the computation as it was): on a small world, on random events, and on MovieLens 100K."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from cowatch_reference import cowatch_from_scratch
from feature_data import random_dataset

from features.cowatch import CowatchCounts
from features.definitions import FeatureSpec, SnapshotBuilder, Vocab, combine_partials, day_number
from marquee.dataset import load_dataset
from producers.movielens.importer import import_movielens
from producers.world.generate import generate_world
from training.features import compute_partials, day_runs, event_files, features_as_of, run_feature_job


def _builder(dataset_dir, spec: FeatureSpec) -> SnapshotBuilder:
    dataset = load_dataset(dataset_dir)
    vocab = Vocab.from_tables(dataset.titles, dataset.members)
    combined = combine_partials(compute_partials(event_files(dataset.root), vocab, spec, "arrow"))
    return SnapshotBuilder(combined, vocab, spec, dataset.members)


def _assert_same_up_to_boundary_ties(new: pa.Table, old: pa.Table) -> int:
    """Equal except which titles fill the last tie group (same count and score) at rank k, which
    the old dense path chose with argpartition. Returns how many rows differed."""
    for column in ("title_id", "count", "score", "rank"):
        assert new.column(column).equals(old.column(column)), column
    differs = np.flatnonzero(new.column("other_title_id").to_numpy() != old.column("other_title_id").to_numpy())
    if len(differs):
        titles, counts, scores = (old.column(c).to_numpy() for c in ("title_id", "count", "score"))
        last = np.r_[np.flatnonzero(titles[1:] != titles[:-1]), len(titles) - 1]  # each title's last row
        last_of = last[np.searchsorted(last, differs)]
        assert (counts[differs] == counts[last_of]).all() and (scores[differs] == scores[last_of]).all()
    return len(differs)


def _compare_every_day(builder: SnapshotBuilder, days: list[int], every: int = 1) -> int:
    """Advance one day at a time (as the feature job does); compare every `every`-th day."""
    counts = builder.cowatch_counts()
    tie_rows = 0
    for i, day in enumerate(days):
        new = counts.advance(day).table(builder.vocab.title_ids)
        if i % every and day != days[-1]:
            continue
        assert new.equals(cowatch_from_scratch(builder, day, exact_ties=True)), f"day {day}"
        tie_rows += _assert_same_up_to_boundary_ties(new, cowatch_from_scratch(builder, day))
    return tie_rows


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


def _movielens_builder(movielens_100k, tmp_path_factory) -> SnapshotBuilder:
    target = tmp_path_factory.mktemp("ml") / "ml-100k"
    import_movielens(movielens_100k, target)
    return _builder(target, FeatureSpec())


def test_incremental_equals_recomputed_on_movielens_sampled_days(movielens_100k, tmp_path_factory):
    builder = _movielens_builder(movielens_100k, tmp_path_factory)
    days = builder.as_of_days()
    assert days[0] == day_number("1997-09-20")
    _compare_every_day(builder, days, every=72)  # 4 days compared, every day advanced


@pytest.mark.slow
def test_incremental_equals_recomputed_on_movielens_every_day(movielens_100k, tmp_path_factory):
    builder = _movielens_builder(movielens_100k, tmp_path_factory)
    days = builder.as_of_days()
    assert len(days) == 216
    tie_rows = _compare_every_day(builder, days)
    assert tie_rows > 0  # the old dense path's boundary picks did differ, and only there
