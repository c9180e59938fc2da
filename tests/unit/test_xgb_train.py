"""The training engine without Ray: train_local learns, specs and tables are validated with
errors naming the column, ranking uses whole contiguous groups, splits and shard cuts keep
groups whole, and everything is deterministic under a seed."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest
import xgboost

from bench.train import auc, make_table
from marquee.settings import SettingsError
from training.xgb_train import (
    TrainResult,
    TrainSpec,
    build_dmatrix,
    group_runs,
    predict,
    shard_bounds,
    split_eval,
    train_local,
    train_local_many,
    validate_schema,
)

FEATURES = ["f0", "f1", "f2", "f3"]
BINARY = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "eta": 0.3}


def separable_table(rows: int = 2_000, seed: int = 1) -> pa.Table:
    """label = f0 + f1 > 0 (plus noise features): a tree model must get AUC near 1."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, len(FEATURES))).astype(np.float32)
    columns = {name: x[:, i] for i, name in enumerate(FEATURES)}
    columns["label"] = (x[:, 0] + x[:, 1] > 0).astype(np.int8)
    columns["group_id"] = np.arange(rows) // 20
    return pa.table(columns)


def spec(**overrides) -> TrainSpec:
    values = dict(features=FEATURES, label="label", params=dict(BINARY), num_boost_round=20)
    values.update(overrides)
    return TrainSpec(**values)


# ------------------------------------------------------------------------------ learning


def test_train_local_learns_a_separable_signal():
    train, test = separable_table(seed=1), separable_table(rows=1_000, seed=2)
    result = train_local(train, spec())
    assert isinstance(result, TrainResult)
    assert isinstance(result.booster, xgboost.Booster)
    assert result.engine == "local"
    assert auc(test.column("label").to_numpy(), predict(result.booster, test, FEATURES)) > 0.9
    assert {"validate", "dmatrix", "train"} <= set(result.stages)
    assert result.seconds >= result.stages["train"]


def test_same_seed_gives_the_same_model():
    table = separable_table()
    params = dict(BINARY, subsample=0.7, colsample_bytree=0.7)
    first = train_local(table, spec(params=params, eval_fraction=0.2, seed=3))
    second = train_local(table, spec(params=params, eval_fraction=0.2, seed=3))
    np.testing.assert_array_equal(predict(first.booster, table, FEATURES), predict(second.booster, table, FEATURES))


def test_eval_fraction_records_the_eval_metric_per_round():
    result = train_local(separable_table(), spec(params=dict(BINARY, eval_metric="auc"), eval_fraction=0.25))
    assert len(result.evals["eval"]["auc"]) == 20
    assert result.evals["eval"]["auc"][-1] > 0.9


def test_early_stopping_keeps_the_best_iteration():
    params = dict(BINARY, eval_metric="logloss", eta=1.0, max_depth=6)
    result = train_local(separable_table(), spec(params=params, num_boost_round=200, eval_fraction=0.3,
                                                 early_stopping_rounds=3))
    assert result.booster.attr("best_iteration") is not None
    assert len(result.evals["eval"]["logloss"]) < 200


def test_non_hist_tree_method_uses_a_plain_dmatrix():
    table = separable_table()
    matrix = build_dmatrix(table, spec(params=dict(BINARY, tree_method="approx")))
    assert not isinstance(matrix, xgboost.QuantileDMatrix)
    assert isinstance(build_dmatrix(table, spec()), xgboost.QuantileDMatrix)
    result = train_local(table, spec(params=dict(BINARY, tree_method="approx")))
    assert auc(table.column("label").to_numpy(), predict(result.booster, table, FEATURES)) > 0.9


def test_weights_shift_the_model():
    table = separable_table()
    heavy_positives = pa.array(np.where(table.column("label").to_numpy() == 1, 10.0, 1.0))
    weighted = table.append_column("w", heavy_positives)
    plain = predict(train_local(weighted, spec()).booster, table, FEATURES).mean()
    tilted = predict(train_local(weighted, spec(weight="w")).booster, table, FEATURES).mean()
    assert tilted > plain


# ------------------------------------------------------------------------------ ranking


def ranking_table(groups: int = 60, per_group: int = 10, seed: int = 5) -> pa.Table:
    """In each group exactly one row is relevant: the one with the largest f0."""
    rng = np.random.default_rng(seed)
    rows = groups * per_group
    x = rng.standard_normal((rows, len(FEATURES))).astype(np.float32)
    f0 = x[:, 0].reshape(groups, per_group)
    relevance = (f0 == f0.max(axis=1, keepdims=True)).astype(np.int8).reshape(-1)
    columns = {name: x[:, i] for i, name in enumerate(FEATURES)}
    columns["label"] = relevance
    columns["group_id"] = np.repeat(np.arange(groups) * 7 % 101, per_group)  # ids not sorted, rows contiguous
    return pa.table(columns)


@pytest.mark.parametrize("objective", ["rank:ndcg", "rank:pairwise"])
def test_ranking_objective_with_groups_puts_the_relevant_row_first(objective):
    table = ranking_table()
    params = {"objective": objective, "tree_method": "hist", "eval_metric": "ndcg@3", "max_depth": 3}
    result = train_local(table, spec(params=params, group="group_id", eval_fraction=0.2))
    assert result.evals["eval"]["ndcg@3"][-1] > 0.8
    scores = predict(result.booster, table, FEATURES).reshape(60, 10)
    relevant = table.column("label").to_numpy().reshape(60, 10).argmax(axis=1)
    assert (scores.argmax(axis=1) == relevant).mean() > 0.8


def test_ranking_objective_requires_a_group_column():
    with pytest.raises(ValueError, match="ranking objective.*group"):
        spec(params={"objective": "rank:ndcg"})


def test_rows_of_a_group_must_be_contiguous():
    table = ranking_table()
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    with pytest.raises(ValueError, match="'group_id' id are not contiguous"):
        train_local(shuffled, spec(params={"objective": "rank:ndcg"}, group="group_id"))


def test_ranking_weights_must_be_constant_within_a_group():
    table = ranking_table()
    constant = table.append_column("w", pa.array(np.repeat(np.arange(1, 61, dtype=np.float32), 10)))
    train_local(constant, spec(params={"objective": "rank:ndcg"}, group="group_id", weight="w"))
    varying = table.append_column("w", pa.array(np.arange(table.num_rows, dtype=np.float32)))
    with pytest.raises(ValueError, match="'w' varies within a group"):
        train_local(varying, spec(params={"objective": "rank:ndcg"}, group="group_id", weight="w"))


# ------------------------------------------------------------------------------ splits and shards


def test_eval_split_keeps_groups_whole_and_is_seeded():
    table = ranking_table()
    s = spec(params={"objective": "rank:ndcg"}, group="group_id", eval_fraction=0.25)
    train, held_out = split_eval(table, s)
    assert train.num_rows + held_out.num_rows == table.num_rows
    assert held_out.num_rows == 15 * 10  # 25% of 60 whole groups
    assert not set(train.column("group_id").to_pylist()) & set(held_out.column("group_id").to_pylist())
    group_runs(train.column("group_id"))  # still contiguous on both sides
    group_runs(held_out.column("group_id"))
    again, _ = split_eval(table, s)
    assert again.equals(train)
    other, _ = split_eval(table, spec(params={"objective": "rank:ndcg"}, group="group_id", eval_fraction=0.25, seed=8))
    assert not other.equals(train)


def test_eval_split_by_rows_without_groups():
    table = separable_table(rows=1_000)
    train, held_out = split_eval(table, spec(eval_fraction=0.1))
    assert (train.num_rows, held_out.num_rows) == (900, 100)
    assert split_eval(table, spec())[1] is None


def test_group_runs_gives_run_boundaries():
    bounds = group_runs(pa.chunked_array([[5, 5, 1], [1, 1, 9]]))
    assert bounds.tolist() == [0, 2, 5, 6]
    assert group_runs(pa.array(["a", "a", "b"])).tolist() == [0, 2, 3]


def test_shard_bounds_cut_on_group_boundaries():
    assert shard_bounds(10, 3) == [0, 3, 7, 10]
    groups = np.array([0, 7, 9, 20, 21, 30, 40])  # 6 groups of uneven size
    cuts = shard_bounds(40, 2, groups)
    assert cuts[0] == 0 and cuts[-1] == 40 and cuts[1] in groups
    assert abs(cuts[1] - 20) <= 1
    cuts = shard_bounds(40, 6, groups)
    assert cuts == groups.tolist()  # one group each: every shard non-empty
    with pytest.raises(ValueError, match="6 group"):
        shard_bounds(40, 7, groups)
    with pytest.raises(ValueError, match="2 row"):
        shard_bounds(2, 3)


def test_ray_train_settings_apply_for_one_fit_and_never_override_the_user(monkeypatch):
    from training.ray_train_startup import HEALTH_CHECK_INTERVAL_ENV, PREEMPTION_WATCHER_ENV
    from training.xgb_train import _ray_train_settings

    monkeypatch.delenv(PREEMPTION_WATCHER_ENV, raising=False)
    monkeypatch.setenv(HEALTH_CHECK_INTERVAL_ENV, "3")  # the user's choice
    with _ray_train_settings():
        assert os.environ[PREEMPTION_WATCHER_ENV] == "0"
        assert os.environ[HEALTH_CHECK_INTERVAL_ENV] == "3"
    assert PREEMPTION_WATCHER_ENV not in os.environ  # only what it added is removed
    assert os.environ[HEALTH_CHECK_INTERVAL_ENV] == "3"
    with pytest.raises(RuntimeError), _ray_train_settings():
        raise RuntimeError("fit failed")
    assert PREEMPTION_WATCHER_ENV not in os.environ


# ------------------------------------------------------------------------------ validation


def test_missing_columns_are_named():
    table = separable_table().drop_columns(["f2", "label"])
    with pytest.raises(KeyError, match=r"'f2' \(feature\).*'label' \(label\)"):
        train_local(table, spec())
    with pytest.raises(KeyError, match=r"'qid' \(group\)"):
        train_local(separable_table(), spec(group="qid"))


def test_non_numeric_feature_is_rejected():
    table = separable_table().append_column("country", pa.array(["US"] * 2_000))
    with pytest.raises(TypeError, match="feature column 'country' has type string"):
        train_local(table, spec(features=FEATURES + ["country"]))
    with pytest.raises(TypeError, match="label column 'country'"):
        validate_schema(table.schema, spec(label="country"))


def test_null_labels_and_empty_tables_are_rejected():
    table = separable_table()
    nulls = table.set_column(table.schema.get_field_index("label"), "label", pa.array([None] * 2_000, pa.int8()))
    with pytest.raises(ValueError, match="label column 'label' has 2000 null"):
        train_local(nulls, spec())
    with pytest.raises(ValueError, match="no rows"):
        train_local(table.slice(0, 0), spec())
    with pytest.raises(TypeError, match="pyarrow.Table"):
        train_local(table.to_pandas(), spec())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"features": []}, r"features: expected at least one of the column names, got \[\]"),
        ({"features": "f0"}, "list of column names"),
        ({"features": ["f0", "f0"]}, "twice"),
        ({"label": "f0"}, "label: expected a column that is not also a feature, got 'f0'"),
        ({"num_boost_round": 0}, "num_boost_round: expected an integer >= 1, got 0"),
        ({"num_boost_round": True}, "num_boost_round: expected an integer"),
        ({"weight": ""}, "weight: expected a non-empty string"),
        ({"eval_fraction": "0.1"}, "eval_fraction: expected a finite number >= 0.0 and < 1.0"),
        ({"eval_fraction": 1.0}, "eval_fraction"),
        ({"early_stopping_rounds": 5}, r"early_stopping_rounds: expected eval_fraction > 0"),
        ({"params": None}, "params: expected a dict of xgboost params, got None"),
    ],
)
def test_bad_specs_say_what_is_wrong(overrides, message):
    with pytest.raises(SettingsError, match=message):
        spec(**overrides)


# ------------------------------------------------------------------------------ module hygiene


def test_bench_table_is_seeded_with_contiguous_groups_and_a_learnable_label():
    a, b = make_table(500, 6, seed=4), make_table(500, 6, seed=4)
    assert a.equals(b)
    assert np.diff(group_runs(a.column("group_id"))).tolist() == [50] * 10
    assert 0.2 < a.column("label").to_numpy().mean() < 0.8


def test_auc_matches_known_values():
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(np.array([0, 0, 1, 1]), np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5


# ------------------------------------------------------------------------------ several models, one run


def two_label_table() -> pa.Table:
    table = separable_table(rows=3_000, seed=4)
    x0, x2 = table.column("f0").to_numpy(), table.column("f2").to_numpy()
    return table.append_column("other", pa.array((x0 - x2 > 0.3).astype(np.int8)))


@pytest.mark.parametrize("eval_fraction", [0.0, 0.25])
def test_many_models_in_one_run_are_the_models_of_separate_runs(eval_fraction):
    """The second model reuses the first's split and (relabelled) DMatrix: its booster must be
    the one a separate fit builds, to the last bit of every prediction."""
    table = two_label_table()
    specs = {"a": spec(label="label", eval_fraction=eval_fraction, seed=3,
                       params=dict(BINARY, subsample=0.8, eval_metric="logloss")),
             "b": spec(label="other", eval_fraction=eval_fraction, seed=3,
                       params=dict(BINARY, subsample=0.8, eval_metric="logloss"))}
    together = train_local_many(table, specs)
    assert set(together) == {"a", "b"} and together["b"].stages["split"] == 0.0  # shared
    for name, one in specs.items():
        alone = train_local(table, one)
        np.testing.assert_array_equal(predict(together[name].booster, table, FEATURES),
                                      predict(alone.booster, table, FEATURES))
        assert together[name].evals == alone.evals
    assert not np.array_equal(predict(together["a"].booster, table, FEATURES),
                              predict(together["b"].booster, table, FEATURES))  # two labels, two models


def test_many_models_refuse_mixed_groups_and_bad_names():
    table = two_label_table()
    with pytest.raises(ValueError, match="same group column"):
        train_local_many(table, {"a": spec(), "b": spec(label="other", group="group_id")})
    with pytest.raises(ValueError, match="model name"):
        train_local_many(table, {"a/b": spec()})
    with pytest.raises(ValueError, match="non-empty dict"):
        train_local_many(table, {})
    with pytest.raises(KeyError, match="'nope' \\(label\\)"):
        train_local_many(table, {"a": spec(), "b": spec(label="nope")})
