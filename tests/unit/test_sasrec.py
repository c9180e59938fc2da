"""The SASRec peer (rectools, the optional `peers` extra) on tiny data: it fits, scores every
title, and learns an order a popularity count cannot see. Skipped when rectools is absent."""

from __future__ import annotations

import numpy as np
import pytest

from models import sasrec
from models.protocol import TrainData


def test_missing_extra_message_names_the_install_command():
    assert "pip install -e '.[peers]'" in sasrec.MISSING


@pytest.mark.skipif(not sasrec.available(), reason=sasrec.MISSING)
def test_sasrec_learns_a_cycle_and_scores_every_title():
    # 40 members walk the same cycle 0 -> 1 -> ... -> 9 from different starting points; the next
    # title after a member's last one is the one SASRec must rank first
    rng = np.random.default_rng(0)
    members, titles, times = [], [], []
    lasts = []
    for member in range(40):
        start, length = int(rng.integers(10)), int(rng.integers(4, 8))
        walk = [(start + step) % 10 for step in range(length)]
        members += [member] * length
        titles += walk
        times += list(range(length))
        lasts.append(walk[-1])
    data = TrainData.from_rows(members, titles, times, shape=(40, 12))  # titles 10, 11: never seen
    settings = dict(n_factors=16, n_blocks=1, n_heads=1, session_max_len=8, epochs=20, lr=0.01, batch_size=16,
                    random_state=3)
    model = sasrec.SASRec(**settings).fit(data)
    scores = model.score(np.arange(40))
    assert scores.shape == (40, 12)
    assert (scores[:, 10:] < scores[:, :10].min(axis=1, keepdims=True)).all()  # unseen titles last
    predicted = scores[:, :10].argmax(axis=1)
    hit_rate = float(np.mean(predicted == (np.array(lasts) + 1) % 10))
    assert hit_rate > 0.5, hit_rate  # popularity would get about 0.1
    again = sasrec.SASRec(**settings).fit(data)
    np.testing.assert_allclose(again.score(np.arange(40)), scores, rtol=1e-5, atol=1e-5)  # seeded
