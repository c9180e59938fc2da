"""Histories.weighted builds its CSR matrix directly; it must equal the plain COO construction
(duplicates summed, columns sorted) for every shape a source meets: one live member, a batch,
repeats of a title, members with no history, no entries at all."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.histories import Histories


def reference(h: Histories, tau: float, floor: float) -> sp.csr_matrix:
    weights = floor + np.exp(-h.position / tau)
    matrix = sp.coo_matrix((weights, (h.rows, h.titles)), shape=(h.n_rows, h.n_titles)).tocsr()
    matrix.sum_duplicates()
    return matrix


def random_lists(seed: int, members: int, longest: int, titles: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, titles, size=rng.integers(0, longest + 1)).tolist() for _ in range(members)]


@pytest.mark.parametrize("members,longest", [(1, 300), (1, 0), (50, 40), (3, 1)])
def test_weighted_equals_coo_construction(members, longest):
    lists = random_lists(seed=members * 100 + longest, members=members, longest=longest, titles=60)
    h = Histories.from_lists(lists, [0] * members, n_titles=60)
    for tau, floor in ((10.0, 0.3), (1.0, 0.0), (3.0, 0.2)):  # each source weighs the same layout
        got, want = h.weighted(tau, floor), reference(h, tau, floor)
        assert got.shape == want.shape and got.has_canonical_format
        assert np.array_equal(got.indptr, want.indptr) and np.array_equal(got.indices, want.indices)
        np.testing.assert_allclose(got.data, want.data, rtol=1e-12)


def test_repeats_of_a_title_add_up():
    h = Histories.from_lists([[4, 2, 4]], [0], n_titles=6)  # title 4 at positions 0 and 2
    row = h.weighted(tau=1.0, floor=0.5).toarray()[0]
    assert row[4] == pytest.approx(0.5 + 1.0 + 0.5 + np.exp(-2.0))
    assert row[2] == pytest.approx(0.5 + np.exp(-1.0))
    assert np.count_nonzero(row) == 2
