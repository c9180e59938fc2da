"""LocalCluster.connect: a driver's ray.init tried again after a passing failure, not after the
head died, and the last failure raised as it came (ray.init is replaced: no cluster here)."""

from __future__ import annotations

import os

import pytest
import ray

from marquee.home import LocalCluster


def _cluster(tmp_path, pid):
    return LocalCluster(pid=pid, gcs_address="127.0.0.1:1", dashboard_url="", temp_dir="", home=str(tmp_path))


@pytest.fixture
def calls(monkeypatch):
    record = {"init": [], "shutdown": 0, "outcomes": []}

    def init(**kwargs):
        record["init"].append(kwargs)
        outcome = record["outcomes"].pop(0)
        if outcome is not None:
            raise outcome

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "shutdown", lambda: record.__setitem__("shutdown", record["shutdown"] + 1))
    return record


def test_a_passing_failure_is_tried_again(tmp_path, calls):
    calls["outcomes"] = [ConnectionError("GCS timed out"), None]
    _cluster(tmp_path, os.getpid()).connect("marquee", pause_s=0)
    assert len(calls["init"]) == 2 and calls["shutdown"] == 1
    assert calls["init"][1]["address"] == "127.0.0.1:1" and calls["init"][1]["namespace"] == "marquee"


def test_the_last_failure_is_raised_after_every_attempt(tmp_path, calls):
    calls["outcomes"] = [RuntimeError("no node"), ConnectionError("one"), ConnectionError("last")]
    with pytest.raises(ConnectionError, match="last"):
        _cluster(tmp_path, os.getpid()).connect(attempts=3, pause_s=0)
    assert len(calls["init"]) == 3


def test_a_dead_head_is_not_waited_for(tmp_path, calls):
    calls["outcomes"] = [ConnectionError("refused"), None]
    with pytest.raises(ConnectionError, match="refused"):
        _cluster(tmp_path, 2**22 + 12345).connect(pause_s=0)  # no such pid
    assert len(calls["init"]) == 1


def test_a_session_already_open_is_refused_and_left_alone(tmp_path, calls, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    calls["outcomes"] = [None]
    with pytest.raises(RuntimeError, match="already connected to a Ray cluster"):
        _cluster(tmp_path, os.getpid()).connect(pause_s=0)
    assert calls["init"] == [] and calls["shutdown"] == 0
