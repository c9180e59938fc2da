"""The closed-loop load generator against a tiny local server whose routes misbehave on purpose:
chunked and unsized bodies, Connection: close, silently dropped keep-alive, 503 with and without
Retry-After, 500, timeouts, garbage. No Ray."""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import parse_qs, urlsplit

import pytest

from bench.loadgen import (MAX_POST_ATTEMPTS, CycleUrls, LoadGenError, LoadResult, SpreadClients, percentile,
                           post_bodies, run_load)
from ops.local.ports import free_port

BIG = b"x" * 150_000  # bigger than any socket buffer: a partial read would desync the next answer


def _answer(status: str, body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 {status}\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def _chunked(body: bytes, size: int = 7_000) -> bytes:
    out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for i in range(0, len(body), size):
        part = body[i : i + size]
        out += f"{len(part):x};ext=1\r\n".encode() + part + b"\r\n"
    return out + b"0\r\nX-Trailer: yes\r\n\r\n"


class TinyServer:
    """Keep-alive HTTP/1.1 server on a thread; the path picks the behaviour."""

    def __init__(self):
        self.port = free_port()
        self.seen: list[str] = []
        self.connections = 0
        self.flaky = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> "TinyServer":
        self._thread.start()
        assert self._started.wait(5), "tiny server did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._started.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                self.seen.append(target)
                path = urlsplit(target).path
                body = b""
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        body = await reader.readexactly(int(line.split(b":", 1)[1]))
                if path == "/slow":
                    await asyncio.sleep(0.5)
                if path == "/echo":
                    writer.write(_answer("200 OK", body))
                elif path == "/flaky":  # every other request is shed, asking for no wait
                    self.flaky += 1
                    writer.write(_answer("503 Service Unavailable", b"", "Retry-After: 0") if self.flaky % 2
                                 else _answer("200 OK", body))
                else:
                    writer.write(self._response(path))
                if path in ("/close", "/idle-close", "/until-eof"):
                    await writer.drain()
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _response(path: str) -> bytes:
        return {
            "/ok": _answer("200 OK", b"hello"),
            "/big": _answer("200 OK", BIG),
            "/chunked": _chunked(BIG),
            "/until-eof": b"HTTP/1.1 200 OK\r\n\r\n" + BIG,
            "/close": _answer("200 OK", b"bye", "Connection: close"),
            "/idle-close": _answer("200 OK", b"kept?"),  # claims keep-alive, then hangs up
            "/shed": _answer("503 Service Unavailable", b"", "Retry-After: 1"),
            "/shed-bare": _answer("503 Service Unavailable", b""),
            "/boom": _answer("500 Internal Server Error", b"oops"),
            "/continue": b"HTTP/1.1 100 Continue\r\n\r\n" + _answer("200 OK", b"after"),
            "/garbage": b"NOT HTTP AT ALL\r\n\r\n",
            "/slow": _answer("200 OK", b"late"),
        }.get(path, _answer("404 Not Found", b""))


@pytest.fixture(scope="module")
def server():
    with TinyServer() as s:
        yield s


def load(url, clients=2, duration_s=0.3, warmup_s=0.05, **kw) -> LoadResult:
    return run_load(url, clients, duration_s, warmup_s, isolate=False, **kw)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert [percentile(values, p) for p in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    ten = [float(v) for v in range(1, 11)]
    assert [percentile(ten, p) for p in (50, 95, 99, 1)] == [5.0, 10.0, 10.0, 1.0]
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(ten, 0)


def test_ok_responses_counted_in_window(server):
    result = load(server.url("/ok"))
    assert result.requests > 0 and result.ok == result.requests
    assert result.status == {"200": result.requests}
    assert result.errors == 0 and result.deliberate_503 == 0 and result.reconnects == 0
    assert result.p50_ms <= result.p95_ms <= result.p99_ms <= result.max_ms
    assert result.requests_per_s == pytest.approx(result.requests / 0.3, rel=0.01)
    assert set(result.to_dict()) >= {"clients", "requests_per_s", "p99_ms", "status", "errors",
                                     "deliberate_503", "overload_503_p50_ms", "error_examples"}


@pytest.mark.parametrize("path", ["/big", "/chunked", "/until-eof", "/continue"])
def test_whole_body_is_read_for_every_framing(server, path):
    result = load(server.url(path))
    assert result.ok > 1 and result.errors == 0, result.error_examples


def test_url_for_cycles_request_indices(server):
    server.seen.clear()
    urls = CycleUrls([server.url(f"/ok?member_id={m}") for m in range(5)])
    result = load(urls, clients=1, warmup_s=0.0)
    # only this test's requests: a request of an earlier test may still land after clear()
    members = [int(parse_qs(urlsplit(t).query)["member_id"][0]) for t in server.seen
               if "member_id=" in t]
    assert len(members) >= result.requests > 5
    assert members == [i % 5 for i in range(len(members))]


def test_spread_clients_pins_each_client_to_one_server():
    with TinyServer() as a, TinyServer() as b:
        spread = SpreadClients([CycleUrls([a.url(f"/ok?member_id={m}") for m in range(4)]),
                                CycleUrls([b.url(f"/ok?member_id={m}") for m in range(4)])])
        result = load(spread, clients=3, warmup_s=0.0)
        # clients 0 and 2 on a, client 1 on b, each on its one keep-alive connection throughout
        assert (a.connections, b.connections) == (2, 1) and result.reconnects == 0
        assert len(a.seen) > len(b.seen) > 0 and result.ok == result.requests
        # the request index is shared: between them the two servers saw every member in turn
        members = [int(parse_qs(urlsplit(t).query)["member_id"][0]) for t in a.seen + b.seen]
        assert sorted(set(members)) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="at least one"):
        SpreadClients([])


def test_503_is_deliberate_not_an_error(server):
    shed = load(server.url("/shed"), honor_retry_after=False)
    assert shed.deliberate_503 == shed.requests > 0
    assert shed.errors == 0 and shed.ok == 0 and shed.accepted_p99_ms is None
    assert shed.p99_ms is not None  # a shed request is a response, with its latency
    assert shed.overload_503_without_retry_after == 0
    assert shed.overload_503_p50_ms is not None and shed.overload_503_p50_ms <= shed.overload_503_p99_ms
    bare = load(server.url("/shed-bare"))
    assert bare.overload_503_without_retry_after == bare.deliberate_503 > 0


def test_a_client_waits_as_retry_after_asks_before_its_next_request(server):
    hammer = load(server.url("/shed"), clients=1, duration_s=0.5, warmup_s=0.0, honor_retry_after=False)
    polite = load(server.url("/shed"), clients=1, duration_s=0.5, warmup_s=0.0)
    assert polite.deliberate_503 == 1  # Retry-After outlasts the window: one answer, then it waits
    assert hammer.deliberate_503 > 10


def test_other_statuses_are_errors_with_examples(server):
    result = load(server.url("/boom"))
    assert result.errors == result.requests == result.status["500"] > 5
    assert result.error_examples and len(result.error_examples) <= 5
    assert result.error_examples[0] == "HTTP 500"


def test_reconnects_when_the_server_closes(server):
    for path in ("/close", "/idle-close"):
        # a 1 s window: in one CI run the 0.3 s default held a single answer after 84 in the
        # warm-up (the machine stalled the process), though every reconnect had worked
        result = load(server.url(path), duration_s=1.0)
        assert result.ok > 1 and result.errors == 0, (path, result.error_examples, result)
        assert result.reconnects >= result.ok  # every answer came on a connection of its own


def test_timeouts_are_counted(server):
    result = load(server.url("/slow"), clients=1, duration_s=0.4, warmup_s=0.0, timeout_s=0.1)
    assert result.timeouts > 0 and result.errors >= result.timeouts and result.ok == 0


def test_transport_and_protocol_errors_are_counted():
    refused = load(f"http://127.0.0.1:{free_port()}/ok", clients=1, duration_s=0.2, warmup_s=0.0)
    assert refused.transport_errors > 0 and refused.requests == 0
    assert "ConnectionRefusedError" in refused.error_examples[0]


def test_garbage_is_a_protocol_error(server):
    result = load(server.url("/garbage"), clients=1)
    assert result.errors > 0 and result.requests == 0
    assert "ProtocolError" in result.error_examples[0]


def test_httpx_client_agrees_on_counting(server):
    # a longer window than the raw client's: the first httpx request builds its client (0.4 CPU-s
    # on a loaded machine), which must not eat the whole measured window
    result = load(server.url("/shed"), clients=1, duration_s=1.5, warmup_s=0.3, client="httpx",
                  honor_retry_after=False)
    assert result.deliberate_503 == result.requests > 0 and result.errors == 0


def test_isolated_process_returns_the_same_shape(server):
    urls = CycleUrls([server.url(f"/big?member_id={m}") for m in range(3)])
    result = run_load(urls, 2, 0.3, 0.05)
    assert isinstance(result, LoadResult)
    assert result.ok > 0 and result.errors == 0 and result.client == "raw"


@pytest.mark.parametrize("kwargs, message", [
    ({"clients": 0}, "clients"),
    ({"url_for": "https://127.0.0.1/x"}, "plain http"),
    ({"duration_s": 0}, "duration_s"),
    ({"client": "curl"}, "client must be"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = {"url_for": "http://127.0.0.1:1/", "clients": 1, "duration_s": 1.0, "warmup_s": 0.0}
    args.update(kwargs)
    with pytest.raises(LoadGenError, match=message):
        run_load(**args, isolate=False)


def test_percentiles_count_shed_requests_and_accepted_ones_apart(server):
    urls = CycleUrls([server.url("/ok"), server.url("/shed"), server.url("/slow")])
    result = load(urls, clients=3, duration_s=1.2, warmup_s=0.0, honor_retry_after=False)
    assert result.ok > 0 and result.deliberate_503 > 0 and result.errors == 0
    assert result.requests == result.ok + result.deliberate_503
    # the slow answers are 2xx: the worst of all responses is the worst accepted one
    assert result.max_ms == result.accepted_max_ms >= 500
    assert result.accepted_p50_ms <= result.accepted_p99_ms and result.p50_ms <= result.p99_ms
    # many fast 503s pull the all-responses median below the accepted one
    assert result.p50_ms <= result.accepted_p50_ms


@pytest.mark.parametrize("isolate", [False, True])
def test_post_bodies_sends_each_body_until_answered(server, isolate):
    bodies = [f'{{"batch": {i}}}'.encode() * (i + 1) for i in range(12)]
    out = post_bodies(server.url("/flaky"), bodies, concurrency=3, isolate=isolate)
    assert [o[0] for o in out["outcomes"]] == [200] * len(bodies)
    assert [o[3] for o in out["outcomes"]] == bodies  # each answer is its own body, echoed
    assert out["shed_503"] == sum(o[1] - 1 for o in out["outcomes"]) > 0  # each 503 retried once more
    assert out["503_without_retry_after"] == 0 and out["transport_errors"] == 0
    assert out["elapsed_s"] > 0 and all(o[2] > 0 for o in out["outcomes"])


def test_post_bodies_gives_up_and_says_so(server):
    out = post_bodies(server.url("/shed-bare"), [b"{}"], concurrency=1, isolate=False)
    status, attempts, _latency, _answer = out["outcomes"][0]
    assert status == 503 and attempts == MAX_POST_ATTEMPTS
    assert out["503_without_retry_after"] == MAX_POST_ATTEMPTS
    with pytest.raises(LoadGenError, match="concurrency"):
        post_bodies(server.url("/echo"), [b"{}"], concurrency=0)
