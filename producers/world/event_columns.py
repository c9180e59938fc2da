"""Simulated events as parallel numpy columns (codes, -1 / NaN for null).

The simulator appends events in vectorised parts and only turns a whole day into Arrow at the
end, which is far cheaper than building rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from marquee.schema import EVENT_TYPES

TYPE_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}
EPISODE_PAYLOADS = 12  # payload codes 0..11 are {"episode": 1..12}
_EVENT_COLUMNS = (
    ("member", np.int64, -1), ("title", np.int64, -1), ("type", np.int8, -1), ("ts", np.int64, 0),
    ("device", np.int8, -1), ("row", np.int16, -1), ("position", np.int16, -1), ("art", np.int64, -1),
    ("propensity", np.float64, np.nan), ("value", np.float64, np.nan), ("payload", np.int64, -1),
)


class EventColumns:
    """Events as parallel numpy columns (codes, -1 / NaN for null), appended in parts."""

    def __init__(self) -> None:
        self.parts: list[dict[str, np.ndarray]] = []

    def add(self, n: int, **columns: Any) -> None:
        if not n:
            return
        part = {}
        for name, dtype, fill in _EVENT_COLUMNS:
            value = columns.get(name, fill)
            part[name] = np.asarray(value, dtype) if np.ndim(value) else np.full(n, value, dtype)
        self.parts.append(part)

    def extend(self, other: dict[str, np.ndarray] | None) -> None:
        if other is not None and other["ts"].size:
            self.parts.append(other)

    def concat(self) -> dict[str, np.ndarray]:
        if not self.parts:
            return {name: np.empty(0, dtype) for name, dtype, _ in _EVENT_COLUMNS}
        return {name: np.concatenate([p[name] for p in self.parts]) for name, _, _ in _EVENT_COLUMNS}


def take(columns: dict[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {name: values[index] for name, values in columns.items()}
