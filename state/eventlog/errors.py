"""Why an event log refuses to open."""

from __future__ import annotations


class LogCorruption(RuntimeError):
    """Acknowledged data on disk is damaged or inconsistent; the log refuses to open over it."""


class LogLocked(RuntimeError):
    """Another EventLog (process) holds this root; two writers would corrupt the log."""
