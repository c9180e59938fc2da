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
