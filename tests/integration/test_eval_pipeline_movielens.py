"""The full pipeline on real MovieLens 100K under the fixed protocol must clearly beat the
strongest simple peer, EASE (DESIGN.md section 6). Slow (the ranker trains 300 rounds twice),
so it lives here and not among the unit tests; plain xgboost, no Ray needed."""

from __future__ import annotations

import json

import pytest

from marquee.cli import main

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
