"""Ranker features are point in time: nothing after a member's now (their last training row) may
reach that member's rows. Candidates never include a title the member has already seen."""

from __future__ import annotations

import numpy as np
import pytest

from models.protocol import TrainData
from models.ranker_features import WINDOWS_DAYS, Candidates, FeatureBuilder, ranks_of
from models.retrieval import DAY_S

T0 = 1_700_000_000
N_MEMBERS, N_TITLES = 4, 8
MEMBER = 0  # the member whose features must not move
NOW = T0 + 40 * DAY_S  # member 0's last row


class FixedScores:
    """A source whose scores do not depend on the data, so the candidate set stays put and only
    the data-derived (window) features can change."""

    def fit(self, data):
        return self

    def score_histories(self, histories):
        return np.tile(np.arange(N_TITLES, 0, -1, dtype=float), (histories.n_rows, 1))


def base_rows() -> list[tuple[int, int, float, bool]]:
    """(member, title, day offset from T0, strong). Member 0 ends at day 40."""
    return [
        (0, 0, 0, True), (0, 1, 20, False), (0, 2, 40, True),
        (1, 3, 39.5, True), (1, 4, 35, False), (1, 3, 10, False), (1, 5, 300, True),
        (2, 4, 39.9, True), (2, 6, 1, False), (2, 7, 45, True),
        (3, 3, 50, False),
    ]


def train_data(rows) -> TrainData:
    m, t, d, s = zip(*rows)
    return TrainData.from_rows(m, t, [int(T0 + day * DAY_S) for day in d], (N_MEMBERS, N_TITLES),
                               strong=np.array(s))


def build(rows, members=(MEMBER,)) -> Candidates:
    data = train_data(rows)
    return FeatureBuilder(data, {"fixed": FixedScores()}, {"fixed": N_TITLES}, strong=data.strong).build(
        np.array(members))


def window_features(candidates: Candidates, member: int) -> dict[int, np.ndarray]:
    """Per candidate title of `member`, every feature not coming from a source."""
    own = [i for i, name in enumerate(candidates.names) if not name.startswith("fixed_")]
    rows = np.flatnonzero(candidates.members == member)
    return {int(candidates.titles[r]): candidates.features[r, own] for r in rows}


def test_feature_names_cover_every_window_and_the_strong_rate():
    names = build(base_rows()).names
    assert names[:2] == ["fixed_score", "fixed_rank"]
    assert all(f"plays_{d}d" in names for d in WINDOWS_DAYS)
    assert {"plays_7d_over_30d", "title_age_days", "member_rows", "member_tenure_days",
            "title_strong_rate"} <= set(names)


def test_window_counts_by_hand():
    candidates = build(base_rows())
    col = {name: i for i, name in enumerate(candidates.names)}
    row = {int(t): candidates.features[i] for i, t in enumerate(candidates.titles)}
    title3, title4 = row[3], row[4]
    # title 3 before day 40: days 39.5 and 10 (day 50 is after now)
    assert title3[col["plays_1d"]] == 1 and title3[col["plays_30d"]] == 1 and title3[col["plays_365d"]] == 2
    # title 4: days 35 and 39.9
    assert title4[col["plays_1d"]] == 1 and title4[col["plays_7d"]] == 2
    assert title3[col["title_age_days"]] == pytest.approx(30.0)
    assert title3[col["member_rows"]] == 3 and title3[col["member_tenure_days"]] == pytest.approx(40.0)
    # strong rate (strong + 1) / (plays + 2): title 3 has one strong of two plays before now
    assert title3[col["title_strong_rate"]] == pytest.approx(2 / 4)


def test_rows_after_the_members_now_by_other_members_change_none_of_their_features():
    before = window_features(build(base_rows()), MEMBER)
    later = [(1, 3, 40.5, True), (2, 4, 41, True), (3, 6, 60, False), (3, 5, 40.2, True), (1, 7, 40.01, True)]
    after = window_features(build(base_rows() + later), MEMBER)
    assert before.keys() == after.keys()
    for title in before:
        np.testing.assert_array_equal(before[title], after[title], err_msg=f"title {title} leaked")


def test_rows_before_the_members_now_do_change_them():
    before = window_features(build(base_rows()), MEMBER)
    earlier = [(1, 3, 39.8, True), (3, 6, 30, False)]
    after = window_features(build(base_rows() + earlier), MEMBER)
    assert not np.array_equal(before[3], after[3])
    assert not np.array_equal(before[6], after[6])
    np.testing.assert_array_equal(before[5], after[5])  # untouched title: unchanged


def test_candidates_exclude_seen_titles_and_are_grouped_by_member():
    rows = base_rows()
    data = train_data(rows)
    candidates = build(rows, members=(2, 0, 1))
    for member, title in zip(candidates.members, candidates.titles):
        assert data.matrix[member, title] == 0, f"member {member} already saw title {title}"
    assert list(dict.fromkeys(candidates.members.tolist())) == [2, 0, 1]  # contiguous, batch order
    np.testing.assert_array_equal(candidates.group_sizes(), [N_TITLES - 3, N_TITLES - 3, N_TITLES - 3])


def test_depth_limits_candidates_per_source():
    data = train_data(base_rows())
    candidates = FeatureBuilder(data, {"fixed": FixedScores()}, {"fixed": 2}).build(np.array([MEMBER]))
    # best unseen by the fixed scores: titles 3 and 4 (0, 1, 2 seen)
    assert sorted(candidates.titles.tolist()) == [3, 4]
    assert "title_strong_rate" not in candidates.names  # no strong flags given


def test_candidates_validate_lengths_and_names():
    with pytest.raises(ValueError, match="same length"):
        Candidates(np.array([0, 0]), np.array([1]), np.zeros((2, 1), np.float32), ["a"])
    with pytest.raises(ValueError, match="same length"):
        Candidates(np.array([0]), np.array([1]), np.zeros((2, 1), np.float32), ["a"])
    with pytest.raises(ValueError, match="2 feature columns for 1 names"):
        Candidates(np.array([0]), np.array([1]), np.zeros((1, 2), np.float32), ["a"])


def test_ranks_of_is_the_position_in_descending_order_ties_by_column():
    scores = np.array([[0.1, 0.9, 0.5], [1.0, 1.0, -np.inf]])
    np.testing.assert_array_equal(ranks_of(scores), [[2, 0, 1], [0, 1, 2]])
