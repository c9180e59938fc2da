"""What every benchmark shares: one JSON object on stdout, progress on stderr."""

from __future__ import annotations

import json
import sys
from typing import Callable


def emit(result: dict, as_json: bool) -> int:
    """Print the result: one line of JSON with --json, indented for people otherwise."""
    print(json.dumps(result) if as_json else json.dumps(result, indent=2))
    return 0


def progress(benchmark: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        print(f"[bench {benchmark}] {message}", file=sys.stderr, flush=True)

    return say
