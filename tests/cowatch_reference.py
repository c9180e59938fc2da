"""The co-watch computation as it was before it became incremental (kept verbatim as the
reference): every snapshot recomputes X^T X from all first plays before as_of, then takes the
top-k per title (a lexsort for sparse counts, dense row blocks otherwise).

`exact_ties=True` always takes the lexsort path. The dense path picks the last tie group at the
k boundary with np.argpartition, which keeps an arbitrary subset of titles tied on (count,
score) rather than the lowest title ids its own comment promised; the lexsort path keeps the
documented order (count desc, score desc, title id asc)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy import sparse

from features.definitions import FeatureSpec, SnapshotBuilder, Vocab, combine_partials
from marquee.dataset import load_dataset
from training.features import compute_partials, event_files


def cowatch_from_scratch(builder, as_of: int, exact_ties: bool = False) -> pa.Table:
    n_titles, k = len(builder.vocab.title_ids), builder.spec.cowatch_k
    index = builder.cowatch_index
    end = int(np.searchsorted(index.day, as_of, side="left"))
    ones, members, titles = np.ones(end, dtype=np.int32), index.member[:end], index.title[:end]
    shape = (max(index.n_members, 1), n_titles)
    x = sparse.csr_matrix((ones, (members, titles)), shape=shape)
    xt = sparse.csr_matrix((ones, (titles, members)), shape=shape[::-1])
    co = (xt @ x).tocsr()
    n_played = co.diagonal().astype(np.float64)
    co.setdiag(0)
    co.eliminate_zeros()
    if exact_ties or co.nnz * 4 < n_titles * n_titles:
        cat = _top_k_sparse(co, n_played, k)
    else:
        cat = _top_k_dense(co, n_played, k)
    return pa.table({
        "title_id": pa.array(builder.vocab.title_ids[cat[0].astype(np.int64)], pa.int64()),
        "other_title_id": pa.array(builder.vocab.title_ids[cat[1].astype(np.int64)], pa.int64()),
        "count": pa.array(cat[2].astype(np.int32)),
        "score": pa.array(cat[3].astype(np.float32)),
        "rank": pa.array(cat[4].astype(np.int16)),
    })


def _top_k_sparse(co, n_played: np.ndarray, k: int) -> list[np.ndarray]:
    rows = np.repeat(np.arange(co.shape[0]), np.diff(co.indptr))
    cols, counts = co.indices.astype(np.int64), co.data.astype(np.int64)
    score = counts / np.sqrt(np.maximum(n_played[rows], 1) * np.maximum(n_played[cols], 1))
    order = np.lexsort((cols, -score, -counts, rows))
    rows, cols, counts, score = rows[order], cols[order], counts[order], score[order]
    rank = np.arange(len(rows)) - np.repeat(co.indptr[:-1], np.diff(co.indptr)) + 1
    keep = rank <= k
    return [rows[keep], cols[keep], counts[keep], score[keep], rank[keep]]


def _top_k_dense(co, n_played: np.ndarray, k: int) -> list[np.ndarray]:
    n_titles = co.shape[0]
    block = max(1, (1 << 22) // max(n_titles, 1))
    take = min(k, n_titles)
    parts = []
    for lo in range(0, n_titles, block):
        hi = min(n_titles, lo + block)
        counts = co[lo:hi].toarray()
        score = counts / np.sqrt(np.outer(np.maximum(n_played[lo:hi], 1), np.maximum(n_played, 1)))
        key = counts * 2.0 + score
        top = (np.argpartition(-key, take - 1, axis=1)[:, :take] if take < n_titles
               else np.tile(np.arange(n_titles), (hi - lo, 1)))
        rows = np.arange(hi - lo)[:, None]
        cols_sorted = np.sort(top, axis=1)
        order = np.argsort(-key[rows, cols_sorted], axis=1, kind="stable")
        top = cols_sorted[rows, order]
        c = counts[rows, top]
        keep = c > 0
        parts.append((np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[keep], top[keep],
                      c[keep], score[rows, top][keep],
                      np.broadcast_to(np.arange(1, take + 1), top.shape)[keep]))
    return [np.concatenate(p) for p in zip(*parts)]


def builder_of(dataset_dir, spec: FeatureSpec) -> SnapshotBuilder:
    dataset = load_dataset(dataset_dir)
    vocab = Vocab.from_tables(dataset.titles, dataset.members)
    combined = combine_partials(compute_partials(event_files(dataset.root), vocab, spec, "arrow"))
    return SnapshotBuilder(combined, vocab, spec, dataset.members)


def assert_same_up_to_boundary_ties(new: pa.Table, old: pa.Table) -> int:
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


def compare_every_day(builder: SnapshotBuilder, days: list[int], every: int = 1) -> int:
    """Advance one day at a time (as the feature job does); compare every `every`-th day."""
    counts = builder.cowatch_counts()
    tie_rows = 0
    for i, day in enumerate(days):
        new = counts.advance(day).table(builder.vocab.title_ids)
        if i % every and day != days[-1]:
            continue
        assert new.equals(cowatch_from_scratch(builder, day, exact_ties=True)), f"day {day}"
        tie_rows += assert_same_up_to_boundary_ties(new, cowatch_from_scratch(builder, day))
    return tie_rows
