"""The HTTP API on a fake service: every bad input answers 4xx naming the field, never a 500."""

from __future__ import annotations

import json
import warnings

import pytest

with warnings.catch_warnings():  # starlette nags about httpx vs httpx2; irrelevant here
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

import deployments.gateway as gateway  # noqa: E402
from deployments.gateway import MAX_EVENTS_PER_BATCH, make_api  # noqa: E402
from deployments.homepage import HomepageRequest  # noqa: E402
from marquee.schema import Event, decision_event, exposure_event  # noqa: E402

TOKEN = "s3cret-token"
GENRES = ("Comedy", "Drama")
TITLES = {1: "Heat", 2: "Fargo", 3: "Alien"}
TIMESTAMP = 1_700_000_000_000


class FakeService:
    """A GatewayService that records every call and answers canned values."""

    def __init__(self, admin_token: str | None = TOKEN, fail_homepage: bool = False):
        self.admin_token = admin_token
        self.fail_homepage = fail_homepage
        self.homepage_requests: list[HomepageRequest] = []
        self.appended: list[list[dict]] = []
        self.admin_calls: list[tuple[str, str | None]] = []
        self.admin_options: list = []

    async def homepage(self, request: HomepageRequest) -> dict:
        self.homepage_requests.append(request)
        if self.fail_homepage:
            raise RuntimeError("member state exploded")
        return page_answer(request)

    def title(self, title_id: int) -> dict | None:
        name = TITLES.get(title_id)
        return None if name is None else title_answer(title_id, name)

    async def append_events(self, events: list[dict]) -> dict:
        self.appended.append(events)
        return {"accepted": len(events), "duplicates": 0, "rejected": [], "last_seq": len(events) - 1}

    def genres(self) -> tuple[str, ...]:
        return GENRES

    def has_title(self, title_id: int) -> bool:
        return title_id in TITLES

    async def health(self) -> dict:
        return HEALTH

    def admin(self, action: str, version: str | None = None, options=None) -> dict:
        self.admin_calls.append((action, version))
        self.admin_options.append(options)
        return admin_answer(action, version)


def page_answer(request: HomepageRequest) -> dict:
    """A page in the shape deployments/homepage.py builds (checked against the model in test_api_models)."""
    item = {"title_id": 2, "name": "Fargo", "position": 0, "score": 0.75, "genres": ["Drama"],
            "explanation": {"sources": ["trending_now"], "reasons": ["Trending now"]},
            "artwork": {"artwork_id": "2-0", "propensity": 0.9}}
    return {"request_id": request.request_id, "member_id": request.member_id, "country": request.country or "US",
            "device": request.device, "maturity": request.maturity or "mature", "cold_start": True,
            "fallback": False, "model_versions": {"retrieval": "v0002", "ranker": "v0002"}, "experiments": {},
            "degraded": [], "rows": [{"row_id": "trending", "title": "Trending now", "items": [item]}],
            "removed": {"counts": {"watched": 0}, "total": 0},
            "timings_ms": {"member": 1.25, "candidates.sources": 3.5, "total": 7.0}}


HEALTH = {"status": "ok", "placement": "fused", "pid": 1, "titles": 3, "dataset": "/data/world",
          "model": {"version": "v0002", "target": "promoted", "last_error": None, "failed_versions": [], "swaps": 1}}


def title_answer(title_id: int, name: str) -> dict:
    return {"title_id": title_id, "name": name, "genres": ["Drama"], "maturity": 2, "countries": ["US"],
            "series_id": None, "release_date_ms": None, "artwork": [f"{title_id}-0"]}


def admin_answer(action: str, version: str | None) -> dict:
    """What the real service answers per action (shapes of deployments/service.py)."""
    if action == "list":
        return {"promoted": "v0002", "versions": [{"version": "v0002", "status": "promoted", "created": "2026-01-01"}]}
    if action == "retrain":
        return {"job_id": "raysubmit_1", "dashboard": "http://127.0.0.1:8265", "status": "submitted", "argv": []}
    return {"promoted": version or "v0001"}


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def client(fake) -> TestClient:
    # raise_server_exceptions=False: see what a real client sees when a handler fails
    return TestClient(make_api(fake), raise_server_exceptions=False)


def event(i: int = 0, **kw) -> dict:
    return {"event_id": f"e{i}", "member_id": 7, "title_id": 1, "type": "play", "timestamp": TIMESTAMP, **kw}


def assert_names(response, status: int, field: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert field in body["error"], body


# -- GET /v1/homepage ------------------------------------------------------------------------------


@pytest.mark.parametrize("query, field", [
    ("", "member_id"),
    ("member_id=abc", "member_id"),
    ("member_id=-1", "member_id"),
    ("member_id=1&rows=0", "rows"),
    ("member_id=1&rows=99", "rows"),
    ("member_id=1&titles_per_row=0", "titles_per_row"),
    ("member_id=1&device=fridge", "device"),
    ("member_id=1&maturity=bogus", "maturity"),
    ("member_id=1&country=usa", "country"),
])
def test_homepage_bad_query_is_422_naming_the_field(client, fake, query, field):
    response = client.get(f"/v1/homepage?{query}")
    assert_names(response, 422, field)
    assert any(field in f for f in response.json()["fields"])
    assert fake.homepage_requests == []


def test_homepage_passes_parsed_values_and_sets_server_timing(client, fake):
    response = client.get("/v1/homepage?member_id=42&country=FR&device=mobile&maturity=teen"
                          "&rows=5&titles_per_row=7&request_id=req-1")
    assert response.status_code == 200, response.text
    assert fake.homepage_requests == [HomepageRequest(42, "FR", "mobile", "teen", 5, 7, "req-1")]
    timing = response.headers["Server-Timing"]
    assert timing == "member;dur=1.25, candidates-sources;dur=3.5, total;dur=7.0"
    assert response.headers["X-Marquee-Request-Id"] == "req-1"
    assert response.json()["request_id"] == "req-1"


def test_homepage_defaults_and_a_generated_request_id(client, fake):
    response = client.get("/v1/homepage?member_id=3")
    assert response.status_code == 200
    (request,) = fake.homepage_requests
    assert (request.country, request.device, request.maturity, request.rows, request.titles_per_row) == \
        (None, "tv", None, 10, 10)
    assert request.request_id and response.headers["X-Marquee-Request-Id"] == request.request_id


def test_a_failing_service_answers_503_with_retry_after_not_500():
    client = TestClient(make_api(FakeService(fail_homepage=True)), raise_server_exceptions=False)
    response = client.get("/v1/homepage?member_id=1")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert "retry" in response.json()["error"]


# -- GET /v1/titles/{id} ---------------------------------------------------------------------------


def test_title_found_unknown_and_not_a_number(client):
    assert client.get("/v1/titles/2").json() == title_answer(2, "Fargo")
    missing = client.get("/v1/titles/999")
    assert missing.status_code == 404 and "999" in missing.json()["error"]
    assert_names(client.get("/v1/titles/abc"), 422, "title_id")
    assert_names(client.get("/v1/titles/-1"), 422, "title_id")


# -- POST /v1/events -------------------------------------------------------------------------------


def test_events_not_json_is_422_naming_body(client, fake):
    response = client.post("/v1/events", content=b"{not json", headers={"content-type": "application/json"})
    assert_names(response, 422, "body")
    assert fake.appended == []


@pytest.mark.parametrize("payload", [{"nope": []}, {"events": "e1"}, [event()], "events"])
def test_events_without_an_events_list_is_422(client, fake, payload):
    assert_names(client.post("/v1/events", json=payload), 422, "events")
    assert fake.appended == []


def test_events_empty_batch_is_422(client, fake):
    response = client.post("/v1/events", json={"events": []})
    assert_names(response, 422, "events")
    assert "empty" in response.json()["error"]
    assert fake.appended == []


def test_events_over_the_batch_limit_is_413(client, fake):
    batch = [event(i) for i in range(MAX_EVENTS_PER_BATCH + 1)]
    response = client.post("/v1/events", json={"events": batch})
    assert response.status_code == 413
    assert str(MAX_EVENTS_PER_BATCH) in response.json()["error"]
    assert fake.appended == []


def test_events_at_the_batch_limit_are_accepted(client, fake):
    batch = [event(i) for i in range(MAX_EVENTS_PER_BATCH)]
    assert client.post("/v1/events", json={"events": batch}).status_code == 200
    assert len(fake.appended[0]) == MAX_EVENTS_PER_BATCH


def test_events_body_over_the_byte_limit_is_413(client, fake, monkeypatch):
    monkeypatch.setattr(gateway, "MAX_BODY_BYTES", 1024)
    batch = [event(i, payload={"pad": "x" * 100}) for i in range(20)]
    body = json.dumps({"events": batch}).encode()
    assert len(body) > 1024
    response = client.post("/v1/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert "1024" in response.json()["error"]
    assert fake.appended == []


def test_events_body_over_the_limit_without_content_length_is_413(client, fake, monkeypatch):
    monkeypatch.setattr(gateway, "MAX_BODY_BYTES", 1024)
    body = json.dumps({"events": [event(i, payload={"pad": "x" * 100}) for i in range(20)]}).encode()

    def chunks():  # streamed: no content-length header, so the read length must be checked
        yield body[:500]
        yield body[500:]

    response = client.post("/v1/events", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert fake.appended == []


@pytest.mark.parametrize("bad, field", [
    ({"member_id": "x"}, "member_id"),
    ({"type": "explode"}, "type"),
    ({"timestamp": 12}, "timestamp"),
    ({"title_id": None}, "title_id"),
    ({"propensity": 2.0}, "propensity"),
])
def test_one_malformed_event_rejects_the_whole_batch_naming_it(client, fake, bad, field):
    batch = [event(0), event(1), event(2, **bad), event(3)]
    response = client.post("/v1/events", json={"events": batch})
    assert_names(response, 422, f"events[2].{field}")
    body = response.json()
    assert body["accepted"] == 0 and body["rejected"] == 1
    assert fake.appended == []  # all or nothing


def test_a_non_object_event_is_named(client, fake):
    response = client.post("/v1/events", json={"events": [event(0), 5]})
    assert_names(response, 422, "events[1]")
    assert fake.appended == []


def test_valid_batch_is_passed_through_and_answered_with_the_result(client, fake):
    batch = [event(0), event(1, type="thumb", value=1), event(2, type="search", title_id=None,
                                                           payload={"query": "heat"})]
    response = client.post("/v1/events", json={"events": batch})
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": [], "last_seq": 2}
    (passed,) = fake.appended  # validated and normalized (ISO times as epoch ms), the same events
    assert [Event.parse(e) for e in passed] == [Event.parse(e) for e in batch]


def test_a_client_posted_decision_is_refused_naming_its_type(client, fake):
    """Decisions are the server's record (arm and propensity of each title shown): a client that
    could post one could forge the propensities the reward join divides by."""
    forged = decision_event("req-1", 7, TIMESTAMP, "tv", "US", "linucb", 1, [(1, "1-0", 1e-6, "trending", 0)],
                            {}, {"hour": 20})
    response = client.post("/v1/events", json={"events": [event(0, request_id="req-1"), forged]})
    assert_names(response, 422, "events[1].type: decision events are written by the server")
    body = response.json()
    assert body["fields"] == ["events[1].type"] and (body["accepted"], body["rejected"]) == (0, 1)
    assert fake.appended == []
    exposure = exposure_event("diversity", "strong", 7, "req-1", TIMESTAMP)  # nor an exposure
    assert_names(client.post("/v1/events", json={"events": [exposure]}), 422,
                 "events[0].type: exposure events are written by the server")
    assert fake.appended == []
    # nor may a client's event take a decision's id (the log would drop the real record as a replay)
    response = client.post("/v1/events", json={"events": [event(0, event_id="decision-req-1")]})
    assert_names(response, 422, "events[0].event_id")
    assert "not starting with 'decision-'" in response.json()["error"] and fake.appended == []


@pytest.mark.parametrize("request_id", ["x" * 65, "has space", "a/b", "", "req\n"])
def test_a_bad_request_id_on_an_event_is_422_naming_it(client, fake, request_id):
    response = client.post("/v1/events", json={"events": [event(0, request_id=request_id)]})
    assert_names(response, 422, "events[0].request_id")
    assert fake.appended == []


def test_events_carry_the_request_id_of_their_page(client, fake):
    batch = [event(0, type="impression", request_id="req-1"), event(1, request_id="req-1"),
             event(2, type="progress", value=0.5, request_id="req-1"), event(3, type="completion", value=1.0,
             request_id="req-1"), event(4, type="thumb", value=1, request_id="req-1"), event(5)]
    response = client.post("/v1/events", json={"events": batch})
    assert response.status_code == 200, response.text
    (passed,) = fake.appended
    assert [e.get("request_id") for e in passed] == ["req-1"] * 5 + [None]


def test_openapi_lists_no_decision_event_and_documents_request_id(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "DecisionEvent" not in schemas and "PlayEvent" in schemas
    mapping = schemas["EventBatch"]["properties"]["events"]["items"]["discriminator"]["mapping"]
    assert "decision" not in mapping and "impression" in mapping
    request_id = schemas["ImpressionEvent"]["properties"]["request_id"]
    assert "X-Marquee-Request-Id" in request_id["description"]
    text = json.dumps(request_id)
    assert '"maxLength": 64' in text and "^[A-Za-z0-9_.:-]+$" in text


# -- POST /v1/members/{id}/preferences -------------------------------------------------------------


def test_preferences_unknown_genre_is_422_and_unknown_title_404_each_named(client, fake):
    response = client.post("/v1/members/7/preferences", json={"genres": ["Drama", "Polka"], "titles": [1]})
    assert_names(response, 422, "genres[1]")
    assert "Polka" in response.json()["error"]
    # a title that does not exist is a missing resource (as GET /v1/titles/404 answers it), so a
    # body the schema allows is never refused as malformed
    response = client.post("/v1/members/7/preferences", json={"genres": ["Drama"], "titles": [1, 404, 405]})
    assert_names(response, 404, "titles[1]")
    assert "title 404 is not in the catalog" in response.json()["error"] and "titles[2]" in response.json()["error"]
    assert response.json()["fields"] == ["titles[1]", "titles[2]"]
    assert fake.appended == []


def test_preferences_schema_lists_the_catalogs_genres(client):
    spec = client.get("/openapi.json").json()
    body = spec["components"]["schemas"]["Preferences"]
    assert body["properties"]["genres"]["items"]["enum"] == list(GENRES)


def test_preferences_bad_shapes_are_422(client, fake):
    assert_names(client.post("/v1/members/7/preferences", json={"genres": "Drama"}), 422, "genres")
    assert_names(client.post("/v1/members/7/preferences", json={"titles": ["x"]}), 422, "titles")
    assert_names(client.post("/v1/members/abc/preferences", json={}), 422, "member_id")
    assert fake.appended == []


def test_valid_preferences_become_one_preference_event_and_one_thumb_per_title(client, fake):
    response = client.post("/v1/members/7/preferences",
                           json={"genres": ["Drama", "Comedy"], "titles": [3, 1, 3]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["member_id"] == 7 and body["accepted"] == 3
    (events,) = fake.appended
    parsed = [Event.parse(e) for e in events]  # every event passes the log's own validation
    assert [e.type for e in parsed] == ["preference", "thumb", "thumb"]
    assert all(e.member_id == 7 for e in parsed)
    assert json.loads(parsed[0].payload) == {"genres": ["Drama", "Comedy"]}
    assert parsed[0].title_id is None
    assert [(e.title_id, e.value) for e in parsed[1:]] == [(3, 1.0), (1, 1.0)]  # duplicates once
    assert len({e.event_id for e in parsed}) == len(parsed)


# -- admin routes ----------------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("post", "/v1/admin/models/v0002/promote", ("promote", "v0002")),
    ("post", "/v1/admin/models/rollback", ("rollback", None)),
    ("post", "/v1/admin/models/v0001/rollback", ("rollback", "v0001")),
    ("get", "/v1/admin/models", ("list", None)),
    ("post", "/v1/admin/retrain", ("retrain", None)),
]


@pytest.mark.parametrize("method, path, call", ADMIN_ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic x", f"Basic {TOKEN}", "Bearer", TOKEN])
def test_admin_without_the_right_bearer_token_is_401(client, fake, method, path, call, header):
    headers = {} if header is None else {"Authorization": header}
    response = getattr(client, method)(path, headers=headers)
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "Bearer" in response.json()["error"]
    assert fake.admin_calls == []


@pytest.mark.parametrize("method, path, call", ADMIN_ROUTES)
def test_admin_with_the_token_reaches_the_service(client, fake, method, path, call):
    response = getattr(client, method)(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code in (200, 202), response.text
    assert fake.admin_calls == [call]
    assert response.json() == admin_answer(*call)


def test_admin_token_with_non_ascii_characters_is_401_not_503(client, fake):
    response = client.get("/v1/admin/models", headers={"Authorization": "Bearer t\u00f6ken".encode("latin-1")})
    assert response.status_code == 401
    assert fake.admin_calls == []


def test_admin_promote_bad_version_is_422(client, fake):
    response = client.post("/v1/admin/models/abc/promote", headers={"Authorization": f"Bearer {TOKEN}"})
    assert_names(response, 422, "version")
    assert fake.admin_calls == []


def test_admin_without_a_configured_token_refuses_everyone():
    fake = FakeService(admin_token=None)
    client = TestClient(make_api(fake), raise_server_exceptions=False)
    for header in (f"Bearer {TOKEN}", "Bearer ", "Bearer None"):
        response = client.get("/v1/admin/models", headers={"Authorization": header})
        assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert fake.admin_calls == []


# -- health and docs -------------------------------------------------------------------------------


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == HEALTH


def test_openapi_documents_the_v1_routes(client):
    spec = client.get("/openapi.json").json()
    paths = set(spec["paths"])
    for path in ("/v1/homepage", "/v1/titles/{title_id}", "/v1/events", "/v1/members/{member_id}/preferences",
                 "/v1/admin/models", "/v1/admin/models/{version}/promote", "/v1/admin/retrain", "/healthz"):
        assert path in paths, path
    assert all(op.get("summary") for ops in spec["paths"].values() for op in ops.values())
    assert client.get("/docs").status_code == 200


def test_retrain_options_reach_the_service_and_bad_ones_are_422(client, fake):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = client.post("/v1/admin/retrain", headers=auth, json={"set": {"rounds": 20}, "skip_features": True})
    assert response.status_code == 202
    assert fake.admin_options[-1].set == {"rounds": 20} and fake.admin_options[-1].skip_features is True
    bad = client.post("/v1/admin/retrain", headers=auth, json={"skip_features": "sometimes"})
    assert bad.status_code == 422 and "skip_features" in bad.json()["error"]
