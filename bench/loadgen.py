"""Closed-loop HTTP/1.1 load generator: N clients, each on its own keep-alive connection, each
sending one request, reading the whole response, then sending the next.

Why a hand-written client: the machine has 2 cores and the load generator competes with the server
it measures, so every microsecond it spends per request is taken from the server. A raw asyncio
streams client (on uvloop when installed) costs a fraction of what httpx costs per request; httpx
stays available (`client="httpx"`) as the reference implementation to compare against.
`python -m bench.loadgen --calibrate` measures both against a trivial server.

The event loop runs in a spawned child process by default (`isolate=True`), so the caller may
have Ray (and its threads) loaded without slowing the loop; the child sends back a plain dict.

Percentiles use the nearest-rank method: the p-th percentile of N sorted values is the value at
1-based rank ceil(p/100 * N). Latency is measured from the start of sending a request (including
any reconnect) to the last byte of its body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable
from urllib.parse import urlsplit

UrlFor = Callable[[int], str]
MAX_ERROR_EXAMPLES = 5
CONNECT_ERROR_BACKOFF_S = 0.05  # a refused connect must not become a CPU-burning hot loop
READ_LIMIT = 1 << 20  # longest header block accepted


class LoadGenError(RuntimeError):
    """The load run itself failed (bad arguments, child process died) - not the server's errors."""


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (need not be sorted); None when there are none."""
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p}")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LoadResult:
    """One closed-loop run. Counts cover responses completed inside the timed window only.

    requests: HTTP responses of any status; ok: the 2xx ones. p50/p95/p99/max_ms are over every
    response (a shed request is a 503 answered with its latency: a server cannot look fast by
    refusing the slow ones); accepted_*_ms over the 2xx ones alone; overload_503_*_ms over the
    503s. errors = non-2xx responses other than 503 + transport errors and timeouts.
    """

    clients: int
    duration_s: float
    warmup_s: float
    client: str
    requests: int = 0
    ok: int = 0
    requests_per_s: float = 0.0
    ok_per_s: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    accepted_p50_ms: float | None = None
    accepted_p95_ms: float | None = None
    accepted_p99_ms: float | None = None
    accepted_max_ms: float | None = None
    status: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    transport_errors: int = 0
    timeouts: int = 0
    deliberate_503: int = 0
    overload_503_p50_ms: float | None = None
    overload_503_p99_ms: float | None = None
    overload_503_without_retry_after: int = 0
    warmup_errors: int = 0
    reconnects: int = 0
    client_cpu_s: float = 0.0
    client_cpu_us_per_request: float | None = None
    error_examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LoadResult":
        return cls(**data)


class CycleUrls:
    """url_for over a fixed list: request i gets urls[i % len(urls)]. Picklable (crosses the
    process boundary), unlike a lambda."""

    def __init__(self, urls: list[str]):
        if not urls:
            raise ValueError("CycleUrls needs at least one URL")
        self.urls = list(urls)

    def __call__(self, i: int) -> str:
        return self.urls[i % len(self.urls)]


class SpreadClients:
    """Client k sends every request to url_fors[k % len(url_fors)] (request i still gets that
    one's i-th URL): a fixed, even split of the clients over several servers, for a target whose
    processes each listen on their own port. Picklable like CycleUrls."""

    def __init__(self, url_fors: list[UrlFor]):
        if not url_fors:
            raise ValueError("SpreadClients needs at least one url_for")
        self.url_fors = list(url_fors)

    def for_client(self, k: int) -> UrlFor:
        return self.url_fors[k % len(self.url_fors)]


def _client_url_for(url_for: "UrlFor | SpreadClients", k: int) -> UrlFor:
    """The url_for of client k (the same for every client unless url_for spreads them)."""
    return url_for.for_client(k) if isinstance(url_for, SpreadClients) else url_for


class _SameUrl:
    def __init__(self, url: str):
        self.url = url

    def __call__(self, i: int) -> str:
        return self.url


# ---------------------------------------------------------------------------------------------
# Recording (shared by both clients)


class _Recorder:
    """Sorts each finished request into the window's counters; cheap per call."""

    def __init__(self, window_start: float, window_end: float, honor_retry_after: bool = True):
        self.window_start = window_start
        self.window_end = window_end
        self.ok_latencies: list[float] = []
        self.all_latencies: list[float] = []  # every response, whatever its status
        self.latencies_503: list[float] = []
        self.status: Counter = Counter()
        self.errors = 0
        self.transport_errors = 0
        self.timeouts = 0
        self.no_retry_after = 0
        self.warmup_errors = 0
        self.reconnects = 0
        self.examples: list[str] = []
        self.honor_retry_after = honor_retry_after

    async def back_off(self, status: int, retry_after: float | None) -> None:
        """A well-behaved client waits as a 503's Retry-After asks (RFC 9110) before its next
        request, never past the window; with honor_retry_after=False it hammers on at once."""
        if status == 503 and retry_after and self.honor_retry_after:
            until = min(time.perf_counter() + retry_after, self.window_end)
            # asyncio may wake a timer up to its clock resolution early: sleep until the clock says so,
            # or a wait meant to outlast the window would let one more request in at its very end
            while (left := until - time.perf_counter()) > 0:
                await asyncio.sleep(left)

    def response(self, status: int, latency: float, done: float, retry_after: bool) -> None:
        if not self.window_start <= done <= self.window_end:
            if done < self.window_start and not (200 <= status < 300 or status == 503):
                self.warmup_errors += 1
            return
        self.status[status] += 1
        self.all_latencies.append(latency)
        if 200 <= status < 300:
            self.ok_latencies.append(latency)
        elif status == 503:
            self.latencies_503.append(latency)
            if not retry_after:
                self.no_retry_after += 1
        else:
            self.errors += 1
            self._example(f"HTTP {status}")

    def failure(self, exc: BaseException, done: float, timed_out: bool) -> None:
        if done < self.window_start:
            self.warmup_errors += 1
            return
        if done > self.window_end:
            return
        self.errors += 1
        if timed_out:
            self.timeouts += 1
        else:
            self.transport_errors += 1
        self._example(f"{type(exc).__name__}: {exc}"[:300])

    def _example(self, message: str) -> None:
        if len(self.examples) < MAX_ERROR_EXAMPLES:
            self.examples.append(message)


def _summarize(rec: _Recorder, clients: int, duration_s: float, warmup_s: float, client: str,
               cpu_s: float) -> LoadResult:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    ok = len(rec.ok_latencies)
    requests = sum(rec.status.values())
    return LoadResult(
        clients=clients,
        duration_s=duration_s,
        warmup_s=warmup_s,
        client=client,
        requests=requests,
        ok=ok,
        requests_per_s=round(requests / duration_s, 1),
        ok_per_s=round(ok / duration_s, 1),
        p50_ms=ms(percentile(rec.all_latencies, 50)),
        p95_ms=ms(percentile(rec.all_latencies, 95)),
        p99_ms=ms(percentile(rec.all_latencies, 99)),
        max_ms=ms(percentile(rec.all_latencies, 100)),
        accepted_p50_ms=ms(percentile(rec.ok_latencies, 50)),
        accepted_p95_ms=ms(percentile(rec.ok_latencies, 95)),
        accepted_p99_ms=ms(percentile(rec.ok_latencies, 99)),
        accepted_max_ms=ms(percentile(rec.ok_latencies, 100)),
        status={str(code): n for code, n in sorted(rec.status.items())},
        errors=rec.errors,
        transport_errors=rec.transport_errors,
        timeouts=rec.timeouts,
        deliberate_503=len(rec.latencies_503),
        overload_503_p50_ms=ms(percentile(rec.latencies_503, 50)),
        overload_503_p99_ms=ms(percentile(rec.latencies_503, 99)),
        overload_503_without_retry_after=rec.no_retry_after,
        warmup_errors=rec.warmup_errors,
        reconnects=rec.reconnects,
        client_cpu_s=round(cpu_s, 3),
        client_cpu_us_per_request=round(cpu_s / requests * 1e6, 1) if requests else None,
        error_examples=rec.examples,
    )


# ---------------------------------------------------------------------------------------------
# Raw asyncio HTTP/1.1 client


class ProtocolError(Exception):
    """The server's bytes are not a valid HTTP/1.1 response."""


class _Target:
    """A URL pre-rendered into request bytes (rendered once per distinct URL)."""

    __slots__ = ("origin", "head")

    def __init__(self, url: str, method: str):
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise LoadGenError(f"only plain http://host[:port]/path URLs are supported, got {url!r}")
        port = parts.port or 80
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host_header = parts.hostname if port == 80 else f"{parts.hostname}:{port}"
        body_header = "" if method in ("GET", "HEAD") else "Content-Length: 0\r\n"
        self.origin = (parts.hostname, port)
        self.head = (f"{method} {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                     f"User-Agent: marquee-loadgen\r\nAccept: */*\r\n{body_header}\r\n").encode("latin-1")


class _RawConnection:
    """One keep-alive connection; `request` returns (status, retry_after_s or None, keep_open)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, origin):
        self.reader, self.writer, self.origin = reader, writer, origin
        self.used = 0

    @classmethod
    async def open(cls, origin) -> "_RawConnection":
        reader, writer = await asyncio.open_connection(origin[0], origin[1], limit=READ_LIMIT)
        return cls(reader, writer, origin)

    def close(self) -> None:
        self.writer.close()

    async def request(self, head: bytes, method: str, body: bytes = b"",
                      keep_body: bool = False) -> tuple[int, float | None, bool] | tuple[int, float | None, bool, bytes]:
        """Send `head` (+ `body`), read the whole answer; with keep_body the answer's body too."""
        self.used += 1
        self.writer.write(head + body if body else head)
        reader = self.reader
        while True:
            block = await reader.readuntil(b"\r\n\r\n")
            status, headers, http10 = _parse_head(block)
            if status >= 200:
                break  # 1xx are interim answers: the real one follows
        keep_open = headers.get(b"connection", b"keep-alive" if not http10 else b"close").lower() != b"close"
        answer = b""
        if method == "HEAD" or status in (204, 304):
            pass
        elif b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            answer = await _read_chunked(reader, keep_body)
        elif b"content-length" in headers:
            try:
                length = int(headers[b"content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {headers[b'content-length']!r}") from None
            if length:
                answer = await reader.readexactly(length)
        else:
            answer = await reader.read()  # body runs to end of stream (HTTP/1.0 style)
            keep_open = False
        retry_after = _retry_after_s(headers.get(b"retry-after"))
        return (status, retry_after, keep_open, answer) if keep_body else (status, retry_after, keep_open)


def _parse_head(block: bytes) -> tuple[int, dict[bytes, bytes], bool]:
    lines = block.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError:
        raise ProtocolError(f"bad status code in {lines[0][:80]!r}") from None
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
    return status, headers, status_line[0] == b"HTTP/1.0"


async def _read_chunked(reader: asyncio.StreamReader, keep: bool = False) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line {size_line[:40]!r}") from None
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ProtocolError("chunk not terminated by CRLF")
        if keep:
            parts.append(chunk[:-2])


# Errors after which a request on a *reused* connection is retried once on a fresh one: the server
# closed the idle keep-alive connection before it saw our request (what every HTTP client does).
_STALE = (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError)


async def _raw_worker(url_for: UrlFor, method: str, timeout_s: float, rec: _Recorder, next_index,
                      stop_at: float) -> None:
    targets: dict[str, _Target] = {}
    conn: _RawConnection | None = None
    clock = time.perf_counter
    opened = 0
    try:
        while clock() < stop_at:
            url = url_for(next_index())
            target = targets.get(url)
            if target is None:
                target = targets[url] = _Target(url, method)
            start = clock()
            try:
                async with asyncio.timeout(timeout_s):
                    if conn is not None and conn.origin != target.origin:
                        conn.close()
                        conn = None
                    for attempt in (0, 1):
                        if conn is None:
                            conn = await _RawConnection.open(target.origin)
                            opened += 1
                        try:
                            status, retry_after, keep_open = await conn.request(target.head, method)
                            break
                        except _STALE as exc:
                            reused = conn.used > 1
                            conn.close()
                            conn = None
                            partial = isinstance(exc, asyncio.IncompleteReadError) and exc.partial
                            if attempt or not reused or partial:
                                raise
            except (OSError, EOFError, asyncio.LimitOverrunError, ProtocolError, TimeoutError) as exc:
                done = clock()
                if conn is not None:
                    conn.close()
                    conn = None
                rec.failure(exc, done, timed_out=isinstance(exc, TimeoutError))
                if isinstance(exc, OSError) and not isinstance(exc, (TimeoutError, *_STALE)):
                    await asyncio.sleep(CONNECT_ERROR_BACKOFF_S)  # e.g. connection refused
                continue
            done = clock()
            rec.response(status, done - start, done, retry_after is not None)
            if not keep_open:
                conn.close()
                conn = None
            await rec.back_off(status, retry_after)
    finally:
        rec.reconnects += max(0, opened - 1)
        if conn is not None:
            conn.close()


# ---------------------------------------------------------------------------------------------
# httpx client (reference implementation, slower per request)


async def _httpx_worker(url_for: UrlFor, method: str, timeout_s: float, rec: _Recorder, next_index,
                        stop_at: float) -> None:
    import httpx

    clock = time.perf_counter
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout_s)) as client:
        while clock() < stop_at:
            url = url_for(next_index())
            start = clock()
            try:
                response = await client.request(method, url)  # reads the whole body
            except httpx.HTTPError as exc:
                done = clock()
                rec.failure(exc, done, timed_out=isinstance(exc, httpx.TimeoutException))
                if isinstance(exc, httpx.ConnectError):
                    await asyncio.sleep(CONNECT_ERROR_BACKOFF_S)
                continue
            done = clock()
            retry_after = _retry_after_s(response.headers.get("retry-after"))
            rec.response(response.status_code, done - start, done, retry_after is not None)
            await rec.back_off(response.status_code, retry_after)


_WORKERS = {"raw": _raw_worker, "httpx": _httpx_worker}


# ---------------------------------------------------------------------------------------------
# Driving a run


def _retry_after_s(value) -> float | None:
    """Retry-After in seconds (the delay-seconds form; an HTTP date counts as 1 s), or None."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return 1.0


async def _drive(url_for: UrlFor | SpreadClients, clients: int, duration_s: float, warmup_s: float, timeout_s: float,
                 method: str, client: str, honor_retry_after: bool = True) -> _Recorder:
    start = time.perf_counter()
    rec = _Recorder(start + warmup_s, start + warmup_s + duration_s, honor_retry_after)
    counter = iter(range(1 << 62))
    next_index = counter.__next__
    worker = _WORKERS[client]
    tasks = [asyncio.create_task(worker(_client_url_for(url_for, k), method, timeout_s, rec, next_index,
                                        rec.window_end))
             for k in range(clients)]
    # Stop at the window's end: requests still in flight are not waited for (they would not count).
    await asyncio.wait(tasks, timeout=max(0.0, rec.window_end - time.perf_counter()))
    for task in tasks:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    crashed = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)]
    if crashed:
        raise LoadGenError(f"a load worker crashed: {crashed[0]!r}") from crashed[0]
    return rec


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _cpu_seconds() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run_here(spec: dict) -> dict:
    """Run one load in the calling thread on a fresh event loop; returns LoadResult.to_dict()."""
    cpu0 = _cpu_seconds()
    loop = _new_loop()
    try:
        rec = loop.run_until_complete(_drive(
            spec["url_for"], spec["clients"], spec["duration_s"], spec["warmup_s"], spec["timeout_s"],
            spec["method"], spec["client"], spec.get("honor_retry_after", True)))
    finally:
        loop.close()
    # CPU of the whole run (warm-up included) spread over the window's requests: an upper bound.
    return _summarize(rec, spec["clients"], spec["duration_s"], spec["warmup_s"], spec["client"],
                      _cpu_seconds() - cpu0).to_dict()


def _child_main(conn, spec: dict) -> None:
    try:
        conn.send(("ok", _post_here(spec) if spec.get("mode") == "post" else _run_here(spec)))
    except BaseException as exc:  # report anything to the parent rather than dying silently
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def _run_isolated(spec: dict) -> dict:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a parent that may hold Ray threads
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child_main, args=(sender, spec), name="marquee-loadgen", daemon=True)
    process.start()
    sender.close()
    budget = spec["warmup_s"] + spec["duration_s"] + spec["timeout_s"] + 60  # + interpreter start
    try:
        if not receiver.poll(budget):
            raise LoadGenError(f"load generator process gave no result within {budget:.0f} s")
        kind, payload = receiver.recv()
    except EOFError:
        process.join(5)
        raise LoadGenError(f"load generator process died (exit code {process.exitcode})") from None
    finally:
        receiver.close()
        process.join(10)
        if process.is_alive():
            process.kill()
            process.join()
    if kind != "ok":
        raise LoadGenError(f"load generator failed: {payload}")
    return payload


def run_load(url_for: UrlFor | SpreadClients | str, clients: int, duration_s: float, warmup_s: float,
             timeout_s: float = 10.0, method: str = "GET", *, client: str = "raw",
             isolate: bool = True, honor_retry_after: bool = True) -> LoadResult:
    """`clients` closed-loop workers for an untimed `warmup_s`, then a timed `duration_s`.

    url_for(i) is the URL of the i-th request (a str means always the same URL); with
    isolate=True (default) it must be picklable (e.g. CycleUrls) because the loop runs in a
    spawned process; a SpreadClients gives each client its own. client: "raw" (asyncio streams, default) or "httpx". honor_retry_after:
    after a 503 with Retry-After a client waits that long before its next request (as HTTP
    clients must); False sends the next request at once (a client ignoring the server).
    """
    if clients < 1:
        raise LoadGenError(f"clients must be >= 1, got {clients}")
    if duration_s <= 0 or warmup_s < 0 or timeout_s <= 0:
        raise LoadGenError(f"need duration_s > 0, warmup_s >= 0, timeout_s > 0; got "
                           f"{duration_s}, {warmup_s}, {timeout_s}")
    if client not in _WORKERS:
        raise LoadGenError(f"client must be one of {sorted(_WORKERS)}, got {client!r}")
    method = method.upper()
    if isinstance(url_for, str):
        _Target(url_for, method)  # fail early on a bad URL
        url_for = _SameUrl(url_for)
    else:
        for each in url_for.url_fors if isinstance(url_for, SpreadClients) else [url_for]:
            _Target(each(0), method)  # fail early on a bad URL
    spec = {"url_for": url_for, "clients": clients, "duration_s": float(duration_s),
            "warmup_s": float(warmup_s), "timeout_s": float(timeout_s), "method": method,
            "client": client, "honor_retry_after": honor_retry_after}
    return LoadResult.from_dict(_run_isolated(spec) if isolate else _run_here(spec))


# ---------------------------------------------------------------------------------------------
# Sending a fixed set of request bodies (event batches), each until it is acknowledged


MAX_POST_ATTEMPTS = 20


def _post_head(url: str, content_type: str) -> tuple[tuple[str, int], bytes]:
    target = _Target(url, "POST")
    head = target.head.replace(b"Content-Length: 0\r\n", b"")  # the real length goes per body
    return target.origin, head[:-2] + f"Content-Type: {content_type}\r\nContent-Length: ".encode()


async def _post_worker(origin, head: bytes, bodies: list[bytes], next_index, timeout_s: float,
                       outcomes: list, stats: dict) -> None:
    """Take the next body, send it until a non-503 answer or MAX_POST_ATTEMPTS; a 503 waits its
    Retry-After, a transport error or timeout retries on a fresh connection (the bodies must be
    safe to resend: event batches are idempotent by event_id)."""
    conn: _RawConnection | None = None
    clock = time.perf_counter
    try:
        while (index := next_index()) < len(bodies):
            body = bodies[index]
            request_head = head + str(len(body)).encode() + b"\r\n\r\n"
            outcome = [0, 0, None, None]  # status, attempts, latency of the answered attempt, answer
            while outcome[1] < MAX_POST_ATTEMPTS:
                outcome[1] += 1
                start = clock()
                try:
                    async with asyncio.timeout(timeout_s):
                        if conn is None:
                            conn = await _RawConnection.open(origin)
                        status, retry_after, keep_open, answer = await conn.request(
                            request_head, "POST", body, keep_body=True)
                except (OSError, EOFError, asyncio.LimitOverrunError, ProtocolError, TimeoutError) as exc:
                    if conn is not None:
                        conn.close()
                        conn = None
                    stats["transport_errors"] += 1
                    if len(stats["error_examples"]) < MAX_ERROR_EXAMPLES:
                        stats["error_examples"].append(f"{type(exc).__name__}: {exc}"[:300])
                    await asyncio.sleep(CONNECT_ERROR_BACKOFF_S)
                    continue
                outcome[0], outcome[2], outcome[3] = status, clock() - start, answer
                if not keep_open:
                    conn.close()
                    conn = None
                if status != 503:
                    break
                stats["shed_503"] += 1
                if retry_after is None:
                    stats["503_without_retry_after"] += 1
                await asyncio.sleep(retry_after or CONNECT_ERROR_BACKOFF_S)
            outcomes[index] = outcome
    finally:
        if conn is not None:
            conn.close()


def _post_here(spec: dict) -> dict:
    bodies = spec["bodies"]
    outcomes: list = [None] * len(bodies)
    stats = {"shed_503": 0, "503_without_retry_after": 0, "transport_errors": 0, "error_examples": []}
    origin, head = _post_head(spec["url"], spec["content_type"])
    counter = iter(range(1 << 62)).__next__

    async def drive() -> float:
        start = time.perf_counter()
        await asyncio.gather(*(_post_worker(origin, head, bodies, counter, spec["timeout_s"], outcomes, stats)
                               for _ in range(spec["concurrency"])))
        return time.perf_counter() - start

    loop = _new_loop()
    try:
        elapsed = loop.run_until_complete(drive())
    finally:
        loop.close()
    return {"elapsed_s": elapsed, "outcomes": outcomes, **stats}


def post_bodies(url: str, bodies: list[bytes], concurrency: int, *, timeout_s: float = 30.0,
                content_type: str = "application/json", isolate: bool = True) -> dict:
    """POST every body to `url` from `concurrency` keep-alive connections, each body until it is
    answered with something other than 503. Returns elapsed_s (first send to last answer),
    outcomes[i] = [status, attempts, latency_s of the answered attempt, answer body] (status 0:
    never answered), and counts of 503s, 503s without Retry-After and transport errors."""
    if concurrency < 1:
        raise LoadGenError(f"concurrency must be >= 1, got {concurrency}")
    if not bodies:
        raise LoadGenError("post_bodies needs at least one body")
    _post_head(url, content_type)  # fail early on a bad URL
    spec = {"mode": "post", "url": url, "bodies": list(bodies), "concurrency": concurrency,
            "timeout_s": float(timeout_s), "content_type": content_type,
            # _run_isolated's budget: every body may time out once per attempt in the worst case
            "warmup_s": 0.0, "duration_s": float(timeout_s) * MAX_POST_ATTEMPTS}
    return _run_isolated(spec) if isolate else _post_here(spec)


# ---------------------------------------------------------------------------------------------
# Calibration: what the load generator itself can push against a trivial server


def serve_trivial(port: int, body: bytes = b'{"ok":true}', ready=None) -> None:
    """A minimal keep-alive HTTP/1.1 server (asyncio, uvloop if present) answering every request
    with `body`; runs until killed. Its cost per request is tiny, so a run against it measures
    the load generator."""
    response = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(response)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
        if ready is not None:
            ready.set()
        async with server:
            await server.serve_forever()

    loop = _new_loop()
    loop.run_until_complete(main())


def serve_trivial_uvicorn(port: int, body: bytes = b'{"ok":true}', ready=None) -> None:
    """The same fixed answer from a plain ASGI app under uvicorn (the in-process server's stack)."""
    import uvicorn

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if ready is not None:
        ready.set()
    server.run()


def calibrate(clients_levels=(1, 8), duration_s: float = 5.0, warmup_s: float = 1.0,
              server: str = "asyncio") -> dict:
    """Raw vs httpx requests/s against a trivial server started in its own process."""
    import multiprocessing

    from ops.local.ports import free_port

    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    ready = ctx.Event()
    target = {"asyncio": serve_trivial, "uvicorn": serve_trivial_uvicorn}[server]
    process = ctx.Process(target=target, args=(port,), kwargs={"ready": ready}, daemon=True)
    process.start()
    try:
        if not ready.wait(30):
            raise LoadGenError("trivial server did not start")
        time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/"
        out: dict = {"server": server, "duration_s": duration_s, "levels": []}
        for clients in clients_levels:
            row: dict = {"clients": clients}
            for client in ("raw", "httpx"):
                result = run_load(url, clients, duration_s, warmup_s, client=client)
                row[client] = {k: getattr(result, k) for k in (
                    "requests_per_s", "p50_ms", "p99_ms", "errors", "client_cpu_us_per_request")}
                print(f"[loadgen calibrate] {server} {clients} clients {client}: "
                      f"{result.requests_per_s:,.0f} req/s", file=sys.stderr, flush=True)
            row["raw_over_httpx"] = round(row["raw"]["requests_per_s"] / row["httpx"]["requests_per_s"], 2)
            out["levels"].append(row)
        return out
    finally:
        process.kill()
        process.join()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", nargs="?", help="URL to load (omit with --calibrate)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--client", choices=sorted(_WORKERS), default="raw")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure raw vs httpx at 1 and 8 clients against a trivial server")
    parser.add_argument("--server", choices=("asyncio", "uvicorn"), default="asyncio",
                        help="trivial server used by --calibrate")
    args = parser.parse_args(argv)
    if args.calibrate:
        result = calibrate(duration_s=args.duration, warmup_s=args.warmup, server=args.server)
    elif args.url:
        result = run_load(args.url, args.clients, args.duration, args.warmup, args.timeout,
                          client=args.client).to_dict()
    else:
        parser.error("give a URL or --calibrate")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
