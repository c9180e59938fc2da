"""The evaluation protocol on tiny inputs whose right answers are known by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.protocol import evaluate, temporal_split, top_k


def interactions(rows):
    m, t, ts = zip(*rows)
    return pa.table({"member_id": list(m), "title_id": list(t), "timestamp": list(ts)})


def test_split_holds_out_the_last_by_time_for_active_members_only():
    rows = [(1, 100 + i, 1000 - i) for i in range(25)]  # member 1: 25 titles, reversed times
    rows += [(2, 100 + i, i) for i in range(5)]  # member 2: 5 titles, never evaluated
    split = temporal_split(interactions(rows), holdout=10, min_interactions=20)
    assert list(split.member_ids) == [1, 2]
    assert list(split.test_members) == [0]
    held_out = sorted(split.title_ids[split.test_items[0]])
    assert held_out == list(range(100, 110))  # the latest timestamps are the smallest offsets
    assert split.train[0].nnz == 15 and split.train[1].nnz == 5
    assert split.train_last_ts[0] == 1000 - 10


def test_ties_in_time_keep_input_order_and_repeats_count_once():
    rows = [(1, 100 + i, 7) for i in range(22)] + [(1, 100, 8)]  # one repeat, all tied otherwise
    split = temporal_split(interactions(rows), holdout=10, min_interactions=20)
    assert sorted(split.title_ids[split.test_items[0]]) == list(range(112, 122))
    with pytest.raises(ValueError, match="missing column 'timestamp'"):
        temporal_split(pa.table({"member_id": [1], "title_id": [1]}))


def test_perfect_and_useless_scorers():
    rows = [(1, i, i) for i in range(30)] + [(2, i, i) for i in range(30, 60)]
    split = temporal_split(interactions(rows), holdout=10, min_interactions=20)

    def oracle(members):
        scores = np.zeros((len(members), split.n_titles))
        for row, member in enumerate(members):
            position = list(split.test_members).index(member)
            scores[row, split.test_items[position]] = 1.0
        return scores

    perfect = evaluate(split, oracle)
    assert perfect.ndcg_at_10 == pytest.approx(1.0) and perfect.recall_at_20 == pytest.approx(1.0)

    # held-out titles ranked below the 30 unseen titles of the other member: no hit in the top 20
    worst = evaluate(split, lambda members: -oracle(members))
    assert worst.ndcg_at_10 == 0.0 and worst.recall_at_20 == 0.0


def test_ndcg_known_value_for_one_hit_at_rank_two():
    rows = [(1, i, i) for i in range(30)] + [(2, i, i) for i in range(30, 60)]
    split = temporal_split(interactions(rows), holdout=10, min_interactions=20)
    held = split.test_items[0]

    def one_hit_second(members):
        scores = np.zeros((len(members), split.n_titles))
        scores[0, held] = -1.0  # nine held-out titles last
        scores[0, held[0]] = 1.0  # one held-out title second ...
        scores[0, 45] = 2.0  # ... behind a title member 1 never saw
        return scores

    ideal = sum(1 / np.log2(np.arange(2, 12)))
    first_member_ndcg = (1 / np.log2(3)) / ideal
    one = evaluate(
        type(split)(split.member_ids, split.title_ids, split.train, split.train_last_ts,
                    split.train_events, split.test_members[:1], split.test_items[:1]),
        one_hit_second)
    assert one.ndcg_at_10 == pytest.approx(first_member_ndcg)
    assert one.recall_at_20 == pytest.approx(0.1)


def test_top_k_masks_training_titles():
    import scipy.sparse as sp

    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    seen = sp.csr_matrix(np.array([[1, 0, 1, 0]], dtype=np.float32))
    assert top_k(scores, seen, 2).tolist() == [[1, 3]]


def test_validation_is_each_evaluated_members_last_ten_training_rows_before_test():
    from models.protocol import validation_split

    rows = [(1, 100 + i, 10 * i) for i in range(25)]  # member 1: titles 100..124 in time order
    rows += [(2, 200 + i, 5 + i) for i in range(5)]  # member 2: too few to be evaluated
    rows += [(3, 300 + i, 1000 - i) for i in range(23)]  # member 3: reversed times
    split = temporal_split(interactions(rows), holdout=10, min_interactions=20)
    validation = validation_split(split, holdout=10)
    index = {int(t): i for i, t in enumerate(split.title_ids)}

    def titles(members_row):
        return sorted(int(split.title_ids[t]) for t in members_row)

    assert list(validation.test_members) == list(split.test_members) == [0, 2]
    # member 1: test 115..124, validation the ten before (105..114), training-for-validation 100..104
    assert titles(split.test_items[0]) == list(range(115, 125))
    assert titles(validation.test_items[0]) == list(range(105, 115))
    assert titles(validation.train[0].indices) == list(range(100, 105))
    # member 3 (times run backwards): test = 300..309, validation = 310..319, the rest trains
    assert titles(validation.test_items[1]) == list(range(310, 320))
    assert titles(validation.train[2].indices) == [320, 321, 322]
    # member 2 is not evaluated: keeps all five rows in both trainings, has no validation set
    assert validation.train[1].nnz == split.train[1].nnz == 5
    # no test row of anyone enters training-for-validation, and no row after a member's point in time
    for position, member in enumerate(split.test_members):
        assert not set(split.test_items[position]) & set(validation.train[member].indices)
        assert not set(validation.test_items[position]) & set(validation.train[member].indices)
    events = validation.train_events
    member_col, ts_col = events.column("member").to_numpy(), events.column("timestamp").to_numpy()
    assert ts_col[member_col == 0].max() == 40 < 50  # member 1's first validation row is at t=50
    assert validation.train_last_ts[0] == 40 and validation.train_last_ts[2] == 1000 - 20
    assert validation.train.nnz == split.train.nnz - 20
    assert index[105] in validation.test_items[0] and index[105] not in split.test_items[0]


def test_validation_keeps_the_strong_flag_for_its_training_rows():
    from models.protocol import validation_split

    rows = [(1, 100 + i, i) for i in range(25)]
    table = interactions(rows).append_column("strong", pa.array([i % 2 == 0 for i in range(25)]))
    validation = validation_split(temporal_split(table))
    data = validation.train_data()
    assert data.strong is not None and list(data.strong) == [True, False, True, False, True]
