"""Closed-loop HTTP load for the multi-node scenario: homepage readers and event writers, each on
its own keep-alive connection, every request recorded with its wall-clock start, latency and
outcome. Writers post batches of events with ids of their own and resend a batch until it is
acknowledged (idempotent by event_id, as a real client would), so the acknowledged ids are
exactly what the event log must hold afterwards.

    python tests/system/multinode_load.py --url URL --members 1,2,3 --titles 4,5 \
        --readers 3 --writers 1 --stop-file PATH --out results.json

Runs until the stop file exists (threads: a few clients, the server is what is measured).
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

TIMEOUT_S = 10.0
BATCH = 20


class Client:
    """One keep-alive connection; a transport failure closes it and the next request reconnects."""

    def __init__(self, url: str):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT_S)
        headers = {"content-type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except Exception:
            self.conn.close()
            self.conn = None
            raise


def reader(url: str, members: list[int], seed: int, stop: Path, records: list) -> None:
    rng = random.Random(seed)
    client = Client(url)
    while not stop.exists():
        member = rng.choice(members)
        start = time.time()
        try:
            status, body = client.request("GET", f"/v1/homepage?member_id={member}&country=US")
            page = json.loads(body) if status == 200 else {}
            ok = status == 200 and bool(page.get("rows"))
            # a served page that had to do without a stage: the fallback page, or sources dropped
            degraded = bool(page.get("fallback") or page.get("degraded"))
            records.append(("homepage", start, time.time() - start, status, ok, None, degraded))
        except Exception as exc:
            records.append(("homepage", start, time.time() - start, None, False, type(exc).__name__, False))
            time.sleep(0.05)  # a refused connect must not spin


def writer(url: str, index: int, members: list[int], titles: list[int], seed: int, stop: Path,
           records: list, acked: list[str]) -> None:
    rng = random.Random(seed)
    client = Client(url)
    batch_no = 0
    while not stop.exists():
        now = int(time.time() * 1000)
        events = [{"event_id": f"mn-{index}-{batch_no}-{i}", "member_id": rng.choice(members),
                   "title_id": rng.choice(titles), "type": "play", "timestamp": now,
                   "country": "US", "device": "tv"} for i in range(BATCH)]
        body = json.dumps({"events": events}).encode()
        while True:  # the same batch until it is acknowledged (or the run ends unacknowledged)
            start = time.time()
            try:
                status, answer = client.request("POST", "/v1/events", body)
                result = json.loads(answer) if status == 200 else {}
                ok = status == 200 and result.get("accepted", 0) + result.get("duplicates", 0) == BATCH
                records.append(("events", start, time.time() - start, status, ok, None, False))
            except Exception as exc:
                ok = False
                records.append(("events", start, time.time() - start, None, False, type(exc).__name__, False))
            if ok:
                acked.extend(e["event_id"] for e in events)
                break
            if stop.exists():
                break
            time.sleep(0.1)
        batch_no += 1
        time.sleep(0.05)  # a steady trickle of writes next to the readers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--members", required=True)
    parser.add_argument("--titles", required=True)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--writers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--stop-file", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    members = [int(m) for m in args.members.split(",")]
    titles = [int(t) for t in args.titles.split(",")]
    records: list = []
    acked: list[str] = []
    threads = [threading.Thread(target=reader, args=(args.url, members, args.seed + i, args.stop_file, records))
               for i in range(args.readers)]
    threads += [threading.Thread(target=writer, args=(args.url, i, members, titles, args.seed + 100 + i,
                                                      args.stop_file, records, acked))
                for i in range(args.writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    fields = ("kind", "start", "latency_s", "status", "ok", "error", "degraded")
    out = {"records": [dict(zip(fields, r)) for r in records], "acked": acked}
    args.out.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
