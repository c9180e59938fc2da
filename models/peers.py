"""The strongest simple peers, fitted on the same split: popularity, item-item cosine kNN,
implicit's ALS and BPR, and EASE. One small interface (fit on TrainData, score a batch of members
against every title) so the evaluation treats every model, ours included, alike."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from models.protocol import TrainData


class Recommender(Protocol):
    """fit(data) -> self; score(members) -> (len(members), n_titles) scores, higher is better."""

    def fit(self, data: TrainData) -> "Recommender": ...

    def score(self, members: np.ndarray) -> np.ndarray: ...


class Popularity:
    """Titles by how many members interacted with them: the floor every model must clear."""

    def fit(self, data: TrainData) -> "Popularity":
        train = data.matrix
        self.counts_ = np.asarray(train.sum(axis=0), dtype=np.float64).ravel()
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        return np.tile(self.counts_, (len(members), 1))


class ItemKNN:
    """Item-item cosine similarity, keeping each item's `k` nearest neighbours."""

    def __init__(self, k: int = 100, shrink: float = 0.0):
        self.k = k
        self.shrink = shrink

    def fit(self, data: TrainData) -> "ItemKNN":
        self.train_ = data.matrix.astype(np.float64)
        co = (self.train_.T @ self.train_).toarray()
        norms = np.sqrt(np.diag(co))
        sim = co / (np.outer(norms, norms) + self.shrink + 1e-12)
        np.fill_diagonal(sim, 0.0)
        if self.k < sim.shape[0]:
            cutoff = -np.partition(-sim, self.k - 1, axis=0)[self.k - 1]
            sim[sim < cutoff[None, :]] = 0.0
        self.similarity_ = sim
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        return np.asarray(self.train_[members] @ self.similarity_)


class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019): a closed-form item-item model."""

    def __init__(self, l2: float = 500.0):
        self.l2 = l2

    def fit(self, data: TrainData) -> "EASE":
        self.train_ = data.matrix.astype(np.float64)
        gram = (self.train_.T @ self.train_).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)[None, :]
        np.fill_diagonal(weights, 0.0)
        self.weights_ = weights
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        return np.asarray(self.train_[members] @ self.weights_)


class _ImplicitModel:
    """Adapter for the `implicit` package's factor models (fit on user x item CSR)."""

    def _build(self):  # pragma: no cover - overridden
        raise NotImplementedError

    def fit(self, data: TrainData) -> "_ImplicitModel":
        import importlib

        for module in ("implicit.cpu.als", "implicit.cpu.bpr"):
            importlib.import_module(module)  # load implicit's BLAS before limiting it
        from threadpoolctl import threadpool_limits

        # implicit parallelises itself; a second BLAS thread pool under it only contends.
        with threadpool_limits(1, "blas"):
            self.model_ = self._build()
            self.model_.fit(data.matrix.astype(np.float32).tocsr(), show_progress=False)
        self.user_factors_ = np.asarray(self.model_.user_factors)
        self.item_factors_ = np.asarray(self.model_.item_factors)
        return self

    def score(self, members: np.ndarray) -> np.ndarray:
        return self.user_factors_[members] @ self.item_factors_.T


class ALS(_ImplicitModel):
    def __init__(self, factors: int = 64, regularization: float = 0.05, alpha: float = 2.0,
                 iterations: int = 15, random_state: int = 7):
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.iterations, self.random_state = iterations, random_state

    def _build(self):
        from implicit.cpu.als import AlternatingLeastSquares

        return AlternatingLeastSquares(
            factors=self.factors, regularization=self.regularization, alpha=self.alpha,
            iterations=self.iterations, random_state=self.random_state, num_threads=1)


class BPR(_ImplicitModel):
    # implicit's own defaults: the strongest of the settings tried here (0.123 NDCG@10 on ml-100k).
    def __init__(self, factors: int = 100, learning_rate: float = 0.01, regularization: float = 0.01,
                 iterations: int = 100, random_state: int = 7):
        self.factors, self.learning_rate, self.regularization = factors, learning_rate, regularization
        self.iterations, self.random_state = iterations, random_state

    def _build(self):
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(
            factors=self.factors, learning_rate=self.learning_rate,
            regularization=self.regularization, iterations=self.iterations,
            random_state=self.random_state, num_threads=1)


def default_peers(seed: int = 7) -> dict[str, Recommender]:
    return {
        "popularity": Popularity(),
        # 400 neighbours: the strongest kNN of 50/100/200/400 here (peers get their best shot).
        "itemknn": ItemKNN(k=400),
        "als": ALS(random_state=seed),
        "bpr": BPR(random_state=seed),
        "ease": EASE(l2=500.0),
    }
