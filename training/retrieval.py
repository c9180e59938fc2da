"""Candidate models: each fits on TrainData and scores members against every title, so the
offline evaluation, the ranker's candidate generation and (later) serving use the same code.

- RecencyEASE: "because you watched" — EASE item-item weights applied to a history in which
  recent titles weigh more (what a member watched last says most about what they watch next).
- SequentialCooccurrence: titles watched close together in members' sequences (sessions).
- Embeddings: matrix-factorization member and title vectors behind a VectorIndex (exact dot
  product here; an ANN index can replace it through the same interface).
- RecentPopularity (trending), PopularityByCountry, NewReleases, ContentBased (genres, year,
  maturity: reaches titles with no history at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from training.peers import ALS, EASE
from training.protocol import TrainData

DAY_S = 86_400


def recency_history(data: TrainData, tau: float, floor: float) -> sp.csr_matrix:
    """Members x titles, each watched title weighted floor + exp(-steps_from_latest / tau)."""
    weights = floor + np.exp(-data.position_from_end() / tau)
    history = sp.csr_matrix((weights, (data.members, data.titles)), shape=data.shape)
    history.sum_duplicates()
    return history


class RecencyEASE:
    def __init__(self, l2: float = 300.0, tau: float = 10.0, floor: float = 0.3):
        self.l2, self.tau, self.floor = l2, tau, floor

    def fit(self, data: TrainData) -> "RecencyEASE":
        self.weights_ = EASE(self.l2).fit(data).weights_
        self.history_ = recency_history(data, self.tau, self.floor)
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        return np.asarray(self.history_[members] @ self.weights_)

    def because(self, member: int, title: int, top: int = 1) -> list[int]:
        """The history titles that contribute most to `title`'s score (for the explanation)."""
        row = self.history_[member]
        contributions = row.data * self.weights_[row.indices, title]
        return [int(row.indices[i]) for i in np.argsort(-contributions)[:top]]


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
        self.history_ = recency_history(data, self.tau, 0.0)
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        return np.asarray(self.history_[members] @ self.affinity_)


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
    """Member and title vectors from implicit ALS; scoring goes through the VectorIndex."""

    def __init__(self, factors: int = 64, seed: int = 7):
        self.factors, self.seed = factors, seed

    def fit(self, data: TrainData) -> "Embeddings":
        als = ALS(factors=self.factors, random_state=self.seed).fit(data)
        self.member_vectors_ = als.user_factors_
        self.index_ = ExactDotIndex(als.item_factors_)
        return self

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

    def score(self, members: np.ndarray) -> np.ndarray:
        out = np.zeros((len(members), self.n_titles_))
        for row, member in enumerate(members):
            now = self.now_[member]
            lo, hi = np.searchsorted(self.times_, [now - self.days * DAY_S, now], side="right")
            out[row] = np.bincount(self.titles_[lo:hi], minlength=self.n_titles_)
        return out


class PopularityByCountry:
    """Top titles among members of the same country (country code per member index)."""

    def __init__(self, member_country: np.ndarray):
        self.member_country = np.asarray(member_country)

    def fit(self, data: TrainData) -> "PopularityByCountry":
        codes, inverse = np.unique(self.member_country, return_inverse=True)
        onehot = sp.csr_matrix((np.ones(len(inverse)), (inverse, np.arange(len(inverse)))),
                               shape=(len(codes), len(inverse)))
        self.by_country_ = np.asarray((onehot @ data.matrix).todense())
        self.code_of_member_ = inverse
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        return self.by_country_[self.code_of_member_[members]]


class NewReleases:
    """Recently released titles, newest first, within `days` of the member's now."""

    def __init__(self, release_ts: np.ndarray, days: float = 60.0):
        self.release_ts = np.asarray(release_ts, dtype=np.float64)  # NaN when unknown
        self.days = days

    def fit(self, data: TrainData) -> "NewReleases":
        self.now_ = data.last_ts
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        age_days = (self.now_[members, None] - self.release_ts[None, :]) / DAY_S
        fresh = (age_days >= 0) & (age_days <= self.days)
        return np.where(fresh, self.days - age_days, 0.0)


@dataclass
class TitleContent:
    """What a title is, independent of who watched it: for cold-start titles and features."""

    genres: sp.csr_matrix  # titles x genres, binary
    release_year: np.ndarray  # float, NaN unknown
    maturity: np.ndarray  # int levels

    @classmethod
    def empty(cls, n_titles: int) -> "TitleContent":
        return cls(sp.csr_matrix((n_titles, 1)), np.full(n_titles, np.nan), np.zeros(n_titles, dtype=int))


class ContentBased:
    """Genre profile of the member's (recency-weighted) history against each title's genres,
    plus closeness to the release years they watch: needs no interactions for the title."""

    def __init__(self, content: TitleContent, tau: float = 20.0):
        self.content, self.tau = content, tau

    def fit(self, data: TrainData) -> "ContentBased":
        genres = self.content.genres.astype(np.float64)
        norms = np.sqrt(np.asarray(genres.multiply(genres).sum(axis=1)).ravel())
        self.title_genres_ = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ genres
        history = recency_history(data, self.tau, 0.2)
        profile = history @ self.title_genres_
        profile_norm = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1)).ravel())
        self.profile_ = sp.diags(1.0 / np.maximum(profile_norm, 1e-12)) @ profile
        years = np.nan_to_num(self.content.release_year, nan=np.nanmean(self.content.release_year)
                              if np.isfinite(self.content.release_year).any() else 0.0)
        weight_sum = np.asarray(history.sum(axis=1)).ravel()
        self.member_year_ = (history @ years) / np.maximum(weight_sum, 1e-12)
        self.years_ = years
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        genre_match = np.asarray((self.profile_[members] @ self.title_genres_.T).todense())
        year_gap = np.abs(self.member_year_[members, None] - self.years_[None, :])
        return genre_match + 0.1 * np.exp(-year_gap / 10.0)
