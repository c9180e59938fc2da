"""Experiments in the serving graph: the followed file, the variant's pipeline, first exposures."""

from __future__ import annotations

import asyncio
import json
import os
import textwrap

import pytest

from deployments.assignment import ExperimentRouter, ExperimentsFile, override_validator
from deployments.homepage import HomepageRequest
from deployments.page_config import HomepageConfig
from experiments.allocation import Allocator
from marquee.schema import Event

GOOD = """
holdout: 0.0
layers: [rows]
experiments:
  - name: diversity
    layer: rows
    traffic: 1.0
    variants:
      control: {weight: 1}
      strong: {weight: 1, override: {selectors: {diversity: {mmr_lambda: 0.5}}}}
"""


def write(path, text: str, bump: int = 0) -> None:
    path.write_text(textwrap.dedent(text))
    stat = path.stat()  # a new mtime even within the file system's clock resolution
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def follower(path) -> ExperimentsFile:
    return ExperimentsFile(path, override_validator(lambda: HomepageConfig()))


def test_the_file_is_followed_and_a_bad_edit_is_refused_whole_while_the_running_version_serves(tmp_path):
    path = tmp_path / "experiments.yaml"
    experiments = follower(path)
    assert experiments.refresh() is False and experiments.allocator is None  # no file: no experiments
    write(path, GOOD)
    assert experiments.refresh() is True
    running = experiments.allocator.version
    assert experiments.status()["experiments"] == ["diversity"] and experiments.status()["error"] is None
    assert experiments.refresh() is False  # unchanged: not re-read

    write(path, GOOD.replace("mmr_lambda: 0.5", "mmr_lambda: 7"), bump=1)  # out of range
    assert experiments.refresh() is False
    assert experiments.allocator.version == running
    assert "experiments[0].variants.strong.override" in experiments.status()["error"]
    assert "mmr_lambda" in experiments.status()["error"]

    write(path, GOOD.replace("mmr_lambda: 0.5", "mmr_lambda: 0.3"), bump=2)
    assert experiments.refresh() is True and experiments.allocator.version != running
    assert experiments.status()["error"] is None
    path.unlink()
    assert experiments.refresh() is True and experiments.allocator is None  # deleting ends them all


def test_a_variant_may_not_vary_the_shared_candidate_stage(tmp_path):
    path = tmp_path / "experiments.yaml"
    write(path, GOOD.replace("{selectors: {diversity: {mmr_lambda: 0.5}}}", "{candidates: {row_depth: 5}}"))
    experiments = follower(path)
    assert experiments.refresh() is False and experiments.allocator is None
    assert "candidates: the candidate stage is shared by every member" in experiments.status()["error"]


def test_the_follower_thread_picks_up_a_change_without_a_restart(tmp_path):
    path = tmp_path / "experiments.yaml"
    experiments = ExperimentsFile(path, override_validator(lambda: HomepageConfig()), poll_s=0.02).follow()
    try:
        write(path, GOOD)
        for _ in range(250):
            if experiments.allocator is not None:
                break
            asyncio.run(asyncio.sleep(0.02))
        assert experiments.allocator is not None
    finally:
        experiments.stop()


class FakeHomepage:
    def __init__(self, name: str):
        self.name, self.calls = name, []

    async def __call__(self, request, experiments=None):
        self.calls.append(experiments)
        return {"request_id": request.request_id, "pipeline": self.name, "experiments": dict(experiments or {})}


def make_router(tmp_path, text: str = GOOD):
    path = tmp_path / "experiments.yaml"
    write(path, text)
    experiments = follower(path)
    experiments.refresh()
    records: list[dict] = []
    built: list[tuple[HomepageConfig, str | None]] = []

    def build(config, interleaving=None):
        built.append((config, interleaving))
        return FakeHomepage(f"lambda={config.selectors.diversity.mmr_lambda}")

    default = FakeHomepage("default")
    return ExperimentRouter(experiments, default, build, HomepageConfig(), records.append), records, built, default


def serve(router, member: int, request_id: str) -> dict:
    return asyncio.run(router(HomepageRequest(member, request_id=request_id)))


def test_each_member_gets_their_variants_pipeline_and_one_exposure_per_variant(tmp_path):
    router, records, built, default = make_router(tmp_path)
    allocator: Allocator = router.experiments.allocator
    pages = {m: serve(router, m, f"r{m}") for m in range(1, 41)}
    for member, page in pages.items():
        (variant,) = allocator.assign(member, 0).values()
        assert page["experiments"] == {"diversity": variant}
        assert page["pipeline"] == ("lambda=0.5" if variant == "strong" else f"lambda={HomepageConfig().selectors.diversity.mmr_lambda}")
    assert len(built) == 2  # one pipeline per variant, built once
    assert {p["experiments"]["diversity"] for p in pages.values()} == {"control", "strong"}
    assert len(records) == 40
    serve(router, 1, "again")  # a second page in the same variant: no second exposure
    assert len(records) == 40
    for record in records:
        event = Event.parse(record)  # what the event log accepts
        assert event.type == "exposure"
        assert json.loads(event.experiments) == pages[event.member_id]["experiments"]
        assert event.request_id == f"r{event.member_id}"


def test_members_outside_every_experiment_get_the_base_page_unassigned(tmp_path):
    router, records, built, default = make_router(tmp_path, GOOD.replace("traffic: 1.0", "traffic: 0.1"))
    pages = [serve(router, m, f"r{m}") for m in range(1, 201)]
    outside = [p for p in pages if p["pipeline"] == "default"]
    assert 120 < len(outside) < 200 and all(p["experiments"] == {} for p in outside)
    assert len(records) == 200 - len(outside)  # exposures only for members in the experiment


def test_a_combination_that_does_not_build_serves_the_base_page_without_an_assignment(tmp_path):
    router, records, built, default = make_router(tmp_path)

    def failing(config, interleaving=None):
        raise ValueError("rows: no such source")

    router.build = failing
    router.rebase(default, HomepageConfig())
    page = serve(router, 3, "r3")
    assert page["pipeline"] == "default" and page["experiments"] == {} and records == []


def test_a_new_file_rebuilds_the_variants_pipelines(tmp_path):
    router, records, built, default = make_router(tmp_path)
    members = range(1, 21)
    for m in members:
        serve(router, m, f"a{m}")
    write(router.experiments.path, GOOD.replace("mmr_lambda: 0.5", "mmr_lambda: 0.2"), bump=1)
    assert router.experiments.refresh()
    strong = [serve(router, m, f"b{m}") for m in members]
    assert {p["pipeline"] for p in strong if p["experiments"]["diversity"] == "strong"} == {"lambda=0.2"}


@pytest.mark.parametrize("override, field", [({"sources": {}}, "sources"), ({"rows": {"order": "x"}}, "rows.order")])
def test_override_validator_names_the_field(override, field):
    with pytest.raises(ValueError, match=field):
        override_validator(lambda: HomepageConfig())(override)
