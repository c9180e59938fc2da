"""The synthetic world: a catalog, members with hidden tastes, and weeks of their behaviour.

It is the data the whole system runs on by default and the ground truth its models are judged
against, so it is built for the signals recommendation depends on: plays follow a hidden taste
match (learnable from history and genres), popularity is long-tailed, new releases and new members
exist (cold start), availability and maturity constrain what is shown, evenings are busy, series
are watched episode by episode, and the artwork on every impression is chosen uniformly at random
with its propensity logged (so the log supports off-policy evaluation of artwork policies).

Everything is drawn from numpy Generators seeded from `seed`: the same arguments give
byte-identical tables. Events are simulated day by day (member state kept sparse) so they come out
in global timestamp order with `seq` = 0..N-1 and memory stays bounded by one day of events.

This module is the public entry (`WorldSettings`, `generate_world` / `generate_world_from`,
`WorldTables`, `WorldEvents`, the `marquee world` command); the parts live beside it:
world_vocabulary (genres, countries, devices), world_catalog (titles, series, artwork),
world_members (members, tastes, activity), world_behaviour (the behaviour model's coefficients
and homepage shape), world_simulator (the day-by-day sessions and events, with
world_event_columns and world_viewing_state).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from marquee.dataset import write_dataset
from marquee.schema import STORED_EVENT_SCHEMA
from marquee.settings import assign, check_int, fail
from producers.world.behaviour import (
    DEFAULT_BEHAVIOUR,
    HOUR_P,
    HOUR_WEIGHTS,
    MAX_BINGE,
    MAX_POSITIONS,
    MAX_ROWS,
    NEW_RELEASE_DAYS,
    ROW_NAMES,
    Behaviour,
)
from producers.world.catalog import build_catalog
from producers.world.members import build_members
from producers.world.simulator import DAY_MS, Simulator, calibrate
from producers.world.vocabulary import (
    COUNTRIES,
    COUNTRY_WEIGHTS,
    DEVICE_WEIGHTS,
    GENRE_THEMES,
    GENRE_WEIGHTS,
    GENRES,
    KIDS_GENRES,
    LANGUAGES,
    LATENT_DIM,
    TITLE_ORIGIN_WEIGHTS,
    genre_vectors,
)

# The public API, plus the vocabularies and behaviour model re-exported so oracles and tests can
# keep reading them from producers.world.generate.
__all__ = [
    "generate_world", "generate_world_from", "WorldSettings", "WorldTables", "WorldEvents",
    "configure_cli", "cli_main",
    "Behaviour", "DEFAULT_BEHAVIOUR", "GENRES", "GENRE_WEIGHTS", "GENRE_THEMES", "KIDS_GENRES",
    "COUNTRIES", "COUNTRY_WEIGHTS", "TITLE_ORIGIN_WEIGHTS", "LANGUAGES", "DEVICE_WEIGHTS",
    "LATENT_DIM", "MAX_ROWS", "MAX_POSITIONS", "MAX_BINGE", "DAY_MS", "ROW_NAMES", "HOUR_WEIGHTS",
    "HOUR_P", "NEW_RELEASE_DAYS",
]

# ---------------------------------------------------------------------------------------------
# Public result
# ---------------------------------------------------------------------------------------------


@dataclass
class WorldTables:
    """A generated world. `events` is re-iterable: each pass regenerates the same day tables
    (STORED_EVENT_SCHEMA, global timestamp order), so memory stays bounded by one day."""

    titles: pa.Table
    artwork: pa.Table
    members: pa.Table
    events: "WorldEvents"
    manifest: dict[str, Any]
    latent_titles: pa.Table  # title_id, vector, popularity (ground truth; not for models)
    latent_members: pa.Table  # member_id, theme_affinity, favorite_genres, estimated_taste
    path: Path | None = None


def _parse_start(start: str | date) -> date:
    if isinstance(start, datetime):
        return start.date()
    if isinstance(start, date):
        return start
    try:
        return date.fromisoformat(str(start))
    except ValueError:
        raise fail("start", "an ISO date like 2026-01-01", start) from None


@dataclass(frozen=True)
class WorldSettings:
    """The world's size, span and seed: validated once here, recorded in its manifest."""

    members: int = 2000
    titles: int = 1500  # each season counts
    days: int = 30
    seed: int = 7
    start: date | str = "2026-01-01"  # first simulated day; an ISO string is parsed to a date
    events_target: int | None = None  # scale members' activity to about this many events in total

    def __post_init__(self) -> None:
        for name in ("members", "titles", "days"):
            assign(self, name, check_int(name, getattr(self, name), ge=1))
        if self.events_target is not None:
            assign(self, "events_target", check_int("events_target", self.events_target, ge=1))
        assign(self, "seed", check_int("seed", self.seed, ge=0))
        assign(self, "start", _parse_start(self.start))


_DEFAULT = WorldSettings()


def generate_world(
    members: int = _DEFAULT.members,
    titles: int = _DEFAULT.titles,
    days: int = _DEFAULT.days,
    seed: int = _DEFAULT.seed,
    start: str | date = _DEFAULT.start,
    out: Path | str | None = None,
    progress: bool = False,
    events_target: int | None = _DEFAULT.events_target,
    behaviour: Behaviour = DEFAULT_BEHAVIOUR,
) -> WorldTables:
    """Build a world; with `out`, also write it as a dataset directory (plus latent_*.parquet)."""
    settings = WorldSettings(members=members, titles=titles, days=days, seed=seed, start=start,
                             events_target=events_target)
    return generate_world_from(settings, out=out, progress=progress, behaviour=behaviour)


def generate_world_from(settings: WorldSettings, *, out: Path | str | None = None, progress: bool = False,
                        behaviour: Behaviour = DEFAULT_BEHAVIOUR) -> WorldTables:
    """Build the world `settings` describe; with `out`, also write it as a dataset directory."""
    members, titles, days, seed = settings.members, settings.titles, settings.days, settings.seed
    start_date, events_target = settings.start, settings.events_target

    genre_vecs = genre_vectors(seed)
    catalog = build_catalog(np.random.default_rng([seed, 1]), titles, start_date, days, genre_vecs)
    people = build_members(np.random.default_rng([seed, 2]), members, start_date, days, genre_vecs)
    sim = Simulator(catalog, people, behaviour, seed, start_date, days)
    if events_target is not None:
        sim.activity_scale = calibrate(sim, events_target)
    end_date = start_date + timedelta(days=days)
    manifest = {
        "source": "world", "seed": seed, "members": members, "titles": titles,
        "series": int(catalog.n_series), "artwork": int(catalog.art_title.size), "days": days,
        "start": f"{start_date.isoformat()}T00:00:00Z", "end": f"{end_date.isoformat()}T00:00:00Z",
        "genres": list(GENRES), "countries": list(COUNTRIES), "latent_dim": LATENT_DIM,
        "events_target": events_target, "activity_scale": round(sim.activity_scale, 6),
    }
    world = WorldTables(
        titles=catalog.table(), artwork=catalog.artwork_table(),
        members=people.table(sim.activity_scale), events=WorldEvents(sim, progress),
        manifest=manifest, latent_titles=catalog.latent_table(),
        latent_members=people.latent_table(),
    )
    if out is not None:
        world.path = _write(world, Path(out))
    return world


class WorldEvents:
    """The event log of a world, regenerated deterministically on each iteration."""

    def __init__(self, sim: "Simulator", progress: bool = False) -> None:
        self._sim = sim
        self._progress = progress

    def __iter__(self) -> Iterator[pa.Table]:
        return self._sim.event_tables(progress=self._progress)

    def to_table(self) -> pa.Table:
        tables = list(self)
        return pa.concat_tables(tables) if tables else STORED_EVENT_SCHEMA.empty_table()


def _write(world: WorldTables, out: Path) -> Path:
    path = write_dataset(
        out, titles=world.titles, artwork=world.artwork, members=world.members,
        events=iter(world.events), manifest=world.manifest,
    )
    world.manifest = json.loads((path / "manifest.json").read_text())
    # Ground truth for oracles and tests, beside the dataset (never read by models).
    pq.write_table(world.latent_titles, path / "latent_titles.parquet")
    pq.write_table(world.latent_members, path / "latent_members.parquet")
    return path


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--members", type=_positive, default=_DEFAULT.members,
                        help=f"number of members (default {_DEFAULT.members})")
    parser.add_argument("--titles", type=_positive, default=_DEFAULT.titles,
                        help=f"number of titles; each season counts (default {_DEFAULT.titles})")
    parser.add_argument("--days", type=_positive, default=_DEFAULT.days,
                        help=f"days to simulate (default {_DEFAULT.days})")
    parser.add_argument("--seed", type=int, default=_DEFAULT.seed,
                        help=f"random seed; same seed, same bytes (default {_DEFAULT.seed})")
    parser.add_argument("--start", default=_DEFAULT.start.isoformat(),
                        help=f"first simulated day, ISO date (default {_DEFAULT.start.isoformat()})")
    parser.add_argument("--events-target", type=_positive, default=None,
                        help="scale members' activity to produce about this many events in total")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: $MARQUEE_HOME/world)")
    parser.add_argument("--quiet", action="store_true", help="no per-day progress on stderr")


def cli_main(args: argparse.Namespace) -> int:
    from marquee.home import Paths

    out = args.out if args.out is not None else Paths().world
    began = time.perf_counter()
    try:
        world = generate_world(
            members=args.members, titles=args.titles, days=args.days, seed=args.seed, start=args.start,
            out=out, progress=not args.quiet, events_target=args.events_target,
        )
    except ValueError as exc:
        print(f"marquee world: error: {exc}", file=sys.stderr)
        return 2
    m = world.manifest
    print(f"wrote {world.path}: {m['titles']:,} titles ({m['series']:,} shows), {m['members']:,} members, "
          f"{m['artwork']:,} artwork, {m['events']:,} events over {m['days']} days "
          f"in {time.perf_counter() - began:.1f}s")
    return 0
