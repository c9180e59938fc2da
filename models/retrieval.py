"""Candidate models: each fits on TrainData and scores members against every title, so the
offline evaluation, the ranker's candidate generation and (later) serving use the same code.

- RecencyEASE: "because you watched" — EASE item-item weights applied to a history in which
  recent titles weigh more (what a member watched last says most about what they watch next).
- SequentialCooccurrence: titles watched close together in members' sequences (sessions).
- Embeddings: matrix-factorization member and title vectors behind a VectorIndex (exact dot
  product here; an ANN index can replace it through the same interface).
- RecentPopularity (trending), ContentBased (genres, year, maturity: reaches titles with no
  history at all).

Each fitted source also turns into plain arrays and back (`to_arrays` / `from_arrays`: settings
as a JSON-able dict, fitted state as numpy arrays), so a served model is a set of explicit files
(models/bundle.py), never a pickle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from marquee.names import DAY_S
from models.histories import Histories
from models.peers import ALS, EASE
from models.protocol import TrainData

Arrays = dict[str, np.ndarray]  # a fitted state: name -> array (names become file names)


def csr_to_arrays(prefix: str, matrix: sp.spmatrix) -> Arrays:
    matrix = sp.csr_matrix(matrix)
    return {f"{prefix}.data": matrix.data, f"{prefix}.indices": matrix.indices,
            f"{prefix}.indptr": matrix.indptr, f"{prefix}.shape": np.array(matrix.shape, dtype=np.int64)}


def csr_from_arrays(prefix: str, arrays: Arrays) -> sp.csr_matrix:
    shape = tuple(int(n) for n in arrays[f"{prefix}.shape"])
    return sp.csr_matrix((arrays[f"{prefix}.data"], arrays[f"{prefix}.indices"], arrays[f"{prefix}.indptr"]),
                         shape=shape)


class RecencyEASE:
    """EASE item-item weights over a recency-weighted history (`tau`: how fast older titles fade;
    `floor`: what even the oldest title keeps)."""

    def __init__(self, l2: float = 300.0, tau: float = 10.0, floor: float = 0.3):
        self.l2, self.tau, self.floor = l2, tau, floor

    def fit(self, data: TrainData) -> "RecencyEASE":
        self.weights_ = EASE(self.l2).fit(data).weights_
        self.data_ = data
        return self

    def to_arrays(self) -> tuple[dict, Arrays]:
        return {"l2": self.l2, "tau": self.tau, "floor": self.floor}, {"weights": self.weights_}

    @classmethod
    def from_arrays(cls, params: dict, arrays: Arrays, data: TrainData) -> "RecencyEASE":
        source = cls(**params)
        source.weights_, source.data_ = arrays["weights"], data
        return source

    def score_histories(self, histories: Histories) -> np.ndarray:
        return np.asarray(histories.weighted(self.tau, self.floor) @ self.weights_)

    def score(self, members: np.ndarray) -> np.ndarray:
        return self.score_histories(Histories.from_data(self.data_, members))

    def similar(self, title: int) -> np.ndarray:
        """Item-item scores of every title for one seed title ("because you watched X")."""
        return self.weights_[title]

    def because(self, member: int, title: int, top: int = 1) -> list[int]:
        """The history titles that contribute most to `title`'s score (for the explanation)."""
        row = Histories.from_data(self.data_, [member]).weighted(self.tau, self.floor)
        contributions = row.data * self.weights_[row.indices, title]
        return [int(row.indices[i]) for i in np.argsort(-contributions)[:top]]

    def because_many(self, histories: Histories, titles: np.ndarray) -> np.ndarray:
        """For one member's history (row 0) and many titles, the history title contributing most
        to each title's score, or -1 where nothing contributes (serving's explanations)."""
        row = histories.weighted(self.tau, self.floor)[0]
        if row.nnz == 0 or len(titles) == 0:
            return np.full(len(titles), -1)
        contributions = row.data[:, None] * self.weights_[np.ix_(row.indices, titles)]
        best = contributions.argmax(axis=0)
        return np.where(contributions[best, np.arange(len(titles))] > 0, row.indices[best], -1)


class SequentialCooccurrence:
    """Item-item affinity from pairs of titles at most `window` steps apart in one member's
    sequence (closer pairs weigh more), normalised by popularity so blockbusters do not swamp it."""

    def __init__(self, window: int = 20, step_decay: float = 0.9, pop_exponent: float = 0.8,
                 tau: float = 3.0):
        self.window, self.step_decay, self.pop_exponent, self.tau = window, step_decay, pop_exponent, tau

    def fit(self, data: TrainData) -> "SequentialCooccurrence":
        n = data.shape[1]
        rows, cols, vals = [], [], []
        for step in range(1, self.window + 1):
            same = data.members[step:] == data.members[:-step]
            a, b = data.titles[:-step][same], data.titles[step:][same]
            weight = np.full(len(a), self.step_decay ** (step - 1))
            rows += [a, b]
            cols += [b, a]
            vals += [weight, weight]
        co = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(n, n)).toarray() if rows else np.zeros((n, n))
        np.fill_diagonal(co, 0.0)
        popularity = np.asarray(data.matrix.sum(axis=0)).ravel() + 1.0
        self.affinity_ = co / np.outer(popularity, popularity) ** (self.pop_exponent / 2)
        self.data_ = data
        return self

    def to_arrays(self) -> tuple[dict, Arrays]:
        params = {"window": self.window, "step_decay": self.step_decay, "pop_exponent": self.pop_exponent,
                  "tau": self.tau}
        return params, {"affinity": self.affinity_}

    @classmethod
    def from_arrays(cls, params: dict, arrays: Arrays, data: TrainData) -> "SequentialCooccurrence":
        source = cls(**params)
        source.affinity_, source.data_ = arrays["affinity"], data
        return source

    def score_histories(self, histories: Histories) -> np.ndarray:
        return np.asarray(histories.weighted(self.tau, 0.0) @ self.affinity_)

    def score(self, members: np.ndarray) -> np.ndarray:
        return self.score_histories(Histories.from_data(self.data_, members))


class VectorIndex(Protocol):
    """Nearest titles by inner product; an ANN index (HNSW, ScaNN) can stand in for the exact one."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


class ExactDotIndex:
    def __init__(self, vectors: np.ndarray):
        self.vectors = np.asarray(vectors, dtype=np.float32)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        return np.asarray(queries, dtype=np.float32) @ self.vectors.T

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = self.scores(queries)
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


class Embeddings:
    """Member and title vectors from implicit ALS; scoring goes through the VectorIndex.

    A history is folded in: its member vector is the ALS least-squares solution against the
    fitted title vectors (implicit's own user step), so a member who watched something a second
    ago, or joined after the fit, gets a vector without refitting."""

    def __init__(self, factors: int = 64, seed: int = 7):
        self.factors, self.seed = factors, seed

    def fit(self, data: TrainData) -> "Embeddings":
        als = ALS(factors=self.factors, random_state=self.seed).fit(data)
        self.member_vectors_ = als.user_factors_
        self.index_ = ExactDotIndex(als.item_factors_)
        items = als.item_factors_.astype(np.float64)
        self.alpha_, self.regularization_ = als.alpha, als.regularization
        self.gram_ = items.T @ items + als.regularization * np.eye(items.shape[1])
        return self

    def to_arrays(self) -> tuple[dict, Arrays]:
        params = {"factors": self.factors, "seed": self.seed, "alpha": float(self.alpha_),
                  "regularization": float(self.regularization_)}
        return params, {"member_vectors": self.member_vectors_, "title_vectors": self.index_.vectors,
                        "gram": self.gram_}

    @classmethod
    def from_arrays(cls, params: dict, arrays: Arrays, data: TrainData) -> "Embeddings":
        source = cls(factors=params["factors"], seed=params["seed"])
        source.alpha_, source.regularization_ = params["alpha"], params["regularization"]
        source.member_vectors_, source.gram_ = arrays["member_vectors"], arrays["gram"]
        source.index_ = ExactDotIndex(arrays["title_vectors"])
        return source

    def fold_in(self, histories: Histories) -> np.ndarray:
        """Member vectors for each history row: (YtY + reg I + (a-1) Ys^T Ys)^-1 a Ys^T 1."""
        items = self.index_.vectors.astype(np.float64)
        seen = histories.weighted(1.0, 0.0)
        seen.data[:] = 1.0  # ALS saw a binary matrix
        vectors = np.zeros((histories.n_rows, items.shape[1]))
        for row in range(histories.n_rows):
            titles = seen.indices[seen.indptr[row]:seen.indptr[row + 1]]
            if len(titles) == 0:
                continue
            ys = items[titles]
            system = self.gram_ + (self.alpha_ - 1.0) * (ys.T @ ys)
            vectors[row] = np.linalg.solve(system, self.alpha_ * ys.sum(axis=0))
        return vectors

    def score_histories(self, histories: Histories) -> np.ndarray:
        return self.index_.scores(self.fold_in(histories))

    def score(self, members: np.ndarray) -> np.ndarray:
        return self.index_.scores(self.member_vectors_[members])


class RecentPopularity:
    """Trending: what was played most in the days before the member's now (point in time:
    nothing after it)."""

    def __init__(self, days: float = 7.0):
        self.days = days

    def fit(self, data: TrainData) -> "RecentPopularity":
        order = np.argsort(data.timestamps, kind="stable")  # once, not per scoring call
        self.times_, self.titles_ = data.timestamps[order], data.titles[order]
        self.now_, self.n_titles_ = data.last_ts, data.shape[1]
        return self

    def to_arrays(self) -> tuple[dict, Arrays]:
        return ({"days": self.days, "n_titles": int(self.n_titles_)},
                {"times": self.times_, "titles": self.titles_, "now": self.now_})

    @classmethod
    def from_arrays(cls, params: dict, arrays: Arrays, data: TrainData) -> "RecentPopularity":
        source = cls(days=params["days"])
        source.times_, source.titles_, source.now_ = arrays["times"], arrays["titles"], arrays["now"]
        source.n_titles_ = params["n_titles"]
        return source

    def at(self, now: np.ndarray) -> np.ndarray:
        """Plays of every title in the `days` before each `now` (seconds)."""
        out = np.zeros((len(now), self.n_titles_))
        for row, when in enumerate(np.asarray(now)):
            lo, hi = np.searchsorted(self.times_, [when - self.days * DAY_S, when], side="right")
            out[row] = np.bincount(self.titles_[lo:hi], minlength=self.n_titles_)
        return out

    def score_histories(self, histories: Histories) -> np.ndarray:
        return self.at(histories.now)

    def score(self, members: np.ndarray) -> np.ndarray:
        return self.at(self.now_[np.asarray(members)])


@dataclass
class TitleContent:
    """What a title is, independent of who watched it: for cold-start titles and features."""

    genres: sp.csr_matrix  # titles x genres, binary
    release_year: np.ndarray  # float, NaN unknown
    maturity: np.ndarray  # int levels

    @classmethod
    def empty(cls, n_titles: int) -> "TitleContent":
        return cls(sp.csr_matrix((n_titles, 1)), np.full(n_titles, np.nan), np.zeros(n_titles, dtype=int))

    def to_arrays(self) -> Arrays:
        return {**csr_to_arrays("genres", self.genres), "release_year": self.release_year, "maturity": self.maturity}

    @classmethod
    def from_arrays(cls, arrays: Arrays) -> "TitleContent":
        return cls(csr_from_arrays("genres", arrays), arrays["release_year"], arrays["maturity"])


class ContentBased:
    """Genre profile of the member's (recency-weighted) history against each title's genres,
    plus closeness to the release years they watch: needs no interactions for the title."""

    def __init__(self, content: TitleContent, tau: float = 20.0):
        self.content, self.tau = content, tau

    def fit(self, data: TrainData) -> "ContentBased":
        genres = self.content.genres.astype(np.float64)
        norms = np.sqrt(np.asarray(genres.multiply(genres).sum(axis=1)).ravel())
        self.title_genres_ = (sp.diags(1.0 / np.maximum(norms, 1e-12)) @ genres).tocsr()
        self.years_ = np.nan_to_num(self.content.release_year, nan=np.nanmean(self.content.release_year)
                                    if np.isfinite(self.content.release_year).any() else 0.0)
        self.data_ = data
        return self

    def to_arrays(self) -> tuple[dict, Arrays]:
        arrays = {**{f"content.{k}": v for k, v in self.content.to_arrays().items()},
                  **csr_to_arrays("title_genres", self.title_genres_), "years": self.years_}
        return {"tau": self.tau}, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: Arrays, data: TrainData) -> "ContentBased":
        content = TitleContent.from_arrays({k[len("content."):]: v for k, v in arrays.items()
                                            if k.startswith("content.")})
        source = cls(content, tau=params["tau"])
        source.title_genres_, source.years_ = csr_from_arrays("title_genres", arrays), arrays["years"]
        source.data_ = data
        return source

    def score_profiles(self, profile: np.ndarray, member_year: np.ndarray) -> np.ndarray:
        """Scores from genre profiles (rows x genres, any scale) and preferred release years."""
        profile = np.asarray(profile, dtype=np.float64)
        profile = profile / np.maximum(np.linalg.norm(profile, axis=1, keepdims=True), 1e-12)
        genre_match = np.asarray(self.title_genres_ @ profile.T).T
        year_gap = np.abs(np.asarray(member_year)[:, None] - self.years_[None, :])
        return genre_match + 0.1 * np.exp(-year_gap / 10.0)

    def score_histories(self, histories: Histories) -> np.ndarray:
        history = histories.weighted(self.tau, 0.2)
        profile = np.asarray((history @ self.title_genres_).todense())
        weight_sum = np.asarray(history.sum(axis=1)).ravel()
        member_year = (history @ self.years_) / np.maximum(weight_sum, 1e-12)
        return self.score_profiles(profile, member_year)

    def score(self, members: np.ndarray) -> np.ndarray:
        return self.score_histories(Histories.from_data(self.data_, members))


# The kinds of fitted source a model bundle can hold, by the name its manifest records.
SOURCE_KINDS = {cls.__name__: cls for cls in
                (RecencyEASE, SequentialCooccurrence, Embeddings, RecentPopularity, ContentBased)}
