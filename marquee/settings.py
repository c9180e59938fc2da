"""The one way a settings object is declared and validated.

A settings class is a frozen dataclass whose `__post_init__` checks every field with the checkers
below. Each checker raises `SettingsError` (a ValueError) whose message names the field, says what
was expected and what was given -- "rounds: expected an integer >= 1, got 0" -- so a bad value is
refused where it is written (`--set`, the admin API, a user config), not deep inside a job.
`from_overrides` builds a settings object from a dict of overrides and refuses unknown keys by
name; `parse_assignments` turns repeated `--set key=JSON` options into that dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting has a bad value or name; the message names the field, the expectation, the value."""


def fail(name: str, expected: str, got: Any) -> SettingsError:
    """The error for field `name`: raise it (`raise fail(...)`) for a check the helpers do not cover."""
    return SettingsError(f"{name}: expected {expected}, got {got!r}")


def assign(settings: Any, name: str, value: Any) -> None:
    """Store a normalized value (an int for a numpy integer, a list for a tuple) in a frozen
    settings object; only for its own `__post_init__`."""
    object.__setattr__(settings, name, value)


def _bounds(ge: Any = None, gt: Any = None, le: Any = None, lt: Any = None) -> str:
    parts = [f"{op} {bound}" for op, bound in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if bound is not None]
    return (" " + " and ".join(parts)) if parts else ""


def _within(value: Any, ge: Any, gt: Any, le: Any, lt: Any) -> bool:
    return ((ge is None or value >= ge) and (gt is None or value > gt)
            and (le is None or value <= le) and (lt is None or value < lt))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value: Any, *, ge: int | None = None, le: int | None = None) -> int:
    """An integer (not a bool; numpy integers accepted) within the bounds; returns it as an int."""
    if not _is_int(value) or not _within(value, ge, None, le, None):
        raise fail(name, "an integer" + _bounds(ge=ge, le=le), value)
    return int(value)


def check_number(name: str, value: Any, *, ge: float | None = None, gt: float | None = None,
                 le: float | None = None, lt: float | None = None) -> float:
    """A finite real number (int or float, not a bool) within the bounds; returns it as given."""
    if (not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value)
            or not _within(value, ge, gt, le, lt)):
        raise fail(name, "a finite number" + _bounds(ge, gt, le, lt), value)
    return value


def _alternatives(choices: Iterable[Any]) -> str:
    shown = [repr(c) for c in choices]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def check_choice(name: str, value: Any, choices: Iterable[T]) -> T:
    """One of `choices` (compared with ==)."""
    choices = tuple(choices)
    if value not in choices:
        raise fail(name, _alternatives(choices), value)
    return value


def check_text(name: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise fail(name, "a non-empty string", value)
    return value


def check_names(name: str, value: Any, what: str = "names") -> list[str]:
    """A non-empty list (or tuple) of distinct non-empty strings; returns it as a list. `what`
    says which names, for the message ("column names")."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise fail(name, f"a list of {what}", value)
    if not value:
        raise fail(name, f"at least one of the {what}", value)
    if not all(isinstance(item, str) and item for item in value):
        raise fail(name, f"{what} as non-empty strings", value)
    twice = sorted({item for item in value if value.count(item) > 1})
    if twice:
        raise SettingsError(f"{name}: expected distinct {what}, got {twice} twice")
    return list(value)


def check_mapping(name: str, value: Any, what: str = "a dict") -> dict:
    """A dict (its contents are the caller's to check); `what` says which dict, for the message."""
    if not isinstance(value, dict):
        raise fail(name, what, value)
    return value


def check_int_map(name: str, value: Any, *, ge: int | None = None) -> dict[str, int]:
    """A non-empty dict of string keys to integers within the bounds; returns a copy with int values."""
    if (not isinstance(value, dict) or not value
            or not all(isinstance(k, str) and _is_int(v) and _within(v, ge, None, None, None)
                       for k, v in value.items())):
        raise fail(name, "a non-empty mapping of name -> integer" + _bounds(ge=ge), value)
    return {k: int(v) for k, v in value.items()}


def setting_names(cls: type) -> list[str]:
    """The names a settings class takes in its constructor, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def from_overrides(cls: type[T], overrides: Mapping[str, Any], base: T | None = None) -> T:
    """`cls` built from `base` (or its defaults) with `overrides` applied, validated by its
    `__post_init__`. Unknown keys and missing required ones are refused by name."""
    if not isinstance(overrides, Mapping):
        raise SettingsError(f"{cls.__name__} overrides: expected a mapping of setting -> value, got {overrides!r}")
    known = setting_names(cls)
    unknown = sorted(str(key) for key in overrides if key not in known)
    if unknown:
        raise SettingsError(f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; "
                            f"known: {', '.join(known)}")
    if base is not None:
        return dataclasses.replace(base, **overrides)
    required = [f.name for f in dataclasses.fields(cls) if f.init
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [name for name in required if name not in overrides]
    if missing:
        raise SettingsError(f"{cls.__name__}: missing required setting(s) {', '.join(missing)}")
    return cls(**overrides)


def parse_assignments(items: Iterable[str], option: str = "--set") -> dict[str, Any]:
    """Repeated `KEY=JSON` options (`--set rounds=50 --set engine="ray"`) as a dict; a later
    key wins. A missing `=`, an empty key or a value that is not JSON is refused, naming the item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"{option} {item!r}: expected KEY=JSON, e.g. {option} rounds=50")
        try:
            out[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            raise SettingsError(f"{option} {item!r}: the value must be JSON (a string needs quotes: "
                                f"{key.strip()}='\"text\"')") from None
    return out
