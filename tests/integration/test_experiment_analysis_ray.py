"""The Ray Data engine of experiments/analysis.py gives exactly the arrow engine's numbers."""

from __future__ import annotations

import json

import pytest

from experiments.analysis import analyze
from marquee.dataset import write_events
from tests.experiment_fixtures import make_fixture


@pytest.fixture(scope="module")
def fixture():
    # crossovers and two variants against control: every path of the aggregation
    return make_fixture(members=300, days=5, seed=21, weights={"control": 2, "a": 1, "b": 1},
                        lifts={"a": 0.4, "b": 0.0}, crossovers=12, latency_ms={"b": 90.0})


def without_engine(report: dict) -> dict:
    """The report less what differs between two calls by design: the engine's name, and the
    cutoff (the wall clock at each call, past every event here)."""
    window = {k: v for k, v in report["window"].items() if k != "cutoff_ms"}
    return {k: v for k, v in report.items() if k != "engine"} | {"window": window}


def test_ray_dataset_in_several_blocks_equals_arrow(ray_cluster, fixture):
    import ray.data

    events = fixture.events
    third = events.num_rows // 3
    # blocks that split members' events, so the groupby must bring each member together
    ds = ray.data.from_arrow([events.slice(0, third), events.slice(third, third), events.slice(2 * third)])
    kwargs = {"runtimes": fixture.titles, "day_ms": fixture.day_ms, "pre_days": 4}
    arrow = analyze(events, fixture.experiment, **kwargs)
    on_ray = analyze(ds, fixture.experiment, engine="ray", **kwargs)
    assert on_ray["engine"] == "ray"
    assert json.dumps(without_engine(on_ray), sort_keys=True) == json.dumps(without_engine(arrow), sort_keys=True)
    assert arrow["crossovers"]["count"] == 12


def test_parquet_paths_with_now_equal_arrow(ray_cluster, fixture, tmp_path):
    write_events(fixture.events, tmp_path / "events")
    now = fixture.events.column("timestamp").cast("int64")[fixture.events.num_rows // 2].as_py()
    kwargs = {"runtimes": fixture.titles, "day_ms": fixture.day_ms, "pre_days": 4, "now_ms": now}
    arrow = analyze(fixture.events, fixture.experiment, **kwargs)
    on_ray = analyze(str(tmp_path / "events"), fixture.experiment, engine="ray", **kwargs)
    assert without_engine(on_ray) == without_engine(arrow)
    assert arrow["window"]["end_ms"] == now
