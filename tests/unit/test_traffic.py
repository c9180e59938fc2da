"""The traffic simulator against an in-process fake server (httpx.MockTransport) on a fake clock:
deterministic schedules and events, retries that lose nothing, valid events, taste-driven choices.
No real server, no sleeps."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import zlib
from collections import Counter
from datetime import date

import httpx
import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from marquee.api import EventBatch, Homepage
from marquee.names import DAY_S
from marquee.schema import ARTWORK_THEMES, Event
from producers.world.behaviour import DEFAULT_BEHAVIOUR, play_logit
from producers.world.generate import generate_world
from producers.world.sampling import sigmoid
from producers.world.traffic import (
    Traffic,
    TrafficSettings,
    Viewer,
    World,
    _day_factor,
    cli_main,
    configure_cli,
    fixed_rate,
    resolve_dataset,
    schedule,
)

START = 1_800_000_000.0  # the fake clock's epoch seconds


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(members=60, titles=80, days=2, seed=5, out=out)
    return out


@pytest.fixture(scope="module")
def world(world_dir) -> World:
    return World.load(world_dir)


class FakeClock:
    """time.time and asyncio.sleep stand-ins: sleeping advances the clock at once."""

    def __init__(self, now: float = START):
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


class FakeServer:
    """Pages that depend only on the request; POST /v1/events validated as the gateway does.
    `shed_posts` / `shed_pages`: how many first attempts answer 503; `refuse`: an event type the
    server refuses with 422 naming events[i].type; `drop_posts`: connections cut before answering."""

    def __init__(self, world: World, shed_posts: int = 0, shed_pages: int = 0, refuse: str | None = None,
                 drop_posts: int = 0):
        self.world = world
        self.shed_posts, self.shed_pages, self.refuse, self.drop_posts = shed_posts, shed_pages, refuse, drop_posts
        self.stored: dict[str, dict] = {}
        self.attempts = Counter()
        self.invalid: list[str] = []
        self.pages: dict[str, dict] = {}
        self.art = {}
        for title_id in world.title_ids.tolist():
            self.art[title_id] = [a for a in world.artwork_theme if a.startswith(f"{title_id}-")]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/homepage":
            self.attempts["page"] += 1
            if self.attempts["page"] <= self.shed_pages:
                return httpx.Response(503, json={"error": "shedding"}, headers={"Retry-After": "1"})
            page = self.page(int(request.url.params["member_id"]), request.url.params["request_id"],
                             request.url.params["device"])
            self.pages[page["request_id"]] = page
            return httpx.Response(200, json=page)
        assert request.url.path == "/v1/events", request.url.path
        self.attempts["post"] += 1
        if self.attempts["post"] <= self.drop_posts:
            raise httpx.ConnectError("connection reset", request=request)
        if self.attempts["post"] <= self.drop_posts + self.shed_posts:
            return httpx.Response(503, json={"error": "shedding"}, headers={"Retry-After": "2"})
        body = json.loads(request.content)
        try:
            EventBatch.model_validate(body)
        except ValidationError as exc:
            self.invalid.append(str(exc))
            return httpx.Response(422, json={"error": str(exc)[:200], "fields": ["events"]})
        events = body["events"]
        bad = [f"events[{i}].type" for i, e in enumerate(events) if e["type"] == self.refuse]
        if bad:
            return httpx.Response(422, json={"error": "; ".join(f"{b}: refused" for b in bad), "fields": bad,
                                             "accepted": 0, "rejected": len(bad)})
        new = [e for e in events if e["event_id"] not in self.stored]
        for e in new:
            self.stored[e["event_id"]] = e
        return httpx.Response(200, json={"accepted": len(new), "duplicates": len(events) - len(new),
                                         "rejected": [], "last_seq": len(self.stored) - 1})

    def page(self, member_id: int, request_id: str, device: str) -> dict:
        rng = np.random.default_rng(zlib.crc32(request_id.encode()))
        titles = rng.choice(self.world.title_ids, size=(4, 10), replace=False).tolist()
        rows = []
        for r, row in enumerate(titles):
            items = []
            for position, title_id in enumerate(row):
                arts = self.art[title_id]
                items.append({"title_id": title_id, "name": f"t{title_id}", "position": position, "score": 1.0,
                              "genres": [], "explanation": {"sources": ["fake"], "reasons": ["fake"]},
                              "artwork": {"artwork_id": arts[int(rng.integers(len(arts)))],
                                          "propensity": 1.0 / len(arts)}})
            rows.append({"row_id": f"row{r}", "title": f"Row {r}", "items": items})
        return {"request_id": request_id, "member_id": member_id, "country": "US", "device": device,
                "maturity": "mature", "cold_start": False, "fallback": False, "model_versions": {},
                "experiments": {"home_test": "B" if member_id % 2 else "A"}, "degraded": [], "rows": rows,
                "removed": {"counts": {}, "total": 0}, "timings_ms": {"total": 1.0}}


def settings(**kw) -> TrafficSettings:
    base = {"url": "http://sim.test", "members": 60, "days": 2, "seed": 1, "compression": DAY_S / 10,
            "rate": 20.0, "concurrency": 4, "retry_deadline_s": 60.0}
    return TrafficSettings(**{**base, **kw})


def run(world: World, server: FakeServer, **kw) -> tuple[dict, str]:
    clock = FakeClock()
    log = io.StringIO()
    traffic = Traffic(settings(**kw), world, transport=server.transport(), clock=clock, sleep=clock.sleep, log=log)
    return asyncio.run(traffic.run()), log.getvalue()


@pytest.fixture(scope="module")
def baseline(world):
    server = FakeServer(world)
    summary, log = run(world, server)
    return server, summary, log


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("url", "localhost:8000"), ("members", 0), ("days", 0), ("seed", -1), ("compression", 0.0),
    ("compression", float("inf")), ("rate", -1.0), ("concurrency", 0), ("timeout", 0), ("batch", 1001),
    ("members", 2.5), ("rate", True),
])
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: expected"):
        TrafficSettings(**{field: value})


def test_more_members_than_the_world_is_refused(world):
    with pytest.raises(ValueError, match=r"^members: expected at most 60"):
        schedule(world, settings(members=61))


def test_day_ms_follows_compression():
    assert TrafficSettings(compression=DAY_S / 60).day_ms == 60_000
    assert TrafficSettings(compression=1.0).day_ms == DAY_S * 1000


# -- the schedule --------------------------------------------------------------------------------


def test_schedule_is_deterministic_and_per_member(world):
    first = schedule(world, settings())
    assert first == schedule(world, settings())
    assert first != schedule(world, settings(seed=2))
    # a member's sessions depend on (seed, member, day) only, not on how many members run
    few = {(s.member_id, s.day, s.k, s.sim_s, s.device) for s in schedule(world, settings(members=10))}
    many = {(s.member_id, s.day, s.k, s.sim_s, s.device) for s in first if s.member_id <= 10}
    assert few == many and few
    assert len({s.request_id for s in first}) == len(first)


def test_schedule_is_a_fixed_rate_queue(world):
    sessions = schedule(world, settings(rate=0.5))
    walls = np.array([s.wall_s for s in sessions])
    nominal = np.array([s.sim_s for s in sessions]) / settings().compression
    assert np.all(walls >= nominal - 1e-9)
    assert np.all(np.diff(walls) >= 1 / 0.5 - 1e-9)  # never faster than the rate
    fast = schedule(world, settings(rate=1e6))
    np.testing.assert_allclose([s.wall_s for s in fast], np.array([s.sim_s for s in fast]) / settings().compression,
                               atol=1e-5)  # a rate that suffices keeps simulated times


def test_fixed_rate_closed_form_matches_the_recurrence():
    rng = np.random.default_rng(0)
    nominal = np.sort(rng.uniform(0, 10, 200))
    expected, last = [], -np.inf
    for n in nominal:
        last = max(n, last + 1 / 7.0)
        expected.append(last)
    np.testing.assert_allclose(fixed_rate(nominal, 7.0), expected)


def test_session_counts_follow_activity(world):
    s = settings(days=2)
    sessions = schedule(world, s)
    # the world's weekday factors: 2026-01-03 is a Saturday, 2026-01-04 a Sunday (busy days)
    assert [_day_factor(world, d) for d in range(2)] == [1.2, 1.2]
    mean = float(world.activity[: s.members].sum()) * 1.2 * 2
    lo, hi = stats.poisson.ppf([0.0005, 0.9995], mean)
    assert lo <= len(sessions) <= hi
    hours = np.array([x.hour for x in sessions])
    assert np.all((hours >= 0) & (hours < 24))
    assert all(x.day == int(x.sim_s // DAY_S) for x in sessions)


# -- runs against the fake server ------------------------------------------------------------------


def test_every_posted_event_is_valid_and_belongs_to_a_served_page(world, baseline):
    server, summary, _ = baseline
    assert not server.invalid
    assert server.stored and summary["events"]["accepted"] == len(server.stored)
    for page in list(server.pages.values())[:3]:
        Homepage.model_validate(page)  # the fake pages have the real shape
    start_ms = summary["start_ms"]
    end_ms = start_ms + summary["days"] * summary["day_ms"]
    for event in server.stored.values():
        Event.parse(event)
        assert event["request_id"] in server.pages
        assert start_ms <= event["timestamp"] < end_ms
        assert event["event_id"].startswith(event["request_id"] + "-")
    types = Counter(e["type"] for e in server.stored.values())
    assert types["impression"] > types["play"] > 0 and types["progress"] > 0
    impressions = [e for e in server.stored.values() if e["type"] == "impression"]
    page_art = {(rid, i["title_id"]): i["artwork"] for rid, p in server.pages.items()
                for r in p["rows"] for i in r["items"]}
    for e in impressions:  # artwork and propensity echoed from the page
        assert page_art[(e["request_id"], e["title_id"])] == {"artwork_id": e["artwork"], "propensity": e["propensity"]}


def test_summary_counts_and_reports_per_variant(baseline):
    server, summary, log = baseline
    json.dumps(summary)  # JSON-serializable
    assert summary["pages"] == len(server.pages) == summary["sessions"] - summary["sessions_late"]
    assert summary["events"]["lost"] == summary["events"]["rejected"] == 0
    assert summary["events"]["generated"] == summary["events"]["posted"] == len(server.stored)
    variants = summary["experiments"]["home_test"]
    assert set(variants) == {"A", "B"}
    plays = sum(1 for e in server.stored.values() if e["type"] == "play")
    assert sum(v["plays"] for v in variants.values()) == plays
    a = variants["A"]
    assert a["plays_per_member"] == pytest.approx(a["plays"] / a["members"], abs=1e-4)
    members_a = {p["member_id"] for p in server.pages.values() if p["experiments"]["home_test"] == "A"}
    assert a["members"] == len(members_a)
    assert "day 1/2 home_test=A:" in log and "day 2/2 home_test=B:" in log
    assert f"day_ms={summary['day_ms']}" in log


def test_same_seed_same_events_whatever_the_concurrency(world, baseline):
    server, _, _ = baseline
    again = FakeServer(world)
    run(world, again, concurrency=1)
    assert again.stored == server.stored


def test_a_different_seed_gives_different_events(world, baseline):
    server, _, _ = baseline
    other = FakeServer(world)
    run(world, other, seed=2)
    assert other.stored and set(other.stored) != set(server.stored)


def test_shedding_and_dropped_connections_lose_nothing(world, baseline):
    server, _, _ = baseline
    flaky = FakeServer(world, shed_posts=3, shed_pages=1, drop_posts=1)
    summary, _ = run(world, flaky)
    assert flaky.stored == server.stored
    assert summary["errors"]["events"] == {"503": 3, "transport": 1}
    assert summary["errors"]["homepage"] == {"503": 1}
    assert summary["events"]["lost"] == 0 and summary["sessions_failed"] == 0


def test_a_422_drops_only_the_events_it_names(world, baseline):
    server, _, _ = baseline
    picky = FakeServer(world, refuse="thumb")
    summary, _ = run(world, picky)
    thumbs = {k for k, e in server.stored.items() if e["type"] == "thumb"}
    assert thumbs, "the fixture world should produce some thumbs"
    assert set(picky.stored) == set(server.stored) - thumbs
    assert summary["events"]["rejected"] == len(thumbs)
    assert summary["rejections"] and "events[" in summary["rejections"][0]


def test_a_failed_page_is_a_counted_lost_session(world):
    server = FakeServer(world, shed_pages=10**9)
    summary, _ = run(world, server, days=1)
    assert summary["pages"] == 0 and summary["sessions_failed"] == summary["sessions"] - summary["sessions_late"]
    assert summary["errors"]["homepage"]["503"] == 3 * summary["sessions_failed"]
    assert not server.stored


# -- behaviour -----------------------------------------------------------------------------------


def tiny_world() -> World:
    """Two titles: 1 along the member's taste, 2 opposite; one artwork each, theme 0."""
    d = 4
    vec = np.zeros((2, d), np.float32)
    vec[0, 0], vec[1, 0] = 1.0, -1.0
    taste = np.zeros((1, d), np.float32)
    taste[0, 0] = 1.0
    return World(member_ids=np.array([1]), country=["US"], devices=np.array([[0, -1, -1]]),
                 device_count=np.array([1]), taste=taste, theme_affinity=np.zeros((1, len(ARTWORK_THEMES)), np.float32),
                 activity=np.array([1.0]), title_ids=np.array([1, 2]), vec=vec, pop_z=np.zeros(2, np.float32),
                 release_day=np.array([np.nan, np.nan]), runtime=np.array([90.0, 90.0]),
                 runtime_z=np.zeros(2, np.float32), episodes=np.array([1, 1]), is_series=np.array([False, False]),
                 artwork_theme={"1-0": 0, "2-0": 0}, start_day=20_000)


def test_choices_follow_taste():
    world = tiny_world()
    # the mismatched title first, so position works against the matched one
    page = {"rows": [{"row_id": "r", "items": [
        {"title_id": 2, "position": 0, "artwork": {"artwork_id": "2-0", "propensity": 1.0}},
        {"title_id": 1, "position": 1, "artwork": {"artwork_id": "1-0", "propensity": 1.0}}]}]}
    draws, plays = 400, Counter()
    for i in range(draws):
        viewer = Viewer(world)  # a fresh member state each draw
        events = viewer.browse(np.random.default_rng([3, i]), 0, page, hour=12, device=0, now_day=20_000.0)
        plays.update(e["title_id"] for _, e in events if e["type"] == "play")
    b = DEFAULT_BEHAVIOUR
    p_match = float(sigmoid(play_logit(b, 1.0, 0.0, 0.0, 0.0, 1, 0, 12, 0)))
    p_miss = float(sigmoid(play_logit(b, -1.0, 0.0, 0.0, 0.0, 0, 0, 12, 0)))
    assert plays[1] > 5 * max(plays[2], 1)
    # the rates are the behaviour model's own probabilities (two-sided exact binomial tests)
    assert stats.binomtest(plays[1], draws, p_match).pvalue > 1e-3
    assert stats.binomtest(plays[2], draws, p_miss).pvalue > 1e-3


def test_viewing_state_carries_across_sessions():
    world = tiny_world()
    viewer = Viewer(world)
    page = {"rows": [{"row_id": "r", "items": [{"title_id": 1, "position": 0,
                                                "artwork": {"artwork_id": "1-0", "propensity": 1.0}}]}]}
    for i in range(200):  # until the member has finished the matched title
        events = viewer.browse(np.random.default_rng([4, i]), 0, page, hour=20, device=0, now_day=20_000.0)
        if any(e["type"] == "completion" for _, e in events):
            break
    else:
        pytest.fail("no completion in 200 sessions")
    episodes, _, _ = viewer.state(0).lookup(np.array([0]))
    assert episodes[0, 0] == 1
    completed = viewer.play_logits(0, viewer.look(np.random.default_rng(0), page, 0), 20, 0, 20_000.0,
                                   episodes[0], np.zeros(2), np.zeros(2, bool))
    fresh = viewer.play_logits(0, viewer.look(np.random.default_rng(0), page, 0), 20, 0, 20_000.0,
                               np.zeros(2), np.zeros(2), np.zeros(2, bool))
    assert completed[0] == pytest.approx(fresh[0] + DEFAULT_BEHAVIOUR.play_completed)


def test_unknown_titles_are_shown_but_never_played():
    world = tiny_world()
    page = {"rows": [{"row_id": "r", "items": [{"title_id": 999, "position": 0,
                                                "artwork": {"artwork_id": None, "propensity": 1.0}}]}]}
    events = Viewer(world).browse(np.random.default_rng(0), 0, page, hour=20, device=0, now_day=20_000.0)
    assert [e for _, e in events] == [{"type": "impression", "title_id": 999, "row": "r", "position": 0}]


# -- dataset and CLI -------------------------------------------------------------------------------


def test_world_loads_from_its_directory(world_dir, world, tmp_path):
    assert world.n_members == 60 and world.n_titles == 80
    assert world.start_day == (date(2026, 1, 3) - date(1970, 1, 1)).days
    np.testing.assert_allclose(np.linalg.norm(world.taste, axis=1), 1.0, atol=1e-5)
    home = tmp_path / "home"
    home.mkdir()
    (home / "serving.json").write_text(json.dumps({"dataset": str(world_dir)}))
    assert resolve_dataset(None, home) == world_dir
    assert resolve_dataset(tmp_path / "x", home) == tmp_path / "x"
    with pytest.raises(ValueError, match="not a directory|not a Marquee dataset"):
        World.load(tmp_path / "missing")


def test_cli_refuses_bad_arguments_by_name(world_dir, capsys):
    parser = argparse.ArgumentParser()
    configure_cli(parser)
    args = parser.parse_args(["--members", "0", "--dataset", str(world_dir)])
    assert cli_main(args) == 2
    assert "members: expected" in capsys.readouterr().err
    args = parser.parse_args(["--members", "500", "--dataset", str(world_dir), "--quiet"])
    assert cli_main(args) == 2
    assert "members: expected at most 60" in capsys.readouterr().err
