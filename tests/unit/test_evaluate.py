"""`marquee eval`: one JSON object with the protocol's figures, on real MovieLens 100K (skipped
when absent) and on a tiny generated world; clear errors (exit 2) for bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ops.cli import main
from training.evaluate import load_eval_data, title_content

METRICS = {"ndcg@10", "recall@20", "coverage@10", "novelty@10", "diversity@10", "fit_s"}


def strict_json(text: str) -> dict:
    """Parse exactly one JSON object, rejecting NaN/Infinity (not JSON, whatever Python allows)."""
    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got {len(lines)}"
    report = json.loads(lines[0], parse_constant=reject)
    assert isinstance(report, dict)
    return report


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_movielens_popularity_and_ease_match_the_protocol_figures(capsys, movielens_100k):
    code, out, _ = run_cli(capsys, "--dataset", f"movielens:{movielens_100k}", "--json",
                           "--models", "popularity,ease")
    assert code == 0
    report = strict_json(out)
    assert set(report["models"]) == {"popularity", "ease"}
    for name in ("popularity", "ease"):
        assert METRICS <= set(report["models"][name])
    popularity, ease = report["models"]["popularity"], report["models"]["ease"]
    assert popularity["ndcg@10"] == pytest.approx(0.0809, abs=5e-4)
    assert ease["ndcg@10"] == pytest.approx(0.1445, abs=5e-4)
    assert ease["recall@20"] == pytest.approx(0.2181, abs=5e-4)
    assert report["members_evaluated"] == popularity["members"] == ease["members"] > 900
    assert report["titles"] == 1682
    assert 0 < popularity["coverage@10"] < ease["coverage@10"] <= 1  # popularity shows few titles
    assert popularity["novelty@10"] < ease["novelty@10"]
    assert 0 < ease["diversity@10"] <= 1
    assert "pipeline_vs_best_peer_ndcg" not in report  # no pipeline asked for


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from producers.world.generate import generate_world

    out = tmp_path_factory.mktemp("world") / "tiny"
    generate_world(members=150, titles=120, days=10, seed=3, out=out)
    return out


def test_tiny_world_evaluates_as_one_strict_json_object(capsys, tiny_world):
    code, out, err = run_cli(capsys, "--dataset", f"world:{tiny_world}", "--json", "--models", "popularity, ease")
    assert code == 0, err
    report = strict_json(out)
    assert report["dataset"] == "world:tiny"
    assert set(report["models"]) == {"popularity", "ease"}
    assert report["train_interactions"] > 0 and report["titles"] > 0
    # 10 days is too short for any member to pass the protocol's 20 interactions: metrics are
    # zero and diversity undefined (null, never a bare NaN)
    for metrics in report["models"].values():
        assert METRICS <= set(metrics)
        assert metrics["members"] == report["members_evaluated"]
        if metrics["members"] == 0:
            assert metrics["diversity@10"] is None


def test_longer_world_evaluates_members(tmp_path):
    from producers.world.generate import generate_world
    from training.evaluate import run_eval

    generate_world(members=150, titles=120, days=30, seed=3, out=tmp_path / "w")
    report = run_eval(f"world:{tmp_path / 'w'}", models=["popularity", "ease"])
    assert report["members_evaluated"] > 0
    for metrics in report["models"].values():
        assert 0 <= metrics["ndcg@10"] <= 1 and 0 < metrics["coverage@10"] <= 1
        assert metrics["diversity@10"] is not None


def test_world_interactions_are_plays_with_completions_as_strong(tiny_world):
    data = load_eval_data(f"world:{tiny_world}")
    assert data.interactions.column_names == ["member_id", "title_id", "timestamp", "strong"]
    assert data.interactions.num_rows > 0
    strong = data.interactions.column("strong").to_numpy(zero_copy_only=False)
    assert 0 < strong.sum() < len(strong)
    assert {"title_id", "genres", "release_year", "maturity"} <= set(data.titles.column_names)


@pytest.mark.parametrize("dataset", ["nonsense", "movielens:", "world:", "csv:/tmp/x", ":/tmp"])
def test_bad_dataset_spec_exits_2_naming_the_expected_forms(capsys, dataset):
    code, out, err = run_cli(capsys, "--dataset", dataset, "--json")
    assert code == 2
    assert out == ""
    assert "movielens:PATH" in err and "world:DIR" in err and repr(dataset) in err


@pytest.mark.parametrize("kind", ["movielens", "world"])
def test_missing_dataset_folder_exits_2(capsys, tmp_path, kind):
    code, _, err = run_cli(capsys, "--dataset", f"{kind}:{tmp_path / 'absent'}", "--json")
    assert code == 2
    assert "absent" in err


def test_unknown_model_exits_2_listing_the_known_ones(capsys, tiny_world):
    code, out, err = run_cli(capsys, "--dataset", f"world:{tiny_world}", "--models", "popularity,magic")
    assert code == 2 and out == ""
    assert "unknown magic" in err and "ease" in err and "pipeline" in err


def test_title_content_aligns_to_the_split_indices():
    titles = pa.table({
        "title_id": [30, 10, 20],
        "genres": [["Drama"], ["Comedy", "Drama"], None],
        "release_year": [1999, None, 2005],
        "maturity": [2, 1, None],
    })
    content = title_content(titles, np.array([10, 20, 30, 99]))  # 99: not in the titles table
    genres = content.genres.toarray()  # columns: Comedy, Drama (sorted vocabulary)
    np.testing.assert_array_equal(genres, [[1, 1], [0, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(content.release_year, [np.nan, 2005, 1999, np.nan])
    np.testing.assert_array_equal(content.maturity, [1, 0, 2, 0])
