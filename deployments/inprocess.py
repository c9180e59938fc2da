"""The homepage service under plain uvicorn, without Ray Serve: `bench serve`'s baselines.

Same FastAPI app, same fused stages, same member-state and event-log actors (each process joins
the home's Ray cluster as a driver only to reach them); only Serve's proxy, router and replica
are absent. Two shapes:

* one process (workers=1, no admission limit, GC as Python leaves it): the old baseline;
* like for like with a Serve profile: as many uvicorn processes as the profile has gateway
  replicas, each building its own service (each calls the app factory `worker_app` itself, so
  every process holds its own model and threads), the GC collected and frozen once the app is
  built (what a Serve replica does after __init__), and the replica's admission rule:
  `max_ongoing` requests run at once, up to `max_queued` wait, and any request beyond that is
  answered at once with 503 and Retry-After (`Admission`).

Each process listens on its own port (`launch(spec, ports)`), and the load generator spreads its
clients evenly over them. Why not uvicorn's `--workers`: its workers share one listening socket
and asyncio accepts every pending connection in one go, so one worker took all 8 keep-alive
connections of `bench serve` in most runs (measured 2026-12-06: one worker at 99% CPU, the other
idle), and the "two-process" baseline ran as one by chance.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

SPEC_ENV = "MARQUEE_INPROCESS_SPEC"  # how the parent tells each spawned worker what to build
BACKPRESSURE_BODY = b"Request dropped due to backpressure"  # Serve's own 503 body


@dataclass(frozen=True)
class WorkerSpec:
    """What each worker process builds. max_ongoing 0 means no admission limit."""

    home: str
    workers: int = 1
    max_ongoing: int = 0
    max_queued: int = -1  # -1: no bound (Serve's spelling)
    retry_after_s: float | None = 1.0  # None: no Retry-After header
    status_code: int = 503
    freeze_gc: bool = False
    niceness: int | None = None  # the processes' scheduling niceness (None: inherited); see set_niceness
    build: str = "deployments.inprocess:marquee_app"  # module:function returning this process's ASGI app
    member_state: str = "local"  # where pages read member state (service.Settings.member_state), as the profile

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_ongoing < 0:
            raise ValueError(f"max_ongoing must be >= 0 (0: no limit), got {self.max_ongoing}")
        if self.max_queued == 0 or self.max_queued < -1:
            raise ValueError(f"max_queued must be -1 (no bound) or >= 1, got {self.max_queued}")
        if self.niceness is not None and not (isinstance(self.niceness, int) and -20 <= self.niceness <= 19):
            raise ValueError(f"niceness must be an int in [-20, 19] or None, got {self.niceness!r}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0 or None, got {self.retry_after_s}")

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "WorkerSpec":
        return cls(**json.loads(text))


class Admission:
    """A Serve replica's admission rule for HTTP, as pure ASGI: at most `max_ongoing` requests
    inside the app at once; a request that finds `max_queued` others already waiting is answered
    503 with Retry-After without waiting (ray/serve/_private/replica.py, _can_accept_request for
    direct ingress). Lifespan and other scopes pass through."""

    def __init__(self, app, max_ongoing: int, max_queued: int = -1, retry_after_s: float | None = 1.0,
                 status_code: int = 503):
        if max_ongoing < 1:
            raise ValueError(f"max_ongoing must be >= 1, got {max_ongoing}")
        self.app, self.max_queued = app, max_queued
        self._slots = asyncio.Semaphore(max_ongoing)
        self.queued = 0
        self.shed = 0
        headers = [(b"content-type", b"text/plain; charset=utf-8"),
                   (b"content-length", str(len(BACKPRESSURE_BODY)).encode())]
        if retry_after_s is not None:  # whole seconds, rounded up, as Serve writes it (RFC 9110)
            headers.append((b"retry-after", str(max(0, math.ceil(retry_after_s))).encode()))
        self._refusal = (status_code, headers)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.max_queued != -1 and self.queued >= self.max_queued:
            self.shed += 1
            status, headers = self._refusal
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": BACKPRESSURE_BODY})
            return
        self.queued += 1
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()


def worker_app():
    """uvicorn's app factory, called in every worker process: build this process's own app
    (spec.build), wrap it in the admission rule, then collect and freeze the GC."""
    import importlib

    spec = WorkerSpec.from_json(os.environ[SPEC_ENV])
    module, _, name = spec.build.partition(":")
    app = getattr(importlib.import_module(module), name)(spec)
    if spec.max_ongoing:
        app = Admission(app, spec.max_ongoing, spec.max_queued, spec.retry_after_s, spec.status_code)
    if spec.freeze_gc:  # start-up objects are long-lived: keep them out of every later collection
        gc.collect()
        gc.freeze()
    return app


def marquee_app(spec: WorkerSpec):
    """The homepage app of spec.home: join its Ray cluster, build the service, make the API."""
    home = Path(spec.home)
    from marquee.home import LocalCluster, use_cluster_auth

    use_cluster_auth(home)  # before ray is imported

    cluster = LocalCluster.load(home)
    if cluster is None or not cluster.alive():
        raise RuntimeError(f"no Marquee cluster runs for {home}: start it with `marquee up --detach`")
    cluster.connect("marquee")

    from deployments.gateway import make_api
    from deployments.service import ActorRef, Settings, build_service

    service, _ = build_service(Settings(home=str(home.resolve()), member_state=spec.member_state),
                               member_state=ActorRef("marquee-member-state"),
                               event_log=ActorRef("marquee-event-log"))
    return make_api(service)


def launch(spec: WorkerSpec, ports: list[int], host: str = "127.0.0.1") -> subprocess.Popen:
    """Start the baseline in its own process group: one uvicorn process per port (spec.workers
    of them, under one supervisor when there are several), so `stop` can end every process of
    it, even a worker whose parent was killed."""
    from marquee.home import PROJECT_ROOT, auth_env

    if len(ports) != spec.workers:
        raise ValueError(f"ports: one per worker, got {len(ports)} for {spec.workers} workers")
    env = {**os.environ, **auth_env(Path(spec.home)), "MARQUEE_HOME": str(spec.home),
           "PYTHONPATH": str(PROJECT_ROOT), SPEC_ENV: spec.to_json()}
    return subprocess.Popen([sys.executable, "-m", "deployments.inprocess", "--host", host,
                             *[arg for port in ports for arg in ("--port", str(port))]],
                            env=env, cwd=str(PROJECT_ROOT), start_new_session=True)


def stop(process: subprocess.Popen | None, grace_s: float = 15.0) -> None:
    """SIGTERM the baseline's process group (uvicorn stops its workers), SIGKILL what is left."""
    if process is None:
        return
    try:
        group = os.getpgid(process.pid)
    except ProcessLookupError:
        group = None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
    if group is not None and group == process.pid:  # our own session: nobody else is in it
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def set_niceness(niceness: int) -> None:
    """Give this process (and the workers it will spawn) `niceness`. Why: Ray starts its worker
    processes, Serve's replicas among them, at niceness 15 (the raylet's worker_niceness), so a
    baseline at the shell's 0 would take CPU from the Ray actors both sides call and share it as
    an equal with the load generator, where the replicas yield; like for like, the fair baseline
    runs at the replicas' niceness. Lowering it needs privilege: the OSError says so."""
    os.nice(niceness - os.getpriority(os.PRIO_PROCESS, 0))


def _supervise(spec: WorkerSpec, ports: list[int], host: str) -> int:
    """One child per port, each serving one process of the spec; a child that exits ends the
    rest (the baseline is whole or down), and SIGTERM is passed on to every child."""
    env = {**os.environ, SPEC_ENV: replace(spec, workers=1).to_json()}
    children = [subprocess.Popen([sys.executable, "-m", "deployments.inprocess", "--host", host, "--port", str(port)],
                                 env=env) for port in ports]

    def end(*_):
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, end)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    end()
    codes = [child.wait() for child in children]
    return next((code for code in codes if code), 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.inprocess",
                                     description=f"serve the homepage under uvicorn; the {SPEC_ENV} "
                                                 "environment variable holds a WorkerSpec as JSON")
    parser.add_argument("--home", type=Path, default=None, help="shorthand for a one-process spec of this home")
    parser.add_argument("--port", type=int, action="append", required=True,
                        help="port to listen on; one per worker of the spec (repeat the flag)")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    if args.home is not None:
        os.environ[SPEC_ENV] = WorkerSpec(home=str(args.home)).to_json()
    if SPEC_ENV not in os.environ:
        parser.error(f"give --home or set {SPEC_ENV}")
    spec = WorkerSpec.from_json(os.environ[SPEC_ENV])
    if len(args.port) != spec.workers:
        parser.error(f"--port: one per worker, got {len(args.port)} for {spec.workers} workers")
    if spec.niceness is not None:
        set_niceness(spec.niceness)  # before any worker starts: they inherit it
    if spec.workers > 1:
        return _supervise(spec, args.port, args.host)
    import uvicorn

    uvicorn.run("deployments.inprocess:worker_app", factory=True, host=args.host, port=args.port[0],
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
