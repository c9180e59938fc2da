"""The one parser of a dataset spec, as every command takes it: `world` (the home's synthetic
world), `world:DIR` (any Marquee dataset directory) or `movielens:PATH` (a raw MovieLens copy,
imported into the home on first use)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from marquee.home import Paths

KINDS = ("world", "movielens")


@dataclass(frozen=True)
class DatasetSpec:
    kind: str  # "world" or "movielens"
    location: Path | None  # None: the home's own world

    @classmethod
    def parse(cls, spec: str, *, option: str = "--dataset", allow_bare_world: bool = True) -> "DatasetSpec":
        """Parse `spec`; a bad one raises ValueError naming the option and what was expected."""
        expected = ("'world', 'world:DIR' or 'movielens:PATH'" if allow_bare_world
                    else "'world:DIR' or 'movielens:PATH'")
        if not isinstance(spec, str):
            raise ValueError(f"{option}: expected {expected}, got {spec!r}")
        if spec == "world" and allow_bare_world:
            return cls("world", None)
        kind, sep, location = spec.partition(":")
        if not sep or kind not in KINDS or not location.strip():
            raise ValueError(f"{option}: expected {expected}, got {spec!r}")
        return cls(kind, Path(location))

    def directory(self, paths: Paths) -> Path:
        """The Marquee dataset directory this spec names in `paths`' home (for MovieLens, where
        its import lives; the import itself is the producer's job)."""
        if self.kind == "world":
            return paths.world if self.location is None else self.location
        return paths.movielens(self.location)

    def __str__(self) -> str:
        return "world" if self.location is None else f"{self.kind}:{self.location}"
