"""The HTTP API (FastAPI): validation, request ids, auth for admin calls, and the routes.

`make_api(service)` builds the app around one `GatewayService`, so the same routes serve under
Ray Serve (deployments/app.py builds it in the replica, after the service) and under plain
uvicorn (the in-process baseline of `bench serve`). Requests and answers are the models of
marquee/api.py, so the OpenAPI schema (/docs) is what the routes accept and answer; every
operation lists each status it can answer. Bad input gets 422 naming the field, unknown titles
404, oversized event batches 413, admin calls without the token 401; an unknown member gets a
cold-start page. No input produces a 500: an unexpected failure answers 503 with Retry-After,
and the error is logged.
"""

import asyncio
import hmac
import logging
import time
import uuid
from typing import Any, Literal, Protocol

import orjson
from fastapi import Body, Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.homepage import HomepageRequest
from marquee.api import (
    MAX_EVENTS_PER_BATCH,
    AppendAnswer,
    ErrorBody,
    EventBatch,
    Health,
    Homepage,
    ModelList,
    PreferencesAnswer,
    Promoted,
    RetrainOptions,
    RetrainStarted,
    Title,
    preferences_model,
)
from marquee.schema import (DEVICES, MATURITY_LABELS, MAX_ID, MAX_REQUEST_ID_LENGTH, REQUEST_ID_PATTERN, event_problems,
                            field_path)

log = logging.getLogger("marquee.gateway")

__all__ = ["ApiError", "GatewayService", "MAX_BODY_BYTES", "MAX_EVENTS_PER_BATCH", "RetrainOptions",
           "call_with_retry", "make_api"]

MAX_BODY_BYTES = 2 * 1024 * 1024
VERSION_PATTERN = r"^v\d{4,}$"
EVENTS_PATH = "/v1/events"
BODY_PARSE_ERROR = "There was an error parsing the body"  # FastAPI's 400 for a body it cannot decode


class ApiError(Exception):
    """An answer other than 200, with a message that says what was wrong."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.headers, self.extra = status, message, headers or {}, extra


class GatewayService(Protocol):
    """What the routes need; deployments/service.py implements it."""

    admin_token: str | None

    async def homepage(self, request: HomepageRequest) -> dict: ...

    def title(self, title_id: int) -> dict | None: ...

    async def append_events(self, events: list[dict]) -> dict: ...

    def genres(self) -> tuple[str, ...]: ...

    def has_title(self, title_id: int) -> bool: ...

    async def health(self) -> dict: ...

    def admin(self, action: str, version: str | None = None, options: Any = None) -> dict: ...


# -- documented answers --------------------------------------------------------------------------

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_ERRORS: dict[int, dict[str, Any]] = {
    401: {"description": "no or wrong admin token ('Authorization: Bearer <HOME/admin_token>')",
          "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}},
    404: {"description": "not found (the message says what)"},
    409: {"description": "the registry refused (e.g. nothing to roll back to)"},
    413: {"description": f"over {MAX_EVENTS_PER_BATCH} events or {MAX_BODY_BYTES} bytes in one batch"},
    422: {"description": "malformed input; `error` and `fields` name each bad field"},
    503: {"description": "temporarily unavailable (starting, overloaded, or a dependency is down): "
                         "retry after Retry-After seconds", "headers": _RETRY_AFTER},
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, **_ERRORS[status]} for status in (*statuses, 503)}


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


# -- request validation ----------------------------------------------------------------------------


def _problems(exc: RequestValidationError) -> tuple[list[tuple[str, str]], set[int]]:
    """(field, reason) per problem, worded by the event rules for events; and which events of a
    batch had one."""
    body = getattr(exc, "body", None)
    batch = body.get("events") if isinstance(body, dict) else None
    out: list[tuple[str, str]] = []
    bad_events: set[int] = set()
    by_event: dict[int, list[dict]] = {}
    for error in exc.errors():
        loc = [part for part in error["loc"] if part != "body"]
        if loc[:1] == ["events"] and len(loc) >= 2 and isinstance(loc[1], int) and isinstance(batch, list):
            by_event.setdefault(loc[1], []).append({**error, "loc": tuple(loc[2:])})
            continue
        where = field_path(loc) or "body"
        if error["type"] == "json_invalid":
            out.append(("body", f"not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})"))
        elif not loc and error["type"] in ("model_attributes_type", "dict_type", "model_type"):
            out.append(("events", 'expected a JSON object {"events": [...]}'))
        elif loc == ["events"] and error["type"] == "too_short":
            out.append(("events", "the batch is empty"))
        elif loc == ["events"] and error["type"] == "list_type":
            out.append(("events", 'expected a JSON object {"events": [...]} with a list of events'))
        else:
            given = error.get("input")
            shown = f", got {given!r}" if isinstance(given, (str, int, float)) and error["type"] != "missing" else ""
            out.append((where, error["msg"] + shown))
    for index in sorted(by_event):
        bad_events.add(index)
        out += event_problems(by_event[index], batch[index], prefix=f"events[{index}]")
    return out, bad_events


def _too_many_events(exc: RequestValidationError) -> int | None:
    for error in exc.errors():
        if list(error["loc"]) == ["body", "events"] and error["type"] == "too_long":
            return int(error.get("ctx", {}).get("actual_length", 0)) or None
    return None


class BodyLimit:
    """Refuses an event batch over MAX_BODY_BYTES with 413 before it is parsed (by its
    Content-Length, or while it streams in without one). Pure ASGI: other paths pass untouched."""

    def __init__(self, app: Any, path: str):
        self.app, self.path = app, path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        limit = MAX_BODY_BYTES
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, int(length), limit)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await self._refuse(scope, receive, send, size, limit, more)
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        await self.app(scope, replay, send)

    @staticmethod
    async def _refuse(scope, receive, send, size: int, limit: int, more: bool = False) -> None:
        over = f"over {size}" if more else str(size)  # streamed: refused before the rest arrived
        await _error(413, f"body of {over} bytes is over the {limit}-byte limit")(scope, receive, send)


# -- the app ---------------------------------------------------------------------------------------


def make_api(service: GatewayService) -> FastAPI:
    """The FastAPI app serving `service` (its catalog's genres are the preferences' vocabulary)."""
    api = FastAPI(title="Marquee", version="0.4",
                  description="Personalized homepages, events and model administration. Every answer "
                              "other than 2xx has the body ErrorBody; 503 carries Retry-After.")
    api.add_middleware(BodyLimit, path=EVENTS_PATH)
    # annotations of the routes below are evaluated here (no `from __future__ import annotations`
    # in this module), so a route can name this app's own model
    Preferences = preferences_model(tuple(service.genres()))

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        count = _too_many_events(exc)
        if count is not None:
            return _error(413, f"events: {count} events in one batch; the limit is {MAX_EVENTS_PER_BATCH}")
        problems, bad_events = _problems(exc)
        shown = problems[:20]
        extra = {"rejected": len(bad_events), "accepted": 0} if request.url.path == EVENTS_PATH else {}
        # all or nothing: the client fixes the batch and resends (event ids make it safe)
        return _error(422, "; ".join(f"{where}: {reason}" for where, reason in shown),
                      fields=list(dict.fromkeys(where for where, _ in shown)), **extra)

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.headers, **exc.extra)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400 and exc.detail == BODY_PARSE_ERROR:  # e.g. bytes that are not UTF-8
            return _error(422, "body: not valid JSON (not UTF-8 text)", fields=["body"])
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @api.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(503, "temporarily unavailable; retry shortly", {"Retry-After": "1"})

    # async: FastAPI runs a sync dependency on a worker thread, a hand-off per request
    # documents the scheme in OpenAPI (securitySchemes); the check itself is below, constant-time
    async def admin(request: Request, _: Any = Security(HTTPBearer(auto_error=False, description=
                    "the admin token: HOME/admin_token of the home being served"))) -> GatewayService:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        expected = service.admin_token
        # bytes, not str: compare_digest raises TypeError on a non-ASCII str (a 503, not a 401)
        matches = bool(expected) and hmac.compare_digest(token.strip().encode(), expected.encode())
        if not matches or scheme.lower() != "bearer":
            raise ApiError(401, "admin calls need 'Authorization: Bearer <token>' with the admin token",
                           {"WWW-Authenticate": "Bearer"})
        return service

    @api.get("/v1/homepage", summary="A member's personalized homepage", response_model=Homepage,
             responses=_responses(422))
    async def homepage(
        member_id: int = Query(..., ge=0, le=MAX_ID, description="the member; unknown ids get a cold-start page"),
        country: str | None = Query(None, pattern=r"^[A-Z]{2}$", description="ISO country code (default: profile's)"),
        device: Literal[DEVICES] = Query("tv"),  # type: ignore[valid-type]
        maturity: Literal[MATURITY_LABELS] | None = Query(None, description="override the profile's maturity"),  # type: ignore[valid-type]
        rows: int = Query(10, ge=1, le=20, description="at most this many rows"),
        titles_per_row: int = Query(10, ge=1, le=40),
        request_id: str | None = Query(None, max_length=MAX_REQUEST_ID_LENGTH, pattern=REQUEST_ID_PATTERN),
    ):
        rid = request_id or uuid.uuid4().hex
        page = await service.homepage(HomepageRequest(member_id, country, device, maturity, rows, titles_per_row, rid))
        timing = ", ".join(f"{name.replace('.', '-')};dur={ms}" for name, ms in page["timings_ms"].items())
        # orjson directly, and no per-request validation against the model: FastAPI's generic
        # encoder cost ~2 ms on a page, json.dumps 0.3 ms (6% of a replica's GIL time under
        # load), orjson a tenth of that (measured). Tests check real pages against the model.
        return Response(orjson.dumps(page), media_type="application/json",
                        headers={"Server-Timing": timing, "X-Marquee-Request-Id": rid})

    @api.get("/v1/titles/{title_id}", summary="One title's metadata and artwork", response_model=Title,
             responses=_responses(404, 422))
    def title(title_id: int = Path(..., ge=0, le=MAX_ID)):
        found = service.title(title_id)
        if found is None:
            raise ApiError(404, f"title {title_id} is not in the catalog")
        return found

    @api.post(EVENTS_PATH, summary="Append a batch of events (idempotent by event_id)",
              response_model=AppendAnswer, responses=_responses(413, 422))
    async def events(batch: EventBatch = Body(...)):
        raw = [event.model_dump(exclude_none=True) for event in batch.events]
        return await service.append_events(raw)

    @api.post("/v1/members/{member_id}/preferences", summary="Onboarding tastes for cold start",
              response_model=PreferencesAnswer, responses=_responses(404, 422))
    async def preferences(prefs: Preferences = Body(...), member_id: int = Path(..., ge=0, le=MAX_ID)):  # type: ignore[valid-type]
        unknown = {f"titles[{i}]": t for i, t in enumerate(prefs.titles) if not service.has_title(t)}
        if unknown:  # a reference to a title that does not exist, as GET /v1/titles/{id} answers it
            raise ApiError(404, "; ".join(f"{where}: title {t} is not in the catalog" for where, t in unknown.items()),
                           fields=list(unknown))
        now = int(time.time() * 1000)
        stamp = uuid.uuid4().hex[:12]
        events = [{"event_id": f"pref-{member_id}-{stamp}", "member_id": member_id, "type": "preference",
                   "timestamp": now, "payload": {"genres": list(dict.fromkeys(prefs.genres))}}]
        events += [{"event_id": f"pref-{member_id}-{stamp}-{t}", "member_id": member_id, "title_id": t,
                    "type": "thumb", "value": 1.0, "timestamp": now} for t in dict.fromkeys(prefs.titles)]
        result = await service.append_events(events)
        return {"member_id": member_id, "genres": prefs.genres, "titles": prefs.titles, **result}

    @api.get("/healthz", summary="Liveness and what is being served", response_model=Health,
             responses=_responses())
    async def healthz():
        return await service.health()

    admin_auth = [Depends(admin)]

    @api.post("/v1/admin/models/{version}/promote", summary="Promote a registered model version",
              response_model=Promoted, responses=_responses(401, 404, 409, 422), dependencies=admin_auth)
    def promote(version: str = Path(..., pattern=VERSION_PATTERN)):
        return service.admin("promote", version)

    @api.post("/v1/admin/models/rollback", summary="Roll back to the previously promoted version",
              response_model=Promoted, responses=_responses(401, 404, 409), dependencies=admin_auth)
    def rollback():
        return service.admin("rollback")

    @api.post("/v1/admin/models/{version}/rollback", summary="Roll back to a given earlier version",
              response_model=Promoted, responses=_responses(401, 404, 409, 422), dependencies=admin_auth)
    def rollback_to(version: str = Path(..., pattern=VERSION_PATTERN)):
        return service.admin("rollback", version)

    @api.get("/v1/admin/models", summary="Registered versions", response_model=ModelList,
             responses=_responses(401), dependencies=admin_auth)
    def models():
        return service.admin("list")

    @api.post("/v1/admin/retrain", status_code=202, summary="Start a retraining job on the cluster",
              response_model=RetrainStarted, responses=_responses(401, 409, 422), dependencies=admin_auth)
    def retrain(options: RetrainOptions | None = Body(None)):
        return service.admin("retrain", options=options or RetrainOptions())

    return api


async def call_with_retry(fn, attempts: int = 3, backoff_s: float = 0.2):
    """Await fn() again when the actor behind it is restarting; the last failure is a 503."""
    for attempt in range(attempts):
        try:
            return await fn()
        except Exception as exc:  # actor restarting, node lost: retry the same (idempotent) call
            if attempt == attempts - 1:
                log.warning("giving up after %d attempts: %s", attempts, exc)
                raise ApiError(503, "the event log is unavailable; nothing from this batch was lost "
                                    "if it was not acknowledged: retry it", {"Retry-After": "1"}) from None
            await asyncio.sleep(backoff_s * (2 ** attempt))
