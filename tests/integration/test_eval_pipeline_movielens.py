"""The full pipeline on real MovieLens 100K under the fixed protocol must clearly beat the
strongest simple peer, EASE (DESIGN.md section 6). Slow (the ranker trains two boosters),
so it lives here and not among the unit tests; plain xgboost, no Ray needed."""

from __future__ import annotations

import json

import pytest

from ops.cli import main

pytestmark = pytest.mark.movielens


def test_pipeline_beats_ease_by_ten_percent_on_ml100k(capsys, movielens_100k):
    code = main(["eval", "--dataset", f"movielens:{movielens_100k}", "--json", "--models", "ease,pipeline"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    ease, pipeline = report["models"]["ease"], report["models"]["pipeline"]
    assert ease["ndcg@10"] == pytest.approx(0.1445, abs=5e-4)
    assert pipeline["members"] == ease["members"] > 900
    assert pipeline["ndcg@10"] >= 1.10 * ease["ndcg@10"], (pipeline, ease)
    assert pipeline["recall@20"] > ease["recall@20"]
    assert report["best_peer"] == "ease"
    assert report["pipeline_vs_best_peer_ndcg"] >= 1.10


def _current_layout_sample(source, out, fraction: float, seed: int) -> None:
    """Write a seeded user sample of MovieLens 100K in the *current* layout (ratings.csv,
    movies.csv) under tmp: a dataset the pipeline was never tuned on, read by the other loader.
    Only into pytest's tmp dir, never into the repository (MovieLens may not be redistributed)."""
    import csv

    import numpy as np

    rows = [line.split() for line in open(source / "u.data")]
    users = sorted({r[0] for r in rows})
    keep = set(np.random.default_rng(seed).choice(users, int(len(users) * fraction), replace=False))
    with open(out / "ratings.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        writer.writerows(r[:4] for r in rows if r[0] in keep)
    genres = [line.split("|")[0] for line in open(source / "u.genre") if line.strip()]
    with open(out / "movies.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["movieId", "title", "genres"])
        for line in open(source / "u.item", encoding="latin-1"):
            parts = line.rstrip("\n").split("|")
            names = [genres[i] for i, flag in enumerate(parts[5:24]) if flag == "1" and i > 0]
            writer.writerow([parts[0], parts[1], "|".join(names) or "(no genres listed)"])


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_pipeline_beats_the_best_peer_on_unseen_samples_in_the_current_layout(capsys, movielens_100k, tmp_path, seed):
    _current_layout_sample(movielens_100k, tmp_path, fraction=0.6, seed=seed)
    code = main(["eval", "--dataset", f"movielens:{tmp_path}", "--json", "--models", "ease,als,itemknn,pipeline"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["members_evaluated"] > 500
    assert report["pipeline_vs_best_peer_ndcg"] >= 1.10, report["models"]
