"""`marquee down` removes what outlived the head: every process naming our markers is killed and
gone (waited for) by the time it returns."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import psutil

from ops.local.cluster import _kill_leftovers


def _marked(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]


def test_every_marked_process_is_gone_when_it_returns():
    marker = f"marquee-test-{uuid.uuid4().hex}"
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"{marker}-{i}"])
             for i in range(3)]
    try:
        deadline = time.monotonic() + 10
        while len(_marked(marker)) < 3 and time.monotonic() < deadline:  # each has exec'd
            time.sleep(0.05)
        assert len(_marked(marker)) == 3
        _kill_leftovers(marker)
        alive = [p for p in _marked(marker) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == []
        assert all(p.wait(timeout=5) is not None for p in procs)  # they ended
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
