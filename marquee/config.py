"""Typed settings, read once from the environment with defaults that run on one laptop."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Where shared datasets (MovieLens, Open Bandit) live: MARQUEE_DATA or ../shared/data."""
    return Path(os.environ.get("MARQUEE_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def home_root() -> Path:
    """Where Marquee keeps its own state (worlds, event log, features, models): MARQUEE_HOME."""
    return Path(os.environ.get("MARQUEE_HOME", PROJECT_ROOT / ".marquee"))


@dataclass(frozen=True)
class Paths:
    """The on-disk layout of one Marquee home; every component finds its files here."""

    home: Path = field(default_factory=home_root)

    @property
    def world(self) -> Path:
        return self.home / "world"

    @property
    def event_log(self) -> Path:
        return self.home / "eventlog"

    @property
    def member_state(self) -> Path:
        return self.home / "member_state"

    @property
    def features(self) -> Path:
        return self.home / "features"

    @property
    def registry(self) -> Path:
        return self.home / "registry"
