"""`marquee simulate` (cli_main) over real HTTP against the real FastAPI gateway (make_api) under
uvicorn on a free port, with a fake service behind it that sheds event batches at first. No Ray."""

from __future__ import annotations

import argparse
import json
import threading
import time
import zlib

import numpy as np
import pytest

uvicorn = pytest.importorskip("uvicorn")

from deployments.gateway import ApiError, make_api
from deployments.homepage import HomepageRequest
from marquee.api import Homepage
from ops.local.ports import free_port
from producers.world.generate import generate_world
from producers.world.traffic import World, cli_main, configure_cli


class WorldService:
    """A GatewayService serving fixed pages of the world's titles; sheds the first batches."""

    admin_token = None

    def __init__(self, world: World, shed: int = 2):
        self.world, self.shed = world, shed
        self.stored: dict[str, dict] = {}
        self.appends = 0
        self.pages: dict[str, dict] = {}
        self.art = {t: sorted(a for a in world.artwork_theme if a.startswith(f"{t}-")) for t in world.title_ids.tolist()}

    async def homepage(self, request: HomepageRequest) -> dict:
        rng = np.random.default_rng(zlib.crc32(request.request_id.encode()))
        rows = []
        for r, row in enumerate(rng.choice(self.world.title_ids, size=(3, 10), replace=False).tolist()):
            items = [{"title_id": t, "name": f"t{t}", "position": p, "score": 1.0, "genres": [],
                      "explanation": {"sources": ["fake"], "reasons": ["fake"]},
                      "artwork": {"artwork_id": self.art[t][0], "propensity": 1.0 / len(self.art[t])}}
                     for p, t in enumerate(row)]
            rows.append({"row_id": f"row{r}", "title": f"Row {r}", "items": items})
        page = {"request_id": request.request_id, "member_id": request.member_id, "country": "US",
                "device": request.device, "maturity": "mature", "cold_start": False, "fallback": False,
                "model_versions": {}, "experiments": {"exp": "B" if request.member_id % 2 else "A"},
                "degraded": [], "rows": rows, "removed": {"counts": {}, "total": 0}, "timings_ms": {"total": 1.0}}
        self.pages[request.request_id] = page
        return page

    async def append_events(self, events: list[dict]) -> dict:
        self.appends += 1
        if self.appends <= self.shed:
            raise ApiError(503, "shedding", {"Retry-After": "0"})
        new = [e for e in events if e["event_id"] not in self.stored]
        self.stored.update((e["event_id"], e) for e in new)
        return {"accepted": len(new), "duplicates": len(events) - len(new), "rejected": [], "last_seq": 0}

    def title(self, title_id: int):
        return None

    def genres(self) -> tuple[str, ...]:
        return ("Drama",)

    def has_title(self, title_id: int) -> bool:
        return False

    async def health(self) -> dict:
        return {}

    def admin(self, action, version=None, options=None) -> dict:
        return {}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(members=80, titles=100, days=2, seed=11, out=out)
    return out


@pytest.fixture
def server(world_dir):
    service = WorldService(World.load(world_dir))
    port = free_port()
    config = uvicorn.Config(make_api(service), host="127.0.0.1", port=port, log_level="warning", access_log=False)
    http = uvicorn.Server(config)
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not http.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield service, f"http://127.0.0.1:{port}"
    http.should_exit = True
    thread.join(10)


def simulate(url: str, world_dir, capsys) -> dict:
    parser = argparse.ArgumentParser()
    configure_cli(parser)
    args = parser.parse_args(["--url", url, "--dataset", str(world_dir), "--members", "80", "--days", "2",
                              "--seed", "3", "--compression", str(86400 / 2), "--rate", "40", "--json"])
    assert cli_main(args) == 0
    return json.loads(capsys.readouterr().out)


def relative(stored: dict[str, dict], start_ms: int) -> dict[str, dict]:
    return {k: {**e, "timestamp": e["timestamp"] - start_ms} for k, e in stored.items()}


def test_simulate_over_http_is_reproducible_and_loses_nothing(server, world_dir, capsys):
    service, url = server
    first = simulate(url, world_dir, capsys)
    assert first["events"]["lost"] == first["events"]["rejected"] == 0
    assert first["errors"]["events"] == {"503": 2}
    assert first["pages"] == len(service.pages) > 0
    assert first["events"]["accepted"] == first["events"]["generated"] == len(service.stored)
    assert set(first["experiments"]["exp"]) == {"A", "B"}
    assert first["day_ms"] == 2000 and first["elapsed_s"] >= 3.5  # it runs for the window, not faster
    Homepage.model_validate(next(iter(service.pages.values())))
    assert {e["request_id"] for e in service.stored.values()} <= set(service.pages)

    events = relative(service.stored, first["start_ms"])
    service.stored.clear()
    service.pages.clear()
    service.appends = 0
    second = simulate(url, world_dir, capsys)
    # same seed, same answers: the same events, timestamps equal relative to the run's start
    assert relative(service.stored, second["start_ms"]) == events
