"""No leak, proven: the feature store the retrain gate reads is built from a split's training
events only, and "strong" is taken at each member's point in time. Events planted after every
member's point in time (repeat plays, completions, impressions) and changes to everyone's
held-out events change no training feature, label or candidate, nor the fitted ranker; the same
plants do change a store built from the whole log and the ever-completed "strong" (so the test
can fail)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from feature_data import write

from features.offline_store import JOINED_ENTITIES, features_as_of, read_manifest
from marquee.dataset import load_dataset
from models.ranker_features import StoreLink
from models.pipeline_config import PipelineConfig
from producers.world.generate import generate_world
from training.evaluate import load_eval_data, title_content
from training.features import run_feature_job
from training.pipeline import Pipeline
from training.point_in_time import build_training_store, held_out_rows_seen, training_events
from training.retrain import load_split

HOUR_MS = 3_600_000


def _plant(events: pa.Table, split) -> pa.Table:
    """The log plus, for every member of the split, events after their point in time: a repeat
    play of a title they already played (repeats do not move the split), a completion of a
    training title, impressions; plus a completion of every held-out title; and every held-out
    event moved to another device and country."""
    rng = np.random.default_rng(3)
    base = events.drop_columns([c for c in events.column_names if c == "day"])
    member_ids = pc.fill_null(base.column("member_id"), -1).to_numpy()
    titles = pc.fill_null(base.column("title_id"), -1).to_numpy()
    types = base.column("type").to_numpy(zero_copy_only=False)
    ms = base.column("timestamp").cast(pa.int64()).to_numpy()
    last_event = {}
    for m, t in zip(member_ids.tolist(), ms.tolist()):
        last_event[m] = max(last_event.get(m, t), t)
    held = {(int(split.member_ids[m]), int(split.title_ids[t]))
            for m, items in zip(split.test_members, split.test_items) for t in items}
    plays = np.flatnonzero(types == "play")
    rows, new_type, new_time = [], [], []
    for m_index, member in enumerate(split.member_ids.tolist()):
        mine = plays[member_ids[plays] == member]
        if not len(mine):
            continue
        after = max(last_event[member], int(split.train_last_ts[m_index]) * 1000) + HOUR_MS
        for j, kind in enumerate(("play", "completion", "impression", "impression")):
            rows.append(int(rng.choice(mine)))
            new_type.append(kind)
            new_time.append(after + j * 60_000)
    for i in plays:
        if (int(member_ids[i]), int(titles[i])) in held:
            rows.append(int(i))
            new_type.append("completion")
            new_time.append(int(ms[i]) + 60_000)
    planted = base.take(pa.array(rows))
    n = planted.num_rows
    replace = {"type": pa.array(new_type, pa.string()),
               "timestamp": pa.array(new_time, pa.int64()).cast(base.schema.field("timestamp").type),
               "event_id": pa.array([f"planted-{i}" for i in range(n)], pa.string()),
               "seq": pa.array(np.arange(n) + 10**9, pa.int64())}
    for name, column in replace.items():
        planted = planted.set_column(planted.schema.get_field_index(name), name, column)
    point_in_time = dict(zip(split.member_ids.tolist(), split.train_last_ts.tolist()))
    is_held = np.array([(m, t) in held and s >= point_in_time[m]  # the held-out rows and what follows them
                        for m, t, s in zip(member_ids.tolist(), titles.tolist(), (ms // 1000).tolist())])
    moved = base
    for name, value in (("device", "tv"), ("country", "ZZ")):
        column = pc.if_else(pa.array(is_held), pa.scalar(value, base.schema.field(name).type), base.column(name))
        moved = moved.set_column(moved.schema.get_field_index(name), name, column)
    return pa.concat_tables([moved.cast(base.schema), planted.select(base.column_names).cast(base.schema)])


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak")
    generate_world(members=300, titles=120, days=24, seed=13, out=root / "base")
    _, split = load_split(f"world:{root / 'base'}")
    dataset = load_dataset(root / "base")
    planted = write(root / "planted", dataset.titles, dataset.members, _plant(dataset.events(), split))
    return root, root / "base", planted


def _store_tables(store) -> dict:
    manifest = read_manifest(store)
    days = np.arange(np.datetime64(manifest["as_of_first"]), np.datetime64(manifest["as_of_last"]) + 1)
    return {(e, str(d)): features_as_of(store, e, str(d)) for e in JOINED_ENTITIES for d in days}


def _fit(store_dir, split, data):
    store = StoreLink(str(store_dir), split.member_ids, split.title_ids)
    pipeline = Pipeline(PipelineConfig(rounds=15, seed=7), title_content(data.titles, split.title_ids), store)
    train = split.train_data()
    return pipeline, pipeline.ranker_examples(train), train


def test_planted_future_and_held_out_events_change_nothing_the_gate_trains_on(worlds):
    root, base, planted = worlds
    data_a, split_a = load_split(f"world:{base}")
    data_b, split_b = load_split(f"world:{planted}")
    # the plants left the split alone: same members, titles, points in time, held-out rows
    for name in ("member_ids", "title_ids", "train_last_ts", "test_members"):
        np.testing.assert_array_equal(getattr(split_a, name), getattr(split_b, name))
    assert all(np.array_equal(a, b) for a, b in zip(split_a.test_items, split_b.test_items))
    assert split_a.train_events.equals(split_b.train_events)  # strong labels included

    store_a = build_training_store(base, split_a, root / "store_a", "arrow")
    store_b = build_training_store(planted, split_b, root / "store_b", "arrow")
    a, b = _store_tables(store_a.path), _store_tables(store_b.path)
    assert a.keys() == b.keys() and len(a) > 20
    for key in a:
        assert a[key].equals(b[key]), f"training store changed by planted events: {key}"

    fitted_a, examples_a, train_a = _fit(store_a.path, split_a, data_a)
    fitted_b, examples_b, train_b = _fit(store_b.path, split_b, data_b)
    assert examples_a.num_rows > 1000 and any(c.startswith("store_") for c in examples_a.column_names)
    assert examples_a.column_names == examples_b.column_names
    for name in examples_a.column_names:  # every candidate (member, title), feature and label
        np.testing.assert_array_equal(examples_a.column(name).to_numpy(), examples_b.column(name).to_numpy(),
                                      err_msg=name)  # NaN (a missing feature) equals NaN here
    fitted_a.fit(train_a)
    fitted_b.fit(train_b)
    members = split_a.test_members
    np.testing.assert_array_equal(fitted_a.score(members), fitted_b.score(members))


def test_the_same_plants_do_reach_a_whole_log_store_and_ever_completed_strong(worlds):
    """The leaks this closes, shown on the same worlds: built from every event, the store
    changes; with "strong" = ever completed (load_eval_data), the training labels change."""
    root, base, planted = worlds
    whole_a = run_feature_job(base, root / "whole_a", engine="arrow", entities=JOINED_ENTITIES)
    whole_b = run_feature_job(planted, root / "whole_b", engine="arrow", entities=JOINED_ENTITIES)
    a, b = _store_tables(whole_a.path), _store_tables(whole_b.path)
    assert any(not a[key].equals(b[key]) for key in a.keys() & b.keys())
    ever = load_eval_data(f"world:{planted}").interactions.column("strong")
    _, split_b = load_split(f"world:{planted}")
    ever_strong = int(pc.sum(ever).as_py())
    at_point_in_time = int(pc.sum(split_b.train_events.column("strong")).as_py())
    assert ever_strong > at_point_in_time


def test_training_events_hold_no_held_out_row_and_nothing_after_a_point_in_time(worlds):
    _, base, _ = worlds
    _, split = load_split(f"world:{base}")
    events = load_dataset(base).events()
    kept = training_events(events, split)
    assert max(held_out_rows_seen(kept.events, split)) == 0
    assert np.median(held_out_rows_seen(events, split)) > 0  # the whole log does hold some
    assert kept.removed_held_out >= sum(len(items) for items in split.test_items)
    position = {int(m): i for i, m in enumerate(split.member_ids)}
    seconds = kept.events.column("timestamp").cast(pa.int64()).to_numpy() // 1000
    for m, s in zip(kept.events.column("member_id").to_pylist(), seconds.tolist()):
        if m in position:
            assert s <= split.train_last_ts[position[m]]


@pytest.mark.movielens
def test_movielens_training_events_hold_no_held_out_row(movielens_100k, tmp_path):
    """On ml-100k the whole log put a median 4,218 of the 9,110 held-out rows into an
    evaluated member's snapshot; the training events put none."""
    from producers.movielens.importer import import_movielens

    import_movielens(movielens_100k, tmp_path / "ml")
    _, split = load_split(f"movielens:{movielens_100k}")
    events = load_dataset(tmp_path / "ml").events()
    assert sum(len(items) for items in split.test_items) == 9110
    assert int(np.median(held_out_rows_seen(events, split))) == 4218
    assert max(held_out_rows_seen(training_events(events, split).events, split)) == 0
