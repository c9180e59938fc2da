"""`marquee eval`: one JSON object with the protocol's figures, on real MovieLens 100K (skipped
when absent) and on a tiny generated world; clear errors (exit 2) for bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ops.cli import main
from training.evaluate import load_eval_data, title_content

METRICS = {"ndcg@10", "recall@20", "coverage@10", "novelty@10", "diversity@10", "members"}
ENTRY = {"test", "validation", "settings", "grid", "tuned", "fit_s", "eval_s", "tune_s"}


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
                           "--models", "popularity,ease", "--no-tune")
    assert code == 0
    report = strict_json(out)
    assert set(report["models"]) == {"popularity", "ease"}
    for name in ("popularity", "ease"):
        assert ENTRY <= set(report["models"][name]) and METRICS <= set(report["models"][name]["test"])
        assert report["models"][name]["validation"] is None and report["models"][name]["grid"] == []
    assert report["models"]["ease"]["settings"] == {"l2": 500.0}  # --no-tune: the defaults
    popularity, ease = report["models"]["popularity"]["test"], report["models"]["ease"]["test"]
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
    for entry in report["models"].values():
        assert ENTRY <= set(entry)
        metrics = entry["test"]
        assert METRICS <= set(metrics)
        assert metrics["members"] == report["members_evaluated"]
        if metrics["members"] == 0:
            assert metrics["diversity@10"] is None


def test_longer_world_evaluates_members(tmp_path):
    from producers.world.generate import generate_world
    from training.evaluate import run_eval

    generate_world(members=150, titles=120, days=30, seed=3, out=tmp_path / "w")
    report = run_eval(f"world:{tmp_path / 'w'}", models=["popularity", "ease"], tune_settings=False)
    assert report["members_evaluated"] > 0
    for entry in report["models"].values():
        metrics = entry["test"]
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


@pytest.fixture(scope="module")
def month_world(tmp_path_factory):
    from producers.world.generate import generate_world

    out = tmp_path_factory.mktemp("world") / "month"
    generate_world(members=150, titles=120, days=30, seed=3, out=out)
    return out


def tiny_grids(seed: int = 7) -> dict:
    from models.peers import EASE, ItemKNN, Popularity
    from training.tuning import ModelGrid

    return {
        "popularity": ModelGrid("popularity", lambda s: Popularity(), {}, ({},)),
        "ease": ModelGrid("ease", lambda s: EASE(**s), {"l2": 500.0}, ({"l2": 5.0}, {"l2": 500.0}, {"l2": 5000.0})),
        "itemknn": ModelGrid("itemknn", lambda s: ItemKNN(**s), {"k": 20}, ({"k": 5}, {"k": 20}, {"k": 80})),
    }


def test_tuned_report_has_validation_test_settings_and_grid_for_every_model(month_world):
    from training.evaluate import run_eval

    report = run_eval(f"world:{month_world}", grids=tiny_grids())
    strict_json(json.dumps(report, allow_nan=False))
    assert report["tuning"]["tuned"] is True and report["tuning"]["selected_by"] == "validation ndcg@10"
    assert report["tuning"]["budget"] == {"popularity": 1, "ease": 3, "itemknn": 3}
    assert report["tuning"]["validation"]["members"] == report["members_evaluated"] > 0
    assert report["tuning"]["validation"]["train_interactions"] == report["train_interactions"] - 10 * report["members_evaluated"]
    assert set(report["models"]) == {"popularity", "ease", "itemknn"}
    for name, entry in report["models"].items():
        assert ENTRY <= set(entry)
        assert {"ndcg@10", "recall@20", "members"} <= set(entry["validation"])
        assert METRICS <= set(entry["test"])
        tried = [trial["settings"] for trial in entry["grid"]]
        assert tried == list(tiny_grids()[name].configs)
        best = max(entry["grid"], key=lambda trial: trial["ndcg@10"])  # max keeps the first of equals
        assert entry["settings"] == best["settings"]
        assert entry["validation"]["ndcg@10"] == best["ndcg@10"]
    # without rectools in this environment SASRec is named as skipped, with the extra to install
    if "sasrec" in report["skipped"]:
        assert "[peers]" in report["skipped"]["sasrec"]


def test_test_split_is_scored_once_per_model_and_tuning_only_scores_validation(month_world, monkeypatch):
    import training.evaluate as module
    import training.tuning as tuning

    scored = []
    real = module.evaluate

    def counting(which):
        def evaluate(split, score, **kwargs):
            scored.append((which, split.train.nnz))
            return real(split, score, **kwargs)
        return evaluate

    monkeypatch.setattr(module, "evaluate", counting("final"))
    monkeypatch.setattr(tuning, "evaluate", counting("tuning"))
    report = module.run_eval(f"world:{month_world}", models=["ease", "itemknn"], grids=tiny_grids())
    full, held = report["train_interactions"], report["tuning"]["validation"]["train_interactions"]
    assert [s for s in scored if s[0] == "final"] == [("final", full)] * 2  # test: once per model
    assert [s for s in scored if s[0] == "tuning"] == [("tuning", held)] * 6  # 3 configurations each, on validation


def test_sasrec_without_rectools_is_skipped_naming_the_extra(month_world, monkeypatch):
    from models import sasrec
    from training.evaluate import load_eval_data, model_grids, run_eval, title_content

    monkeypatch.setattr(sasrec, "available", lambda: False)
    data = load_eval_data(f"world:{month_world}")
    content = title_content(data.titles, np.unique(data.interactions.column("title_id").to_numpy()))
    assert "sasrec" not in model_grids(content, None, engine="local", seed=7)
    report = run_eval(f"world:{month_world}", models=["popularity", "sasrec"], grids=tiny_grids())
    assert set(report["models"]) == {"popularity"}
    assert "pip install -e '.[peers]'" in report["skipped"]["sasrec"]


def test_cli_no_tune_reports_defaults_with_validation_null(capsys, month_world):
    code, out, err = run_cli(capsys, "--dataset", f"world:{month_world}", "--json", "--models", "ease,itemknn", "--no-tune")
    assert code == 0, err
    report = strict_json(out)
    assert report["tuning"]["tuned"] is False
    assert report["models"]["itemknn"]["settings"] == {"k": 400, "shrink": 0.0}
    assert report["models"]["ease"]["validation"] is None and report["models"]["ease"]["test"]["members"] > 0


def test_eval_features_store_is_built_from_the_splits_training_events_only(month_world, tmp_path):
    """`--features DIR` builds the store from the split's training events (its manifest names the
    split), never reads one built from the whole log."""
    from features.offline_store import read_manifest
    from models.protocol import temporal_split
    from training.evaluate import run_eval
    from training.point_in_time import split_fingerprint

    store = tmp_path / "store"
    report = run_eval(f"world:{month_world}", models=["popularity"], tune_settings=False, features=store)
    split = temporal_split(load_eval_data(f"world:{month_world}").interactions)
    manifest = read_manifest(store)
    assert manifest["events_source"]["split"] == split_fingerprint(split)
    assert report["models"]["popularity"]["test"]["members"] == len(split.test_members)


def test_world_strong_is_a_completion_by_the_members_point_in_time(month_world):
    """A play is strong only if the member completed it by their last training play: the labels
    are strictly fewer than "completed ever" on a world where members finish titles later."""
    from marquee.dataset import load_dataset
    from training.point_in_time import completions

    data = load_eval_data(f"world:{month_world}")
    split_last = temporal_split_last_ts(data)
    events = load_dataset(month_world).events(columns=["member_id", "title_id", "timestamp", "type"])
    done = completions(events)
    first_done: dict = {}
    for m, t, ts in zip(done.column("member_id").to_pylist(), done.column("title_id").to_pylist(),
                        done.column("timestamp").to_pylist()):
        first_done[(m, t)] = min(ts, first_done.get((m, t), ts))
    strong = data.interactions.column("strong").to_pylist()
    members, titles = data.interactions.column("member_id").to_pylist(), data.interactions.column("title_id").to_pylist()
    expected = [(m, t) in first_done and first_done[(m, t)].timestamp() <= split_last[m]
                for m, t in zip(members, titles)]
    ever = [(m, t) in first_done for m, t in zip(members, titles)]
    assert strong == expected
    assert sum(strong) < sum(ever)


def temporal_split_last_ts(data) -> dict:
    from models.protocol import temporal_split

    split = temporal_split(data.interactions)
    return {int(m): float(split.train_last_ts[i]) for i, m in enumerate(split.member_ids)}
