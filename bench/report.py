"""What every benchmark shares: one JSON object on stdout, progress on stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Callable, Iterator


def emit(result: dict, as_json: bool) -> int:
    """Print the result: one line of JSON with --json, indented for people otherwise."""
    print(json.dumps(result) if as_json else json.dumps(result, indent=2))
    return 0


def progress(benchmark: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"[bench {benchmark}] {message}", file=sys.stderr, flush=True)

    return say


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout - ours, Ray's, child servers' (they inherit fd 1) - to
    stderr while the benchmark runs, so stdout carries only the one JSON object."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
