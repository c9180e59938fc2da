"""The contract every candidate model keeps (peers and ours alike), in the style of `implicit`'s
tests: one base class states it, one small class per model inherits it.

The shared fixture is a "checkerboard": two groups of members, each playing only its own half
of the titles, with one own-half title held out per member. A collaborative model must put
that held-out title above every title of the other half. Popularity-type models are checked
against their documented behaviour instead (most played first, point in time, freshness window,
cold-start by content).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.peers import ALS, BPR, EASE, ItemKNN, Popularity
from models.protocol import TrainData
from models.retrieval import (
    DAY_S,
    ContentBased,
    Embeddings,
    ExactDotIndex,
    RecencyEASE,
    RecentPopularity,
    SOURCE_KINDS,
    SequentialCooccurrence,
    TitleContent,
)

GROUP_MEMBERS = 6  # members per group
HALF = 6  # titles per group
N_MEMBERS, N_TITLES = 2 * GROUP_MEMBERS, 2 * HALF
T0 = 1_700_000_000  # seconds


def group_of_member(member: int) -> int:
    return member // GROUP_MEMBERS


def group_of_title(title: int) -> int:
    return title // HALF


def checkerboard() -> tuple[TrainData, dict[int, int]]:
    """Each member plays their own half minus one title (a different one per member), one play
    every 6 hours; returns the data and the held-out title per member."""
    members, titles, times, held = [], [], [], {}
    for member in range(N_MEMBERS):
        group = group_of_member(member)
        own = [group * HALF + t for t in range(HALF)]
        held[member] = own[member % HALF]
        for step, title in enumerate(t for t in own if t != held[member]):
            members.append(member)
            titles.append(title)
            times.append(T0 + member * 3600 + step * DAY_S // 4)
    return TrainData.from_rows(members, titles, times, (N_MEMBERS, N_TITLES)), held


def content_by_group() -> TitleContent:
    """Genre 0 for the first half, genre 1 for the second: content agrees with the checkerboard."""
    genres = sp.csr_matrix((np.ones(N_TITLES), (np.arange(N_TITLES), np.arange(N_TITLES) // HALF)),
                           shape=(N_TITLES, 2))
    return TitleContent(genres, np.full(N_TITLES, 2000.0), np.zeros(N_TITLES, dtype=int))


@pytest.fixture(scope="module")
def board() -> tuple[TrainData, dict[int, int]]:
    return checkerboard()


class ModelContract:
    """What every model must do. Subclasses provide `make_model()`."""

    def make_model(self):
        raise NotImplementedError

    def test_fit_returns_self(self, board):
        model = self.make_model()
        assert model.fit(board[0]) is model

    def test_score_shape_and_finite(self, board):
        data, _ = board
        model = self.make_model().fit(data)
        for members in (np.arange(N_MEMBERS), np.array([3]), np.array([7, 0, 7])):
            scores = np.asarray(model.score(members))
            assert scores.shape == (len(members), N_TITLES)
            assert np.isfinite(scores).all()

    def test_rows_do_not_depend_on_the_batch(self, board):
        data, _ = board
        model = self.make_model().fit(data)
        everyone = np.asarray(model.score(np.arange(N_MEMBERS)))
        some = np.array([9, 2, 5])
        np.testing.assert_allclose(np.asarray(model.score(some)), everyone[some], rtol=1e-6, atol=1e-9)

    def test_deterministic_under_a_seed(self, board):
        data, _ = board
        first = np.asarray(self.make_model().fit(data).score(np.arange(N_MEMBERS)))
        second = np.asarray(self.make_model().fit(data).score(np.arange(N_MEMBERS)))
        np.testing.assert_array_equal(first, second)



class CollaborativeContract(ModelContract):
    """Plus: learn from who-played-what, so solve the checkerboard."""

    def test_checkerboard_own_group_unseen_title_beats_other_group(self, board):
        data, held = board
        scores = np.asarray(self.make_model().fit(data).score(np.arange(N_MEMBERS)))
        for member, title in held.items():
            other_half = [t for t in range(N_TITLES) if group_of_title(t) != group_of_member(member)]
            assert scores[member, title] > scores[member, other_half].max(), (
                f"member {member}: held-out own-group title {title} scored {scores[member, title]:.4g}, "
                f"best other-group title {scores[member, other_half].max():.4g}")


# ------------------------------------------------------------------ collaborative peers


class TestItemKNN(CollaborativeContract):
    def make_model(self):
        return ItemKNN()


class TestEASE(CollaborativeContract):
    def make_model(self):
        return EASE()


class TestALS(CollaborativeContract):
    def make_model(self):
        return ALS(random_state=7)


class TestBPR(CollaborativeContract):
    def make_model(self):
        return BPR(factors=16, learning_rate=0.05, iterations=200, random_state=7)  # tiny fixture: faster steps


# ------------------------------------------------------------------ our collaborative sources


class TestRecencyEASE(CollaborativeContract):
    def make_model(self):
        return RecencyEASE()

    def test_because_names_a_history_title_of_the_member(self, board):
        data, held = board
        model = self.make_model().fit(data)
        for member, title in held.items():
            (reason,) = model.because(member, title)
            assert data.matrix[member, reason] == 1.0
            assert group_of_title(reason) == group_of_member(member)


class TestSequentialCooccurrence(CollaborativeContract):
    def make_model(self):
        return SequentialCooccurrence()

    def test_titles_never_in_a_shared_sequence_score_zero(self, board):
        data, _ = board
        scores = self.make_model().fit(data).score(np.arange(N_MEMBERS))
        for member in range(N_MEMBERS):
            other_half = [t for t in range(N_TITLES) if group_of_title(t) != group_of_member(member)]
            assert (scores[member, other_half] == 0).all()


class TestEmbeddings(CollaborativeContract):
    def make_model(self):
        return Embeddings(seed=7)

    def test_scores_are_the_index_dot_products(self, board):
        data, _ = board
        model = self.make_model().fit(data)
        members = np.array([1, 8])
        expected = model.member_vectors_[members].astype(np.float32) @ model.index_.vectors.T
        np.testing.assert_allclose(model.score(members), expected, rtol=1e-5)


def test_exact_dot_index_search_returns_best_first():
    index = ExactDotIndex(np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-1.0, 0.0]]))
    ids, scores = index.search(np.array([[1.0, 0.0], [0.0, 1.0]]), k=2)
    np.testing.assert_array_equal(ids, [[2, 0], [2, 1]])
    np.testing.assert_allclose(scores, [[2.0, 1.0], [2.0, 1.0]])
    ids, _ = index.search(np.array([[1.0, 0.0]]), k=10)  # k larger than the catalog
    assert sorted(ids[0].tolist()) == [0, 1, 2, 3]


# ------------------------------------------------------------------ popularity-type models


def plays(rows, shape=(4, 5)) -> TrainData:
    """TrainData from (member, title, day) rows; time in whole days after T0."""
    m, t, d = zip(*rows)
    return TrainData.from_rows(m, t, [T0 + day * DAY_S for day in d], shape)


class TestPopularity(ModelContract):
    def make_model(self):
        return Popularity()

    def test_most_played_title_ranks_first_for_everyone(self):
        data = plays([(0, 2, 0), (1, 2, 1), (2, 2, 2), (0, 4, 3), (1, 4, 4), (3, 0, 5)])
        scores = self.make_model().fit(data).score(np.arange(4))
        assert (scores.argmax(axis=1) == 2).all()
        np.testing.assert_array_equal(scores[0], [1, 0, 3, 0, 2])  # members per title

    def test_repeated_plays_by_one_member_count_once(self):
        data = plays([(0, 1, 0), (0, 1, 1), (0, 1, 2), (1, 3, 0), (2, 3, 1)])
        scores = self.make_model().fit(data).score(np.array([0]))
        assert scores[0].argmax() == 3


class TestRecentPopularity(ModelContract):
    def make_model(self):
        return RecentPopularity(days=7)

    def test_most_played_in_the_window_ranks_first(self):
        # title 1 played three times in the week before member 0's now (day 20); title 2 more
        # often but a month earlier, so it is not trending
        rows = [(1, 2, 0), (2, 2, 1), (3, 2, 2), (1, 2, 3), (2, 2, 4),
                (1, 1, 15), (2, 1, 16), (3, 1, 17), (0, 3, 20)]
        scores = self.make_model().fit(plays(rows)).score(np.array([0]))
        assert scores[0].argmax() == 1
        assert scores[0, 2] == 0

    def test_point_in_time_plays_after_the_members_now_do_not_count(self):
        # member 0's now is day 10; title 4's only plays are on days 11-12 (other members)
        rows = [(0, 1, 9), (0, 0, 10), (1, 4, 11), (2, 4, 12), (3, 4, 12), (1, 1, 9)]
        data = plays(rows)
        scores = self.make_model().fit(data).score(np.array([0, 3]))
        assert scores[0, 4] == 0, "counted plays after member 0's now"
        assert scores[0].argmax() == 1
        assert scores[1, 4] == 3  # member 3's now is day 12: all three plays are before it


class TestContentBased(ModelContract):
    def make_model(self):
        return ContentBased(content_by_group())

    def test_cold_start_title_of_the_favourite_genre_ranks_first(self):
        # genres: title 0,1 comedy; 2,3 horror; 4 comedy and never played by anyone
        genres = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 0]], dtype=float))
        content = TitleContent(genres, np.array([1990.0, 1991, 1990, 1991, 1990]), np.zeros(5, dtype=int))
        data = plays([(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 3, 0)])  # member 0 mostly comedy
        scores = ContentBased(content).fit(data).score(np.array([0]))[0]
        assert data.matrix[:, 4].sum() == 0  # nobody ever played title 4
        assert scores[4] > scores[3]  # the unseen titles: favourite genre first
        assert scores[4] >= scores[:4].max()

    def test_titles_without_known_year_still_get_finite_scores(self):
        content = TitleContent.empty(5)
        scores = ContentBased(content).fit(plays([(0, 0, 0), (1, 1, 0)])).score(np.arange(4))
        assert np.isfinite(scores).all()


# -- the array form every served source has (models/bundle.py builds served models from it) -------

SERVED_SOURCES = {
    "RecencyEASE": RecencyEASE,
    "SequentialCooccurrence": SequentialCooccurrence,
    "Embeddings": lambda: Embeddings(factors=8, seed=7),
    "RecentPopularity": lambda: RecentPopularity(days=7),
    "ContentBased": lambda: ContentBased(content_by_group()),
}


def test_every_source_kind_a_bundle_can_hold_is_checked_here():
    assert set(SERVED_SOURCES) == set(SOURCE_KINDS)


@pytest.mark.parametrize("kind", sorted(SERVED_SOURCES))
def test_array_form_scores_exactly_like_the_fitted_source(board, kind):
    """Settings through JSON, state as plain arrays: the rebuilt source scores bit for bit alike."""
    import json

    from models.histories import Histories

    data, _ = board
    fitted = SERVED_SOURCES[kind]().fit(data)
    params, arrays = fitted.to_arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    rebuilt = SOURCE_KINDS[kind].from_arrays(json.loads(json.dumps(params)),
                                             {name: np.array(a, copy=True) for name, a in arrays.items()}, data)
    members = np.array([0, 5, 11])
    np.testing.assert_array_equal(rebuilt.score(members), fitted.score(members))
    histories = Histories.from_lists([[1, 2], [], [7, 8, 9]], [T0, T0, T0 + DAY_S], N_TITLES)
    np.testing.assert_array_equal(rebuilt.score_histories(histories), fitted.score_histories(histories))
