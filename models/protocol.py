"""The fixed offline evaluation protocol (DESIGN.md section 6), so every number compares.

For every member with more than `min_interactions` interactions, hold out the last `holdout` by
timestamp; train on the rest (members with fewer interactions train with all of theirs); rank
every title the member has not interacted with in training; relevance = the held-out titles.
NDCG@10 (log2 discount, ideal over min(10, held out)) and Recall@20 (hits / min(20, held out)),
averaged over evaluated members; plus catalog coverage, novelty and intra-list diversity.
Settings are tuned on `validation_split` (the same rule applied to the training part) and the
test split is scored once with them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import scipy.sparse as sp


@dataclass
class TrainData:
    """What every model fits on: the binary matrix plus the timed rows behind it (sequence- and
    time-aware models need the order; the rest use the matrix), and the time "now" per member."""

    matrix: sp.csr_matrix  # members x titles, 1.0 where interacted
    members: np.ndarray  # member index of each row, rows sorted by member then time
    titles: np.ndarray  # title index of each row
    timestamps: np.ndarray  # seconds
    last_ts: np.ndarray  # per member, time of their last row (the point in time we rank at)
    strong: np.ndarray | None = None  # per row: a strong interaction (completed, rated 4+), if known

    @property
    def shape(self) -> tuple[int, int]:
        return self.matrix.shape

    @classmethod
    def from_rows(cls, members, titles, timestamps, shape: tuple[int, int],
                  strong: np.ndarray | None = None) -> "TrainData":
        members, titles, timestamps = (np.asarray(x, dtype=np.int64) for x in (members, titles, timestamps))
        order = np.lexsort((np.arange(len(members)), timestamps, members))
        members, titles, timestamps = members[order], titles[order], timestamps[order]
        strong = None if strong is None else np.asarray(strong, dtype=bool)[order]
        matrix = sp.csr_matrix((np.ones(len(members), dtype=np.float32), (members, titles)), shape=shape)
        matrix.data[:] = 1.0  # repeats count once
        last = np.zeros(shape[0], dtype=np.int64)  # a member with no rows: "now" before any play
        if len(members):
            last[:] = np.iinfo(np.int64).min
            np.maximum.at(last, members, timestamps)
            last[last == np.iinfo(np.int64).min] = 0
        return cls(matrix, members, titles, timestamps, last, strong)

    def position_from_end(self) -> np.ndarray:
        """Per row, how many of the member's rows come after it (0 = most recent)."""
        counts = np.bincount(self.members, minlength=self.shape[0])
        ends = np.cumsum(counts)
        return ends[self.members] - 1 - np.arange(len(self.members))


@dataclass
class Split:
    """Interactions indexed 0..n-1 for members and titles; train as a CSR matrix (binary)."""

    member_ids: np.ndarray  # index -> external member_id
    title_ids: np.ndarray  # index -> external title_id
    train: sp.csr_matrix  # members x titles, 1.0 where interacted in training
    train_last_ts: np.ndarray  # per member, timestamp (s) of the last training interaction
    train_events: pa.Table  # member (idx), title (idx), timestamp (s) of every training row
    test_members: np.ndarray  # member indices evaluated
    test_items: list[np.ndarray] = field(repr=False)  # per test member, held-out title indices

    @property
    def n_members(self) -> int:
        return len(self.member_ids)

    def train_data(self) -> TrainData:
        ev = self.train_events
        strong = ev.column("strong").to_numpy() if "strong" in ev.column_names else None
        return TrainData.from_rows(ev.column("member").to_numpy(), ev.column("title").to_numpy(),
                                   ev.column("timestamp").to_numpy(), self.train.shape, strong)

    def test_sets(self) -> dict[int, set[int]]:
        return {int(m): set(map(int, items)) for m, items in zip(self.test_members, self.test_items)}

    @property
    def n_titles(self) -> int:
        return len(self.title_ids)


def temporal_split(
    interactions: pa.Table, *, holdout: int = 10, min_interactions: int = 20
) -> Split:
    """Per-member leave-last-`holdout` split. `interactions` has member_id, title_id, timestamp
    (any integer or timestamp type), and optionally `strong` (bool: a completion / high rating,
    kept for the ranker's second objective). Repeated (member, title) pairs keep their first occurrence;
    ties in time keep the input order (a stable sort), so the split is deterministic."""
    for name in ("member_id", "title_id", "timestamp"):
        if name not in interactions.column_names:
            raise ValueError(f"interactions: missing column {name!r}")
    members = interactions.column("member_id").to_numpy()
    titles = interactions.column("title_id").to_numpy()
    ts = _seconds(interactions.column("timestamp"))
    strong = (interactions.column("strong").to_numpy(zero_copy_only=False).astype(bool)
              if "strong" in interactions.column_names else None)
    member_ids, m_idx = np.unique(members, return_inverse=True)
    title_ids, t_idx = np.unique(titles, return_inverse=True)
    order = np.lexsort((np.arange(len(ts)), ts, m_idx))  # by member, then time, then input order
    m_idx, t_idx, ts = m_idx[order], t_idx[order], ts[order]
    strong = strong[order] if strong is not None else None
    pair = m_idx.astype(np.int64) * len(title_ids) + t_idx
    _, first = np.unique(pair, return_index=True)
    keep = np.zeros(len(pair), dtype=bool)
    keep[first] = True
    m_idx, t_idx, ts = m_idx[keep], t_idx[keep], ts[keep]
    strong = strong[keep] if strong is not None else None
    counts = np.bincount(m_idx, minlength=len(member_ids))
    return _hold_out_last(member_ids, title_ids, m_idx, t_idx, ts, strong, counts > min_interactions, holdout)


def validation_split(split: Split, *, holdout: int = 10) -> Split:
    """The same rule one step earlier, for tuning: each evaluated member's last `holdout`
    training interactions (the ones just before their test ones) become the held-out set; the
    rest of training is the new training. The test rows are not in `split.train_events`, so
    nothing here can reach them; members without a test set keep all their training rows."""
    ev = split.train_events
    strong = ev.column("strong").to_numpy(zero_copy_only=False).astype(bool) if "strong" in ev.column_names else None
    evaluated = np.zeros(split.n_members, dtype=bool)
    evaluated[split.test_members] = True
    return _hold_out_last(split.member_ids, split.title_ids, ev.column("member").to_numpy(),
                          ev.column("title").to_numpy(), ev.column("timestamp").to_numpy(), strong,
                          evaluated, holdout)


def _hold_out_last(member_ids: np.ndarray, title_ids: np.ndarray, m_idx: np.ndarray, t_idx: np.ndarray,
                   ts: np.ndarray, strong: np.ndarray | None, evaluated: np.ndarray, holdout: int) -> Split:
    """The one definition of the hold-out rule: rows sorted by member, then time, then input
    order; each `evaluated` member's last `holdout` rows are held out, the rest train."""
    counts = np.bincount(m_idx, minlength=len(member_ids))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_member = np.arange(len(m_idx)) - starts[m_idx]
    is_test = evaluated[m_idx] & (rank_in_member >= counts[m_idx] - holdout)
    train_rows = ~is_test
    train = sp.csr_matrix(
        (np.ones(train_rows.sum(), dtype=np.float32), (m_idx[train_rows], t_idx[train_rows])),
        shape=(len(member_ids), len(title_ids)),
    )
    last_ts = np.full(len(member_ids), np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(last_ts, m_idx[train_rows], ts[train_rows])
    test_members = np.flatnonzero(evaluated & (counts > 0))
    test_m, test_t = m_idx[is_test], t_idx[is_test]
    bounds = np.searchsorted(test_m, test_members, side="left"), np.searchsorted(test_m, test_members, side="right")
    test_items = [test_t[a:b] for a, b in zip(*bounds)]
    events = pa.table({"member": m_idx[train_rows], "title": t_idx[train_rows], "timestamp": ts[train_rows]})
    if strong is not None:
        events = events.append_column("strong", pa.array(strong[train_rows]))
    return Split(member_ids, title_ids, train, last_ts, events, test_members, test_items)


def _seconds(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[column.type.unit]
        return column.cast(pa.int64()).to_numpy() // per_second
    return column.cast(pa.int64()).to_numpy()


ScoreFn = Callable[[np.ndarray], np.ndarray]  # member indices -> (len, n_titles) scores


def top_k(scores: np.ndarray, train_rows: sp.csr_matrix, k: int) -> np.ndarray:
    """Top-k title indices per row, excluding titles seen in training, best first."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows, cols = train_rows.nonzero()
    scores[rows, cols] = -np.inf
    part = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


@dataclass
class Metrics:
    ndcg_at_10: float
    recall_at_20: float
    coverage: float  # share of the catalog appearing in some member's top-10
    novelty: float  # mean self-information -log2(popularity share) of recommended titles
    diversity: float  # mean intra-list dissimilarity of the top-10 (1 - genre cosine)
    members: int

    def as_dict(self) -> dict[str, float]:
        return {
            "ndcg@10": round(self.ndcg_at_10, 5),
            "recall@20": round(self.recall_at_20, 5),
            "coverage@10": round(self.coverage, 5),
            "novelty@10": round(self.novelty, 4),
            "diversity@10": round(self.diversity, 4),
            "members": self.members,
        }


def evaluate(
    split: Split,
    score: ScoreFn,
    *,
    title_genres: sp.csr_matrix | None = None,
    batch: int = 256,
) -> Metrics:
    """Run the protocol for a scoring function over all evaluated members."""
    discounts = 1.0 / np.log2(np.arange(2, 12))
    ndcgs, recalls, recommended = [], [], []
    for start in range(0, len(split.test_members), batch):
        members = split.test_members[start : start + batch]
        scores = score(members)
        if scores.shape != (len(members), split.n_titles):
            raise ValueError(f"score returned shape {scores.shape}, expected {(len(members), split.n_titles)}")
        ranked = top_k(scores, split.train[members], 20)
        for row, member_pos in enumerate(range(start, start + len(members))):
            relevant = split.test_items[member_pos]
            hits = np.isin(ranked[row], relevant)
            ideal = discounts[: min(10, len(relevant))].sum()
            ndcgs.append(float((hits[:10] * discounts).sum() / ideal))
            recalls.append(float(hits[:20].sum() / min(20, len(relevant))))
        recommended.append(ranked[:, :10])
    top10 = np.concatenate(recommended) if recommended else np.zeros((0, 10), dtype=int)
    return Metrics(
        ndcg_at_10=float(np.mean(ndcgs)) if ndcgs else 0.0,
        recall_at_20=float(np.mean(recalls)) if recalls else 0.0,
        coverage=len(np.unique(top10)) / split.n_titles,
        novelty=_novelty(split, top10),
        diversity=_diversity(top10, title_genres),
        members=len(ndcgs),
    )


def _novelty(split: Split, top10: np.ndarray) -> float:
    popularity = np.asarray(split.train.sum(axis=0)).ravel() + 1.0
    share = popularity / split.n_members
    return float(np.mean(-np.log2(np.clip(share[top10], 1e-12, 1.0)))) if top10.size else 0.0


def _diversity(top10: np.ndarray, title_genres: sp.csr_matrix | None) -> float:
    if title_genres is None or top10.size == 0:
        return float("nan")
    dense = np.asarray(title_genres.todense(), dtype=np.float64)
    dense /= np.maximum(np.linalg.norm(dense, axis=1, keepdims=True), 1e-12)
    vectors = dense[top10]  # members x 10 x genres
    sims = np.einsum("mig,mjg->mij", vectors, vectors)
    k = top10.shape[1]
    off_diagonal = (sims.sum(axis=(1, 2)) - np.trace(sims, axis1=1, axis2=2)) / (k * (k - 1))
    return float(np.mean(1.0 - off_diagonal))
