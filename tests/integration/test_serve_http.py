"""The homepage app on a real Ray Serve HTTP endpoint: pages, rules, explanations, cold start,
events and preferences flowing back into pages, bad input, admin auth."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import ray

from deployments.catalog import load_catalog
from marquee.schema import MATURITY_LABELS

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def client(serve_app):
    with httpx.Client(base_url=serve_app.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def catalog(serve_app):
    return load_catalog(serve_app.paths.world)


def page_titles(page: dict) -> list[int]:
    return [item["title_id"] for row in page["rows"] for item in row["items"]]


def poll(fn, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.3)


def test_a_members_homepage_has_ranked_explained_rows_with_artwork(client, serve_app, catalog):
    response = client.get("/v1/homepage", params={"member_id": 5, "request_id": "req-1"})
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["request_id"] == "req-1" and page["member_id"] == 5
    assert page["degraded"] == [] and page["fallback"] is False
    assert page["model_versions"]["ranker"] == serve_app.system["model_version"]
    assert page["experiments"] == {}
    titles = page_titles(page)
    assert len(titles) == len(set(titles)), "a title appears twice on the page"
    assert len(page["rows"]) >= 4
    for row in page["rows"]:
        assert row["items"], row["row_id"]
        for item in row["items"]:
            assert item["explanation"]["sources"], item
            art = item["artwork"]
            assert art["artwork_id"] in catalog.artwork[item["title_id"]]
            assert 0 < art["propensity"] <= 1
        series = [catalog.titles[i["title_id"]].series_id for i in row["items"]]
        for s in {s for s in series if s is not None}:
            assert series.count(s) <= 2, f"row {row['row_id']} shows series {s} {series.count(s)} times"
    assert set(page["removed"]["counts"]) >= {"watched", "availability", "maturity"}
    timing = response.headers["server-timing"]
    assert "total;dur=" in timing and "rank;dur=" in timing
    byw = [row for row in page["rows"] if row["row_id"].startswith("because_you_watched:")]
    for row in byw:
        seed = int(row["row_id"].split(":")[1])
        assert row["title"] == f"Because you watched {catalog.titles[seed].name}"
        assert all(f"because you watched {catalog.titles[seed].name}" in i["explanation"]["reasons"]
                   for i in row["items"])


def test_rules_hold_on_the_page(client, catalog, serve_app):
    state = ray.get_actor("marquee-member-state", namespace="marquee")
    for member in (3, 11, 42):
        snapshot = ray.get(state.get.remote(member))
        page = client.get("/v1/homepage", params={"member_id": member, "maturity": "kids"}).json()
        assert page["maturity"] == "kids"
        watching = {c.title_id for c in snapshot.continue_watching}
        for row in page["rows"]:
            for item in row["items"]:
                info = catalog.titles[item["title_id"]]
                assert info.maturity <= MATURITY_LABELS.index("kids"), item
                assert page["country"] in info.countries
                if row["row_id"] != "continue_watching":
                    assert item["title_id"] not in set(snapshot.recently_watched) - watching


def test_an_unknown_member_gets_a_cold_start_page(client):
    page = client.get("/v1/homepage", params={"member_id": 987654321, "country": "US"}).json()
    assert page["cold_start"] is True
    rows = {row["row_id"] for row in page["rows"]}
    assert "top_in_country" in rows and "continue_watching" not in rows
    assert page["rows"][0]["items"]


def test_live_plays_shape_the_next_page(client, catalog):
    member = 700_001
    title = next(t for t, info in sorted(catalog.titles.items()) if "US" in info.countries and info.maturity == 0
                 and t in catalog.artwork)
    now = int(time.time() * 1000)
    events = [{"event_id": f"live-{uuid.uuid4().hex}", "member_id": member, "title_id": title, "type": "play",
               "timestamp": now, "country": "US", "device": "tv"}]
    first = client.post("/v1/events", json={"events": events})
    assert first.status_code == 200, first.text
    assert first.json()["accepted"] == 1
    again = client.post("/v1/events", json={"events": events})
    assert again.json() == {**again.json(), "accepted": 0, "duplicates": 1}

    def reflected():
        page = client.get("/v1/homepage", params={"member_id": member, "country": "US"}).json()
        return page if not page["cold_start"] else None

    page = poll(reflected)
    assert page, "the play never reached the member's page"
    elsewhere = [r["row_id"] for r in page["rows"] if r["row_id"] != "continue_watching"
                 and title in [i["title_id"] for i in r["items"]]]
    assert not elsewhere, f"the title just played is recommended again in {elsewhere}"
    assert f"because_you_watched:{title}" in {row["row_id"] for row in page["rows"]}


def test_onboarding_preferences_shape_a_new_members_rows(client, catalog):
    member = 700_002
    genre = catalog.genres[-1]
    response = client.post(f"/v1/members/{member}/preferences", json={"genres": [genre]})
    assert response.status_code == 200, response.text

    def genre_row():
        page = client.get("/v1/homepage", params={"member_id": member, "country": "US"}).json()
        genre_rows = [row["row_id"] for row in page["rows"] if row["row_id"].startswith("genre:")]
        return genre_rows if genre_rows and genre_rows[0] == f"genre:{genre.lower()}" else None

    assert poll(genre_row), f"no {genre} row first after onboarding"


@pytest.mark.parametrize("params, field", [
    ({"member_id": "abc"}, "member_id"), ({}, "member_id"), ({"member_id": -1}, "member_id"),
    ({"member_id": 1, "rows": 0}, "rows"), ({"member_id": 1, "titles_per_row": 500}, "titles_per_row"),
    ({"member_id": 1, "device": "fridge"}, "device"), ({"member_id": 1, "maturity": "adult"}, "maturity"),
    ({"member_id": 1, "country": "usa"}, "country"),
])
def test_malformed_homepage_parameters_get_422_naming_the_field(client, params, field):
    response = client.get("/v1/homepage", params=params)
    assert response.status_code == 422
    assert field in response.json()["error"]


def test_titles_unknown_404_bad_422_known_200(client, catalog):
    assert client.get("/v1/titles/99999999").status_code == 404
    assert client.get("/v1/titles/abc").status_code == 422
    known = next(iter(catalog.titles))
    body = client.get(f"/v1/titles/{known}").json()
    assert body["title_id"] == known and body["artwork"]


def test_event_batches_oversized_malformed_or_bad_are_refused_whole(client):
    big = [{"event_id": f"e{i}", "member_id": 1, "title_id": 1, "type": "play", "timestamp": 1} for i in range(1001)]
    assert client.post("/v1/events", json={"events": big}).status_code == 413
    huge = {"events": [{"event_id": "x", "member_id": 1, "type": "search", "timestamp": 1,
                        "payload": "q" * (3 * 1024 * 1024)}]}  # one event, over the byte limit
    assert client.post("/v1/events", json=huge).status_code == 413
    assert client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
    now, tag = int(time.time() * 1000), uuid.uuid4().hex
    bad = [{"event_id": f"ok-{tag}", "member_id": 1, "title_id": 1, "type": "play", "timestamp": now},
           {"event_id": f"bad-{tag}", "member_id": 1, "title_id": 1, "type": "teleport", "timestamp": now}]
    response = client.post("/v1/events", json={"events": bad})
    assert response.status_code == 422 and "events[1].type" in response.json()["error"]
    assert "events[0]" not in response.json()["error"]
    ok_again = client.post("/v1/events", json={"events": bad[:1]})
    assert ok_again.status_code == 200 and ok_again.json()["accepted"] == 1  # nothing of the bad batch landed


def test_preferences_with_an_unknown_genre_get_422_and_an_unknown_title_404(client):
    """Genres are the catalog's vocabulary (an enum in the schema: 422); a title id is
    well-formed but may name no title (404, as GET /v1/titles/{id})."""
    genre = client.post("/v1/members/5/preferences", json={"genres": ["Polka"], "titles": []})
    assert genre.status_code == 422 and "genres[0]" in genre.json()["error"]
    title = client.post("/v1/members/5/preferences", json={"genres": [], "titles": [99999999]})
    assert title.status_code == 404 and "titles[0]" in title.json()["error"]


def test_admin_calls_need_the_bearer_token(client, serve_app):
    assert client.get("/v1/admin/models").status_code == 401
    assert client.post("/v1/admin/retrain").status_code == 401
    wrong = client.post("/v1/admin/models/v0001/promote", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    auth = {"Authorization": f"Bearer {serve_app.token}"}
    listed = client.get("/v1/admin/models", headers=auth)
    assert listed.status_code == 200 and listed.json()["promoted"] == serve_app.system["model_version"]
    assert client.post("/v1/admin/models/v9999/promote", headers=auth).status_code == 404
    assert client.post("/v1/admin/models/latest/promote", headers=auth).status_code == 422


def test_openapi_docs_are_served(client):
    spec = client.get("/openapi.json").json()
    assert {"/v1/homepage", "/v1/events", "/v1/titles/{title_id}", "/healthz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200
