"""MarqueeService without Ray: /healthz names the served model in both placements (fused from
the replica's own holder, split by asking the retrieval stage; a stage that does not answer is
reported, not a hang), and the admin retrain call refuses a bad pipeline setting with a 422
naming it before any job is submitted (a job failing minutes later is the wrong place to learn it)."""

from __future__ import annotations

import asyncio

import pytest

from deployments.gateway import ApiError, RetrainOptions
from deployments.service import MarqueeService, Settings


class _Catalog:
    titles = {1: object(), 2: object()}


class _Stages:
    """The placement contract's status call, answered by `status` (None: no stage to ask)."""

    def __init__(self, status=None):
        self._status = status

    async def model_status(self) -> dict:
        return await self._status() if self._status is not None else {"version": None}


def settings_of(tmp_path, placement: str = "split") -> Settings:
    (tmp_path / "world").mkdir(exist_ok=True)
    (tmp_path / "world" / "manifest.json").write_text("{}")  # Settings only checks it is a dataset
    return Settings(home=str(tmp_path), dataset=str(tmp_path / "world"), placement=placement)


def service(tmp_path, placement: str = "split", model_status=None) -> MarqueeService:
    return MarqueeService(settings_of(tmp_path, placement), _Catalog(), homepage=None,
                          stages=_Stages(model_status), event_log=None)


# -- health --------------------------------------------------------------------------------------


def test_split_health_reads_the_model_from_the_retrieval_stage(tmp_path):
    async def status():
        return {"version": "v0003", "target": "promoted", "last_error": None}

    body = asyncio.run(service(tmp_path, model_status=status).health())
    assert body["placement"] == "split" and body["model"]["version"] == "v0003" and body["titles"] == 2


def test_a_stage_that_does_not_answer_is_reported(tmp_path, monkeypatch):
    monkeypatch.setattr("deployments.service.HEALTH_STAGE_TIMEOUT_S", 0.05)

    async def hung():
        await asyncio.sleep(10)

    body = asyncio.run(service(tmp_path, model_status=hung).health())
    assert body["status"] == "ok" and body["model"]["version"] is None
    assert "did not answer (TimeoutError)" in body["model"]["last_error"]


def test_without_a_model_the_version_is_unknown(tmp_path):
    body = asyncio.run(service(tmp_path).health())
    assert body["model"] == {"version": None}


# -- admin retrain -------------------------------------------------------------------------------


@pytest.fixture
def fused(tmp_path, monkeypatch) -> MarqueeService:
    submitted = []
    monkeypatch.setattr("actors.jobs.start_job", lambda paths, argv: submitted.append(argv) or None)
    svc = service(tmp_path, placement="fused")
    svc.submitted = submitted
    return svc


@pytest.mark.parametrize("settings, named", [
    ({"rounds": "many"}, "rounds: expected an integer"),
    ({"play_weight": -2}, "play_weight"),
    ({"depth": {"sequence": -5}}, "depth"),
    ({"learning_rate": 0.1}, "unknown PipelineConfig setting(s) learning_rate"),
])
def test_bad_settings_are_refused_before_a_job_starts(fused, settings, named):
    with pytest.raises(ApiError) as raised:
        fused.admin("retrain", options=RetrainOptions(set=settings))
    assert raised.value.status == 422 and named in str(raised.value) and fused.submitted == []


def test_good_settings_reach_the_job(fused):
    with pytest.raises(ApiError) as raised:  # no cluster runs in a unit test: 409 after submitting
        fused.admin("retrain", options=RetrainOptions(set={"rounds": 50}))
    assert raised.value.status == 409 and "marquee up" in str(raised.value)
    assert fused.submitted and "--set=rounds=50" in fused.submitted[0]


def test_one_retrain_at_a_time(fused, monkeypatch):
    class Status:
        def __init__(self, done): self.done = done
        def is_terminal(self): return self.done

    class Client:
        done = False
        def get_job_status(self, job): return Status(self.done)

    client, jobs = Client(), iter(["job-1", "job-2"])
    monkeypatch.setattr("actors.jobs.start_job", lambda paths, argv: (client, next(jobs), "http://dash"))
    assert fused.admin("retrain", options=RetrainOptions(set={}))["job_id"] == "job-1"
    with pytest.raises(ApiError) as raised:
        fused.admin("retrain", options=RetrainOptions(set={}))
    assert raised.value.status == 409 and "job-1" in str(raised.value)
    client.done = True  # the first job finished: the next one may start
    assert fused.admin("retrain", options=RetrainOptions(set={}))["job_id"] == "job-2"
