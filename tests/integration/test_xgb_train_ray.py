"""train_ray on the shared local cluster: the booster it brings back agrees with train_local on
the same rows and params, Datasets work as input, ranking shards keep groups whole across two
workers, and bad input fails before any Ray Train worker starts."""

from __future__ import annotations

import numpy as np
import ray
import pyarrow as pa
import pytest

from training.xgb_train import TrainSpec, predict, train_local, train_ray

FEATURES = [f"f{i}" for i in range(5)]


def small_table(rows: int = 3_000, seed: int = 11) -> pa.Table:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, len(FEATURES))).astype(np.float32)
    logit = 2.0 * x[:, 0] - x[:, 1] + x[:, 2] * x[:, 3]
    columns = {name: x[:, i] for i, name in enumerate(FEATURES)}
    columns["label"] = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    columns["group_id"] = np.arange(rows) // 30
    return pa.table(columns)


def binary_spec(**overrides) -> TrainSpec:
    values = dict(
        features=FEATURES,
        label="label",
        params={"objective": "binary:logistic", "tree_method": "hist", "max_depth": 4, "eval_metric": "auc"},
        num_boost_round=15,
        eval_fraction=0.2,
    )
    values.update(overrides)
    return TrainSpec(**values)


def test_one_worker_matches_train_local(ray_cluster):
    table, spec = small_table(), binary_spec()
    local = train_local(table, spec)
    remote = train_ray(table, spec, num_workers=1, cpus_per_worker=1)

    assert remote.engine == "ray_train"
    local_scores, ray_scores = predict(local.booster, table, FEATURES), predict(remote.booster, table, FEATURES)
    assert np.corrcoef(local_scores, ray_scores)[0, 1] > 0.99
    np.testing.assert_allclose(ray_scores, local_scores, atol=1e-5)  # same rows, split, params: same model
    assert remote.evals["eval"]["auc"] == pytest.approx(local.evals["eval"]["auc"])
    assert {"startup", "ingest", "dmatrix", "train", "hand_back", "delivery", "load_model"} <= set(remote.stages)
    assert all(seconds >= 0 for seconds in remote.stages.values())


def test_a_lazy_ray_dataset_is_accepted_with_every_cpu_held_by_the_worker(ray_cluster):
    import ray.data

    table, spec = small_table(), binary_spec(eval_fraction=0.0)
    # Lazy, and its blocks are pandas: neither running it nor converting them to Arrow may need
    # a free CPU once the Train worker holds both.
    dataset = ray.data.from_pandas(table.to_pandas()).limit(table.num_rows)
    every_free_cpu = int(ray.available_resources().get("CPU", 1))  # other tests' actors hold fractions
    remote = train_ray(dataset, spec, num_workers=1, cpus_per_worker=every_free_cpu)
    local = train_local(table, spec)
    local_scores, ray_scores = predict(local.booster, table, FEATURES), predict(remote.booster, table, FEATURES)
    assert np.corrcoef(local_scores, ray_scores)[0, 1] > 0.99


def test_two_workers_rank_with_whole_groups(ray_cluster):
    table = small_table()
    spec = binary_spec(
        params={"objective": "rank:ndcg", "tree_method": "hist", "max_depth": 4, "eval_metric": "ndcg@5"},
        group="group_id",
    )
    remote = train_ray(table, spec, num_workers=2, cpus_per_worker=1)
    local = train_local(table, spec)
    local_scores, ray_scores = predict(local.booster, table, FEATURES), predict(remote.booster, table, FEATURES)
    # Two workers sketch quantiles on their own shards: close to, not identical with, one process.
    assert np.corrcoef(local_scores, ray_scores)[0, 1] > 0.9
    assert remote.evals["eval"]["ndcg@5"][-1] > 0.5


def test_bad_input_fails_before_ray_train_starts(ray_cluster):
    table = small_table().drop_columns(["f3"])
    with pytest.raises(KeyError, match=r"'f3' \(feature\)"):
        train_ray(table, binary_spec())
    with pytest.raises(ValueError, match="num_workers"):
        train_ray(small_table(), binary_spec(), num_workers=0)
    with pytest.raises(TypeError, match="pyarrow.Table or a ray.data.Dataset"):
        train_ray(small_table().to_pandas(), binary_spec())


@pytest.mark.parametrize("as_dataset", [False, True])
def test_shards_are_contiguous_and_never_split_a_group(ray_cluster, as_dataset):
    import ray
    import ray.data

    from training.xgb_train import _shard_dataset, _shard_table

    table = small_table(rows=3_010)  # last group is short: cuts must still land on boundaries
    spec = binary_spec(params={"objective": "rank:ndcg"}, group="group_id")
    if as_dataset:
        shards = _shard_dataset(ray.data.from_arrow(table).repartition(4), spec.columns, spec.group, 3)
    else:
        shards = _shard_table(table, spec.columns, spec.group, 3)
    assert len(shards) == 3
    pieces = [pa.concat_tables(ray.get(shards[rank])) for rank in range(3)]
    assert pa.concat_tables(pieces).select(spec.columns).equals(table.select(spec.columns))
    groups = [set(piece.column("group_id").to_pylist()) for piece in pieces]
    assert not (groups[0] & groups[1]) and not (groups[1] & groups[2])
    assert all(abs(piece.num_rows - 1_003) <= 30 for piece in pieces)


def test_both_objectives_in_one_run_are_the_separate_local_models(ray_cluster):
    """The retrain's fit: two boosters (two labels, the same features) in ONE Ray Train run give
    the predictions of two separate local fits, bit for bit, for a fixed seed."""
    from training.xgb_train import train_ray_many

    table = small_table()
    second = (table.column("f0").to_numpy() - table.column("f2").to_numpy() > 0.2).astype(np.int8)
    table = table.append_column("completion", pa.array(second))
    params = {"objective": "binary:logistic", "tree_method": "hist", "max_depth": 4, "subsample": 0.8,
              "nthread": 1}
    specs = {"play": binary_spec(params=dict(params), eval_fraction=0.0, seed=5),
             "completion": binary_spec(label="completion", params=dict(params), eval_fraction=0.0, seed=5)}
    together = train_ray_many(table, specs, num_workers=1, cpus_per_worker=1)
    assert set(together) == {"play", "completion"}
    assert together["play"].stages["startup"] == together["completion"].stages["startup"]  # one run
    for name, spec in specs.items():
        alone = train_local(table, spec)
        np.testing.assert_array_equal(predict(together[name].booster, table, FEATURES),
                                      predict(alone.booster, table, FEATURES))


def test_a_run_started_before_its_rows_exist_fits_them_once_fed(ray_cluster):
    """The retrain starts Ray Train first and builds the rows meanwhile: the workers wait for
    them, and the model is the one a local fit on the same rows gives."""
    import time

    from training.xgb_train import RayTrainRun

    run = RayTrainRun(num_workers=1, cpus_per_worker=1)
    ahead = run.wait_until_started()  # the worker is up and waits for rows that do not exist yet
    time.sleep(0.3)
    table, spec = small_table(), binary_spec(eval_fraction=0.0, params={
        "objective": "binary:logistic", "tree_method": "hist", "max_depth": 4, "nthread": 1})
    run.feed(table, {"model": spec})
    result = run.result()["model"]
    np.testing.assert_array_equal(predict(result.booster, table, FEATURES),
                                  predict(train_local(table, spec).booster, table, FEATURES))
    assert result.stages["waiting_for_rows"] >= 0.3 and result.seconds >= ahead + 0.3
    with pytest.raises(RuntimeError, match="already fed"):
        run.feed(table, {"model": spec})
    run.close()


def test_the_models_come_back_before_ray_train_has_torn_down(ray_cluster):
    """result() returns when worker 0 delivers the models; Ray Train's report and teardown go on
    on the run's thread until close (or close_runs, as the retrain calls before ray.shutdown)."""
    from training.xgb_train import _OPEN_RUNS, RayTrainRun, close_runs

    table, spec = small_table(), binary_spec(eval_fraction=0.0, params={
        "objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "nthread": 1})
    run = RayTrainRun(num_workers=1, cpus_per_worker=1)
    run.feed(table, {"model": spec})
    result = run.result()["model"]
    assert run.teardown_s is None and run in _OPEN_RUNS  # not waited for yet
    close_runs()
    assert not run._thread.is_alive() and run not in _OPEN_RUNS
    assert run.teardown_s > 0  # the report and teardown the caller did not wait for
    assert result.stages["fit"] < run._fit_ended_at - run._fit_started_at
    np.testing.assert_array_equal(predict(result.booster, table, FEATURES),
                                  predict(train_local(table, spec).booster, table, FEATURES))


def _dataset_managers() -> int:
    """DatasetManager actors this session has created so far (GCS actor table, dead ones too)."""
    return _actors_of("DatasetManager")


def _actors_of(*class_names: str) -> int:
    """Actors of these classes this session has created so far (GCS actor table, dead ones too)."""
    return sum(actor["ActorClassName"] in class_names for actor in ray._private.state.actors().values())


def _live_placement_groups() -> int:
    return sum(pg["state"] != "REMOVED" for pg in ray.util.placement_group_table().values())


def test_the_controller_runs_in_the_driver_and_leaves_no_placement_group(ray_cluster):
    """No controller or placement-group cleaner actor is started (the controller is the driver's
    thread), and the run's placement group is removed when it ends, fed or called off."""
    from training.xgb_train import RayTrainRun

    controllers_before = _actors_of("TrainController", "PlacementGroupCleaner")
    groups_before = _live_placement_groups()
    table, spec = small_table(), binary_spec(eval_fraction=0.0, params={
        "objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "nthread": 1})
    with RayTrainRun(num_workers=1, cpus_per_worker=1) as run:
        run.feed(table, {"model": spec})
        run.result()
    called_off = RayTrainRun(num_workers=1, cpus_per_worker=1)
    called_off.wait_until_started()
    assert _live_placement_groups() == groups_before + 1  # the waiting run holds its CPUs
    called_off.abort("the test calls it off")
    assert not called_off._thread.is_alive()
    assert "called off" in str(called_off._error)
    assert _actors_of("TrainController", "PlacementGroupCleaner") == controllers_before
    assert _live_placement_groups() == groups_before


def test_close_runs_calls_off_a_run_never_fed_instead_of_waiting_for_its_rows(ray_cluster):
    import time

    from training.xgb_train import _OPEN_RUNS, RayTrainRun, close_runs

    run = RayTrainRun(num_workers=1, cpus_per_worker=1)
    run.wait_until_started()
    t = time.perf_counter()
    close_runs(timeout_s=60)
    assert time.perf_counter() - t < 30 and not run._thread.is_alive() and run not in _OPEN_RUNS


@pytest.mark.parametrize("case", ["carried", "joined", "differs"])
def test_the_lean_run_skips_the_dataset_manager_and_the_workers_runtime_env_only_when_safe(
        ray_cluster, monkeypatch, case):
    """The shared cluster (one node) was started with cluster_environment(), so the training
    worker inherits every setting the run propagates and starts without a runtime_env, whether
    the raylet's environment is read from /proc (this process started it) or, as a driver that
    joined a running cluster must, asked of the mailbox; a setting the cluster does not carry
    (the driver asks for another health-check interval) still reaches the worker in its
    runtime_env, as Ray Train would give it. Either way the run starts no DatasetManager and the
    model is the local one."""
    import training.xgb_train
    from training.ray_train_startup import HEALTH_CHECK_INTERVAL_ENV
    from training.xgb_train import RayTrainRun

    if case == "differs":
        monkeypatch.setenv(HEALTH_CHECK_INTERVAL_ENV, "0.2")
    if case == "joined":
        monkeypatch.setattr(training.xgb_train, "local_raylet_environment", lambda: None)
    managers_before = _dataset_managers()
    table, spec = small_table(), binary_spec(eval_fraction=0.0, params={
        "objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "nthread": 1})
    with RayTrainRun(num_workers=1, cpus_per_worker=1, spares=False) as run:  # spares: the next test
        run.feed(table, {"model": spec})
        result = run.result()["model"]
    assert run.worker_env_vars == ([HEALTH_CHECK_INTERVAL_ENV] if case == "differs" else [])
    assert run.wait_for_spares() == 0
    assert _dataset_managers() == managers_before
    np.testing.assert_array_equal(predict(result.booster, table, FEATURES),
                                  predict(train_local(table, spec).booster, table, FEATURES))


def test_a_run_fed_bad_rows_is_called_off_and_says_why(ray_cluster):
    from training.xgb_train import RayTrainRun

    run = RayTrainRun(num_workers=1, cpus_per_worker=1)
    with pytest.raises(KeyError, match="lacks column.*'f3'"):
        run.feed(small_table().drop(["f3"]), {"model": binary_spec()})
    assert not run._thread.is_alive()  # the workers stopped waiting; the run is over
    with pytest.raises(RuntimeError, match="feed the training run"):
        run.result()
    # the CPUs it held are free again: the next run fits
    assert train_ray(small_table(), binary_spec(), num_workers=1, cpus_per_worker=1).engine == "ray_train"


def _fit_tiny(**run_options):
    from training.xgb_train import RayTrainRun

    table, spec = small_table(), binary_spec(eval_fraction=0.0, params={
        "objective": "binary:logistic", "tree_method": "hist", "max_depth": 3, "nthread": 1})
    with RayTrainRun(num_workers=1, cpus_per_worker=1, **run_options) as run:
        run.feed(table, {"model": spec})
        result = run.result()["model"]
    np.testing.assert_array_equal(predict(result.booster, table, FEATURES),
                                  predict(train_local(table, spec).booster, table, FEATURES))
    return run


def test_a_run_leaves_warm_spares_that_the_next_run_takes(ray_cluster):
    """A run that fitted asks the raylet for spares started with the training worker's runtime_env
    (its imports done by the setup hook) and a plain one; the next run's training worker and
    synchronization actor take the hooked ones (their processes end with that run), and the model
    is the local one. A run with spares=False neither takes nor leaves any."""
    import psutil

    from training.spare_workers import SETUP_HOOK_ENV, hooked_spares, spare_pids, wait_for_spares

    first = _fit_tiny()
    assert first.wait_for_spares() == hooked_spares(1) + 1
    wait_for_spares(hooked_spares(1), timeout_s=60)
    waiting = set(spare_pids())
    assert len(waiting) >= hooked_spares(1)
    for pid in waiting:  # started as asked: with the hook, and idle
        assert psutil.Process(pid).environ()[SETUP_HOOK_ENV] == "training.spare_workers.import_training_worker"

    without = _fit_tiny(spares=False)
    assert without.worker_pid not in waiting and without.wait_for_spares() == 0
    assert waiting <= set(spare_pids())  # nothing took them

    second = _fit_tiny()
    assert second.worker_pid in waiting
    assert second.worker_env_vars == [SETUP_HOOK_ENV]
    still_idle = waiting & set(spare_pids(hooked=False))
    assert len(waiting) - len(still_idle) == hooked_spares(1)  # the worker's and the synchronization actor's
    assert second.wait_for_spares() == hooked_spares(1) + 1


JOINED_DRIVER = """
import json, sys
import numpy as np, pyarrow as pa, ray
ray.init(address=sys.argv[1], runtime_env={"env_vars": {"MARQUEE_PROBE": "joined"}},
         log_to_driver=False, configure_logging=False)
from training.spare_workers import hooked_spares, spare_pids, wait_for_spares
from training.xgb_train import RayTrainRun, TrainSpec
rng = np.random.default_rng(3)
x = rng.standard_normal((2000, 3)).astype(np.float32)
table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": (x[:, 0] > 0).astype(np.int8)})
spec = TrainSpec(features=["a", "b", "c"], label="y", num_boost_round=5,
                 params={"objective": "binary:logistic", "tree_method": "hist", "nthread": 1})
runs = []
for _ in range(2):
    with RayTrainRun(num_workers=1, cpus_per_worker=1) as run:
        run.feed(table, {"m": spec})
        run.result()
    mine = {"MARQUEE_PROBE": "joined"}  # this job's spares, not the session's own
    started = run.wait_for_spares()
    wait_for_spares(hooked_spares(1), timeout_s=60, env_vars=mine)
    runs.append({"pid": run.worker_pid, "asked": started, "env_vars": run.worker_env_vars,
                 "spares_after": spare_pids(env_vars=mine)})
print(json.dumps(runs))
"""


def test_a_driver_with_a_job_runtime_env_leaves_spares_its_next_run_takes(ray_cluster):
    """As a retrain submitted to `marquee up`'s cluster runs: a driver that joined the cluster
    with a runtime_env of its own (which Ray merges into every actor's); the spares its first run
    leaves are spelled as its actors are leased, so its second run's worker takes one."""
    import json
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    out = subprocess.run([sys.executable, "-c", JOINED_DRIVER, address], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    first, second = json.loads(out.stdout.strip().splitlines()[-1])
    assert first["asked"] == second["asked"] == 3
    assert len(first["spares_after"]) == 2 and second["pid"] in first["spares_after"]
    assert "MARQUEE_PROBE" in second["env_vars"] and "__RAY_WORKER_PROCESS_SETUP_HOOK_ENV_VAR" in second["env_vars"]
