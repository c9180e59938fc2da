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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from marquee.dataset import write_dataset
from marquee.schema import (
    ARTWORK_SCHEMA,
    ARTWORK_THEMES,
    DEVICES,
    EVENT_TYPES,
    MAX_MATURITY,
    MEMBER_SCHEMA,
    STORED_EVENT_SCHEMA,
    TIMESTAMP,
    TITLE_SCHEMA,
)

# ---------------------------------------------------------------------------------------------
# Vocabularies of the world
# ---------------------------------------------------------------------------------------------

# Genre -> relative frequency among titles and tastes (drama and comedy dominate, as in catalogs).
GENRE_WEIGHTS: dict[str, float] = {
    "Action": 8, "Adventure": 4, "Animation": 4, "Children": 4, "Comedy": 11, "Crime": 5,
    "Documentary": 5, "Drama": 12, "Family": 4, "Fantasy": 3, "Horror": 4, "Musical": 1.5,
    "Mystery": 3, "Reality": 3, "Romance": 5, "Sci-Fi": 4, "Thriller": 7, "War": 1.5,
}
GENRES: tuple[str, ...] = tuple(GENRE_WEIGHTS)
KIDS_GENRES = ("Children", "Animation", "Family", "Comedy", "Adventure")

# Which artwork themes suit a genre: artwork variants and members' theme affinities follow them.
GENRE_THEMES: dict[str, tuple[str, ...]] = {
    "Action": ("action", "dark", "ensemble"), "Adventure": ("action", "scenic", "ensemble"),
    "Animation": ("family", "comedy", "character"), "Children": ("family", "comedy", "character"),
    "Comedy": ("comedy", "character", "ensemble"), "Crime": ("dark", "character", "action"),
    "Documentary": ("scenic", "character"), "Drama": ("character", "romance", "dark"),
    "Family": ("family", "comedy", "scenic"), "Fantasy": ("scenic", "action", "ensemble"),
    "Horror": ("dark", "character"), "Musical": ("ensemble", "romance", "comedy"),
    "Mystery": ("dark", "character", "scenic"), "Reality": ("ensemble", "character", "comedy"),
    "Romance": ("romance", "character", "scenic"), "Sci-Fi": ("action", "scenic", "dark"),
    "Thriller": ("dark", "action", "character"), "War": ("action", "ensemble", "dark"),
}

# Country -> share of members; titles originate mostly in the US.
COUNTRY_WEIGHTS: dict[str, float] = {
    "US": 0.32, "GB": 0.10, "CA": 0.07, "DE": 0.10, "FR": 0.09, "BR": 0.14, "IN": 0.12, "JP": 0.06,
}
COUNTRIES: tuple[str, ...] = tuple(COUNTRY_WEIGHTS)
TITLE_ORIGIN_WEIGHTS = (0.45, 0.10, 0.04, 0.08, 0.08, 0.08, 0.10, 0.07)
LANGUAGES: dict[str, tuple[tuple[str, float], ...]] = {
    "US": (("en", 0.87), ("es", 0.13)), "GB": (("en", 1.0),), "CA": (("en", 0.78), ("fr", 0.22)),
    "DE": (("de", 0.92), ("en", 0.08)), "FR": (("fr", 0.95), ("en", 0.05)), "BR": (("pt", 1.0),),
    "IN": (("hi", 0.55), ("en", 0.45)), "JP": (("ja", 1.0),),
}
DEVICE_WEIGHTS = (0.45, 0.30, 0.15, 0.10)  # tv, mobile, web, tablet (order of DEVICES)

LATENT_DIM = 16
MAX_ROWS = 5  # rows a member scrolls through in one session, at most
MAX_POSITIONS = 10  # titles per row a member looks at, at most
MAX_BINGE = 5  # episodes watched back to back, at most
DAY_MS = 86_400_000

# Rows of the homepage the world's (pre-Marquee) recommender logs impressions in.
_CW, _TOP, _POP, _TREND, _NEW, _SEARCH, _GENRE0 = range(7)
ROW_NAMES: tuple[str, ...] = (
    "continue_watching", "top_picks", "popular", "trending", "new_releases", "search",
) + tuple(f"genre:{g.lower()}" for g in GENRES)

# Session start hour (UTC; the world keeps one clock): quiet small hours, busy evenings.
HOUR_WEIGHTS = np.array([
    0.60, 0.35, 0.20, 0.12, 0.10, 0.12, 0.25, 0.45, 0.55, 0.55, 0.60, 0.70,
    0.85, 0.80, 0.75, 0.80, 0.95, 1.20, 1.60, 2.00, 2.30, 2.20, 1.70, 1.10,
])
HOUR_P = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()

_ADJECTIVES = (
    "Silent", "Crimson", "Hidden", "Broken", "Golden", "Last", "Midnight", "Frozen", "Burning",
    "Lost", "Secret", "Wild", "Electric", "Hollow", "Distant", "Savage", "Quiet", "Endless",
    "Bitter", "Brave", "Scarlet", "Iron", "Velvet", "Shattered", "Restless", "Forgotten",
    "Northern", "Lonely", "Wicked", "Gentle", "Fading", "Rising", "Dark", "Bright", "Hungry",
    "Sleeping", "Glass", "Paper", "Copper", "Blue",
)
_NOUNS = (
    "Harbor", "Kingdom", "Garden", "River", "Promise", "Signal", "Empire", "Orchard", "Witness",
    "Frontier", "Mirror", "Voyage", "Lantern", "Circle", "Storm", "Echo", "Horizon", "Island",
    "Letter", "Machine", "Crown", "Shadow", "Summer", "Winter", "Road", "Game", "House", "City",
    "Dream", "Heart", "Tide", "Hunter", "Station", "Theory", "Code", "Sky", "Forest", "Bridge",
    "Pilot", "Compass",
)
_PLACES = (
    "Avalon", "Brooklyn", "Marrakesh", "Lisbon", "Kyoto", "Montana", "Patagonia", "Berlin",
    "Mumbai", "Havana", "Oslo", "Nairobi", "Sicily", "Texas", "Yukon", "Seoul", "Tangier", "Cairo",
    "Provence", "Vegas",
)
_PEOPLE = (
    "Ada", "Jonah", "Mira", "Felix", "Nadia", "Oscar", "Lena", "Tomas", "Priya", "Hugo", "Iris",
    "Mateo", "Yuki", "Rosa", "Elias", "Clara",
)
_NAME_PATTERNS = (
    "The {a} {n}", "{n} of {p}", "{a} {n}", "The {n} of {p}", "{h}'s {n}", "A {a} {n}",
    "{p} {n}", "Return to {p}", "The Last {n}", "{a} {n}s", "{h} and the {a} {n}",
)


@dataclass(frozen=True)
class Behaviour:
    """Coefficients of the behaviour model (logits), in one place so oracles and tests can read
    what the world rewards."""

    play_bias: float = -3.1
    play_match: float = 3.0  # hidden taste match (dot product of unit vectors, -1..1)
    play_popularity: float = 0.45  # per standard deviation of log popularity in the country
    play_recency: float = 0.8  # exp(-age / recency_days) of the title's release
    play_theme: float = 1.0  # the member's affinity for the shown artwork's theme
    play_position: float = -0.08  # per position to the right
    play_row: float = -0.12  # per row further down
    play_continue: float = 3.0  # a title the member is in the middle of
    play_completed: float = -3.5  # already finished: members rarely re-watch
    play_listed: float = 0.7  # on the member's list
    play_evening: float = 0.25  # 18:00-23:59
    play_small_hours: float = -0.35  # 01:00-06:59
    play_device: tuple[float, ...] = (0.3, -0.25, 0.0, 0.05)  # order of DEVICES
    max_plays_per_session: int = 3
    recency_days: float = 45.0
    complete_bias: float = 0.4
    complete_match: float = 2.2
    complete_runtime: float = -0.5  # per standard deviation of runtime within its kind
    complete_device: tuple[float, ...] = (0.3, -0.4, 0.0, -0.1)
    binge_continue: tuple[float, ...] = (0.6, 0.3, 0.45, 0.45)  # next episode, by device
    thumb_rate: float = 0.06
    thumb_rate_completed: float = 0.12
    thumb_match: float = 4.0
    list_add_bias: float = -5.0
    list_add_match: float = 2.5
    list_remove_on_finish: float = 0.5
    list_remove_per_session: float = 0.04
    search_rate: tuple[float, ...] = (0.07, 0.16, 0.18, 0.12)  # by device
    search_for_title: float = 0.65
    search_play: float = 0.7
    more_rows: tuple[float, ...] = (0.55, 0.35, 0.45, 0.45)  # each further row, by device
    positions_seen: tuple[float, ...] = (3.5, 2.0, 2.5, 2.5)  # Poisson mean beyond 2, by device


DEFAULT_BEHAVIOUR = Behaviour()

# Row plan coefficients: (estimated match, popularity, recency, already completed) per row kind
# CW, TOP, POP, TREND, NEW, SEARCH, GENRE. The world's recommender knows tastes only roughly.
_ROW_COEFFS = np.array([
    [0.0, 0.0, 0.0, 0.0],
    [2.5, 0.5, 0.0, -3.0],
    [0.0, 1.3, 0.0, -1.0],
    [0.0, 0.6, 2.5, -1.0],
    [0.3, 0.3, 3.0, -1.0],
    [0.0, 0.0, 0.0, 0.0],
    [1.0, 0.9, 0.0, -2.0],
], dtype=np.float32)
NEW_RELEASE_DAYS = 120


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


def generate_world(
    members: int = 2000,
    titles: int = 1500,
    days: int = 30,
    seed: int = 7,
    start: str | date = "2026-01-01",
    out: Path | str | None = None,
    progress: bool = False,
    events_target: int | None = None,
    behaviour: Behaviour = DEFAULT_BEHAVIOUR,
) -> WorldTables:
    """Build a world; with `out`, also write it as a dataset directory (plus latent_*.parquet)."""
    for name, value in (("members", members), ("titles", titles), ("days", days)):
        _require_positive_int(name, value)
    if events_target is not None:
        _require_positive_int("events_target", events_target)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    start_date = _parse_start(start)
    seed = int(seed)

    genre_vecs = _genre_vectors(seed)
    catalog = _build_catalog(np.random.default_rng([seed, 1]), titles, start_date, days, genre_vecs)
    people = _build_members(np.random.default_rng([seed, 2]), members, start_date, days, genre_vecs)
    sim = _Simulator(catalog, people, behaviour, seed, start_date, days)
    if events_target is not None:
        sim.activity_scale = _calibrate(sim, events_target)
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

    def __init__(self, sim: "_Simulator", progress: bool = False) -> None:
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


def _require_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _parse_start(start: str | date) -> date:
    if isinstance(start, datetime):
        return start.date()
    if isinstance(start, date):
        return start
    try:
        return date.fromisoformat(str(start))
    except ValueError:
        raise ValueError(f"start must be an ISO date like 2026-01-01, got {start!r}") from None


def _epoch_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gumbel(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Gumbel noise (float32): adding it to logits and taking the top k samples k without
    replacement in proportion to exp(logit)."""
    return -np.log(np.maximum(rng.standard_exponential(shape, dtype=np.float32), np.float32(1e-30)))


def _weighted_subset(rng: np.random.Generator, weights: np.ndarray, k: np.ndarray) -> np.ndarray:
    """For each row i, k[i] distinct indices drawn proportionally to weights[i] (Gumbel top-k);
    returns an (n, max k) array padded with -1, best draw first."""
    keys = np.log(weights) + _gumbel(rng, weights.shape)
    order = np.argsort(-keys, axis=1, kind="stable")[:, : int(k.max())]
    return np.where(np.arange(order.shape[1])[None, :] < k[:, None], order, -1)


# ---------------------------------------------------------------------------------------------
# Catalog
# ---------------------------------------------------------------------------------------------


@dataclass
class _Catalog:
    """Titles (one per season for series) as numpy columns, indexed 0..n-1 (title_id = i + 1)."""

    names: list[str]
    genre_matrix: np.ndarray  # (n, G) bool
    genre_lists: list[list[str]]
    release_day: np.ndarray  # int days since epoch
    maturity: np.ndarray  # int8
    runtime: np.ndarray  # minutes (per episode for series)
    avail: np.ndarray  # (C, n) bool
    is_series: np.ndarray
    series_id: np.ndarray  # -1 for movies
    season: np.ndarray  # -1 for movies
    episodes: np.ndarray
    vec: np.ndarray  # (n, D) float32 unit vectors
    popularity: np.ndarray  # base popularity (lognormal)
    pop_z: np.ndarray  # (C, n) float32 standardized log popularity in each country
    runtime_z: np.ndarray  # runtime standardized within its kind
    art_offset: np.ndarray  # first artwork index of each title
    art_count: np.ndarray
    art_title: np.ndarray  # title index of each artwork
    art_theme: np.ndarray  # theme index of each artwork
    query: list[str]  # what a member types to find the title
    n_series: int

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def title_id(self) -> np.ndarray:
        return np.arange(1, self.n + 1, dtype=np.int64)

    def table(self) -> pa.Table:
        release = np.array(self.release_day, dtype="datetime64[D]")
        return pa.Table.from_arrays([
            pa.array(self.title_id),
            pa.array(self.names, pa.string()),
            pa.array(self.genre_lists, pa.list_(pa.string())),
            pa.array(release.astype("datetime64[Y]").astype(np.int64) + 1970, pa.int32()),
            pa.array(release, pa.date32()),
            pa.array(self.maturity, pa.int8()),
            pa.array(self.runtime, pa.int32()),
            pa.array([[COUNTRIES[c] for c in np.flatnonzero(self.avail[:, i])] for i in range(self.n)],
                     pa.list_(pa.string())),
            pa.array(np.where(self.is_series, "series", "movie").tolist(), pa.string()),
            pa.array(self.series_id, pa.int64(), mask=self.series_id < 0),
            pa.array(self.season, pa.int32(), mask=self.season < 0),
            pa.array(self.episodes, pa.int32()),
        ], schema=TITLE_SCHEMA)

    def artwork_table(self) -> pa.Table:
        k = np.arange(self.art_title.size) - self.art_offset[self.art_title]
        ids = [f"{t + 1}-{j}" for t, j in zip(self.art_title.tolist(), k.tolist())]
        themes = np.asarray(ARTWORK_THEMES, dtype=object)[self.art_theme].tolist()
        return pa.Table.from_arrays(
            [pa.array(ids, pa.string()), pa.array(self.art_title + 1, pa.int64()),
             pa.array(themes, pa.string())], schema=ARTWORK_SCHEMA)

    def latent_table(self) -> pa.Table:
        return pa.table({
            "title_id": pa.array(self.title_id),
            "vector": pa.array(list(self.vec), pa.list_(pa.float32())),
            "popularity": pa.array(self.popularity, pa.float64()),
        })


def _genre_vectors(seed: int) -> np.ndarray:
    """One latent direction per genre, shared by titles and tastes (so genres carry signal)."""
    return _unit(np.random.default_rng([seed, 0]).standard_normal((len(GENRES), LATENT_DIM)))


def _genre_theme_matrix() -> np.ndarray:
    return np.array([[t in GENRE_THEMES[g] for t in ARTWORK_THEMES] for g in GENRES], dtype=np.float64)


def _build_catalog(
    rng: np.random.Generator, n: int, start: date, days: int, genre_vecs: np.ndarray
) -> _Catalog:
    """Movies and seasons of shows; seasons of one show share genres, maturity, countries and
    (nearly) their latent vector, and are released about a year apart."""
    start_day = (start - date(1970, 1, 1)).days
    genre_p = np.array(list(GENRE_WEIGHTS.values()))
    genre_p = genre_p / genre_p.sum()

    # Units are movies or shows; a show expands into its seasons.
    n_series_titles = int(round(n * 0.3))
    seasons: list[int] = []
    while sum(seasons) < n_series_titles:
        seasons.append(min(int(rng.geometric(0.5)), 5, n_series_titles - sum(seasons)))
    n_movies = n - n_series_titles
    unit_seasons = np.array([1] * n_movies + seasons, dtype=np.int64)
    unit_is_series = np.arange(unit_seasons.size) >= n_movies
    units = unit_seasons.size

    primary = rng.choice(len(GENRES), size=units, p=genre_p)
    extra_k = rng.binomial(2, 0.35, size=units)
    extra_p = np.tile(genre_p, (units, 1))
    extra_p[np.arange(units), primary] = 1e-12  # extras differ from the primary genre
    extras = _weighted_subset(rng, extra_p, extra_k)
    unit_genres = np.zeros((units, len(GENRES)), dtype=bool)
    unit_genres[np.arange(units), primary] = True
    for col in range(extras.shape[1]):
        ok = extras[:, col] >= 0
        unit_genres[np.flatnonzero(ok), extras[ok, col]] = True
    mix = genre_vecs[primary] + 0.6 * (unit_genres.astype(np.float32) @ genre_vecs - genre_vecs[primary])
    unit_vec = _unit(mix + 0.6 * rng.standard_normal((units, LATENT_DIM)) / np.sqrt(LATENT_DIM))

    maturity_p = np.tile([0.03, 0.15, 0.42, 0.40], (units, 1))
    for genre, p in (("Animation", [0.3, 0.4, 0.2, 0.1]), ("Family", [0.3, 0.6, 0.1, 0.0]),
                     ("Children", [0.6, 0.4, 0.0, 0.0]), ("Horror", [0.0, 0.0, 0.2, 0.8])):
        maturity_p[primary == GENRES.index(genre)] = p
    unit_maturity = (rng.random((units, 1)) > np.cumsum(maturity_p, axis=1)).sum(axis=1)
    for_children = unit_genres[:, GENRES.index("Children")]  # never above "family"
    unit_maturity = np.minimum(unit_maturity, np.where(for_children, 1, MAX_MATURITY)).astype(np.int8)

    short = np.isin(primary, [GENRES.index(g) for g in ("Comedy", "Animation", "Children", "Reality")])
    movie_rt = np.where(short, rng.normal(92, 12, units), rng.normal(108, 20, units))
    episode_rt = np.where(short, rng.integers(22, 31, units), rng.integers(40, 61, units))
    unit_runtime = np.where(unit_is_series, episode_rt, np.clip(movie_rt, 70, 200)).astype(np.int32)
    unit_popularity = rng.lognormal(0.0, 1.2, units) * np.where(unit_is_series, 1.3, 1.0)

    origin = rng.choice(len(COUNTRIES), size=units, p=TITLE_ORIGIN_WEIGHTS)
    exclusive = rng.random(units) < 0.08
    unit_avail = (rng.random((len(COUNTRIES), units)) < 0.88) & ~exclusive[None, :]
    unit_avail[origin, np.arange(units)] = True

    # Release of the latest season/movie: most years ago, ~6% during the simulated window.
    years_ago = np.minimum(rng.exponential(7.0, units), 60.0)
    latest = start_day - 1 - (years_ago * 365.25).astype(np.int64)
    in_window = rng.random(units) < 0.06
    if units >= 20 and not in_window.any():
        in_window[rng.integers(units)] = True
    latest = np.where(in_window, start_day + rng.integers(0, max(days, 1), units), latest)

    unit_names = _unique_names(rng, units)
    # Expand units into titles.
    u = np.repeat(np.arange(units), unit_seasons)
    season = (np.arange(u.size) - np.repeat(np.cumsum(unit_seasons) - unit_seasons, unit_seasons)) + 1
    from_last = unit_seasons[u] - season
    release_day = latest[u] - from_last * 365 + rng.integers(-45, 46, u.size) * (from_last > 0)
    is_series = unit_is_series[u]
    series_ids = np.cumsum(unit_is_series) * unit_is_series  # 1.. for shows, 0 for movies
    season_drift = 0.15 * rng.standard_normal((u.size, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    vec = _unit(unit_vec[u] + season_drift * is_series[:, None])
    popularity = unit_popularity[u] * np.where(is_series, 0.8 ** from_last, 1.0)
    episodes = np.where(is_series, rng.integers(6, 13, u.size), 1).astype(np.int32)
    names = [
        f"{unit_names[i]}: Season {s}" if unit_is_series[i] else unit_names[i]
        for i, s in zip(u.tolist(), season.tolist())
    ]

    # Title ids in shuffled order (nothing downstream may rely on id order).
    perm = rng.permutation(u.size)
    u, season, release_day, is_series = u[perm], season[perm], release_day[perm], is_series[perm]
    vec, popularity, episodes = vec[perm], popularity[perm], episodes[perm]
    names = [names[i] for i in perm.tolist()]

    genre_matrix = unit_genres[u]
    country_noise = 0.35 * rng.standard_normal((len(COUNTRIES), u.size))
    avail = unit_avail[:, u]
    home_boost = 0.7 * (origin[u][None, :] == np.arange(len(COUNTRIES))[:, None])  # local hits
    local_pop = np.log(popularity)[None, :] + country_noise + home_boost
    pop_z = (local_pop - local_pop.mean(axis=1, keepdims=True)) / (local_pop.std(axis=1, keepdims=True) + 1e-9)
    runtime = unit_runtime[u]
    runtime_z = np.zeros(u.size)
    for kind in (True, False):
        sel = is_series == kind
        if sel.any():
            runtime_z[sel] = (runtime[sel] - runtime[sel].mean()) / (runtime[sel].std() + 1e-9)

    theme_w = 0.3 + genre_matrix.astype(np.float64) @ _genre_theme_matrix()
    art_count = rng.integers(3, 7, u.size)
    art_pick = _weighted_subset(rng, theme_w, art_count)
    art_theme = art_pick[art_pick >= 0].astype(np.int8)  # row-major: title by title
    art_offset = np.cumsum(art_count) - art_count

    query = []
    for name in names:
        base = name.split(":")[0].lower()
        base = base[4:] if base.startswith("the ") else base
        query.append(base[: max(3, int(rng.integers(4, 14)))])

    return _Catalog(
        names=names, genre_matrix=genre_matrix,
        genre_lists=[[GENRES[g] for g in np.flatnonzero(row)] for row in genre_matrix],
        release_day=release_day.astype(np.int64), maturity=unit_maturity[u], runtime=runtime,
        avail=avail, is_series=is_series,
        series_id=np.where(is_series, series_ids[u], -1).astype(np.int64),
        season=np.where(is_series, season, -1).astype(np.int32), episodes=episodes,
        vec=vec, popularity=popularity, pop_z=pop_z.astype(np.float32),
        runtime_z=runtime_z.astype(np.float32), art_offset=art_offset, art_count=art_count,
        art_title=np.repeat(np.arange(u.size), art_count), art_theme=art_theme, query=query,
        n_series=int(unit_is_series.sum()),
    )


def _unique_names(rng: np.random.Generator, k: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for _ in range(k):
        pattern = _NAME_PATTERNS[rng.integers(len(_NAME_PATTERNS))]
        name = pattern.format(
            a=_ADJECTIVES[rng.integers(len(_ADJECTIVES))], n=_NOUNS[rng.integers(len(_NOUNS))],
            p=_PLACES[rng.integers(len(_PLACES))], h=_PEOPLE[rng.integers(len(_PEOPLE))],
        )
        suffix = 2
        unique = name
        while unique in seen:
            unique = f"{name} {_roman(suffix)}"
            suffix += 1
        seen.add(unique)
        names.append(unique)
    return names


def _roman(n: int) -> str:
    out = ""
    for value, letters in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
                           (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= value:
            out += letters
            n -= value
    return out


# ---------------------------------------------------------------------------------------------
# Members
# ---------------------------------------------------------------------------------------------


@dataclass
class _Members:
    """Members as numpy columns, indexed 0..n-1 (member_id = i + 1)."""

    country: np.ndarray
    maturity: np.ndarray
    language: list[str]
    devices: np.ndarray  # (n, 3) device indices, -1 padded, primary first
    device_count: np.ndarray
    taste: np.ndarray  # (n, D) unit float32: the hidden truth
    est_taste: np.ndarray  # what the world's own recommender believes
    theme_affinity: np.ndarray  # (n, themes) float32
    favorites: np.ndarray  # (n, 3) genre indices, -1 padded
    favorite_count: np.ndarray
    activity: np.ndarray  # base sessions per day (before the activity scale)
    join_day: np.ndarray  # days since epoch

    @property
    def n(self) -> int:
        return self.country.size

    def table(self, activity_scale: float) -> pa.Table:
        devices = [[DEVICES[d] for d in row[:c]]
                   for row, c in zip(self.devices.tolist(), self.device_count.tolist())]
        return pa.Table.from_arrays([
            pa.array(np.arange(1, self.n + 1, dtype=np.int64)),
            pa.array(np.asarray(COUNTRIES, dtype=object)[self.country].tolist(), pa.string()),
            pa.array(self.maturity, pa.int8()),
            pa.array(self.language, pa.string()),
            pa.array(devices, pa.list_(pa.string())),
            pa.array(list(self.taste), pa.list_(pa.float32())),
            pa.array((self.activity * activity_scale).astype(np.float32), pa.float32()),
            pa.array(self.join_day.astype("datetime64[D]"), pa.date32()),
        ], schema=MEMBER_SCHEMA)

    def latent_table(self) -> pa.Table:
        favorites = [[GENRES[g] for g in row[:c]]
                     for row, c in zip(self.favorites.tolist(), self.favorite_count.tolist())]
        return pa.table({
            "member_id": pa.array(np.arange(1, self.n + 1, dtype=np.int64)),
            "theme_affinity": pa.array(list(self.theme_affinity), pa.list_(pa.float32())),
            "favorite_genres": pa.array(favorites, pa.list_(pa.string())),
            "estimated_taste": pa.array(list(self.est_taste), pa.list_(pa.float32())),
        })


def _build_members(
    rng: np.random.Generator, n: int, start: date, days: int, genre_vecs: np.ndarray
) -> _Members:
    """Members with 1-3 favourite genres shaping a hidden taste vector; ~10% kids profiles,
    ~12% joining during the window (cold start); lognormal activity."""
    start_day = (start - date(1970, 1, 1)).days
    country = rng.choice(len(COUNTRIES), size=n, p=np.array(list(COUNTRY_WEIGHTS.values())))
    language = []
    lang_draw = rng.random(n)
    for c, u in zip(country.tolist(), lang_draw.tolist()):
        options = LANGUAGES[COUNTRIES[c]]
        acc = 0.0
        chosen = options[-1][0]
        for lang, p in options:
            acc += p
            if u < acc:
                chosen = lang
                break
        language.append(chosen)

    profile = rng.random(n)
    maturity = np.where(profile < 0.05, 0, np.where(profile < 0.10, 1, np.where(profile < 0.16, 2, 3)))
    kids = maturity <= 1

    device_count = 1 + rng.binomial(2, 0.35, n)
    devices = _weighted_subset(rng, np.tile(DEVICE_WEIGHTS, (n, 1)), device_count)
    devices = np.pad(devices, ((0, 0), (0, 3 - devices.shape[1])), constant_values=-1)

    genre_p = np.array(list(GENRE_WEIGHTS.values()))
    kids_p = np.array([genre_p[i] if g in KIDS_GENRES else 0.0 for i, g in enumerate(GENRES)])
    weights = np.where(kids[:, None], kids_p[None, :] + 1e-12, genre_p[None, :])
    favorite_count = 1 + rng.binomial(2, 0.5, n)
    favorites = _weighted_subset(rng, weights, favorite_count)
    favorites = np.pad(favorites, ((0, 0), (0, 3 - favorites.shape[1])), constant_values=-1)

    fav_weight = np.where(favorites >= 0, np.array([1.0, 0.7, 0.5])[None, :], 0.0)
    mix = np.einsum("nk,nkd->nd", fav_weight, genre_vecs[np.maximum(favorites, 0)])
    taste = _unit(mix + 0.6 * rng.standard_normal((n, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    est_taste = _unit(taste + 0.9 * rng.standard_normal((n, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    genre_themes = _genre_theme_matrix()
    liked = np.einsum("nk,nkt->nt", fav_weight, genre_themes[np.maximum(favorites, 0)])
    liked = liked / fav_weight.sum(axis=1, keepdims=True)
    personal = 0.5 * rng.standard_normal((n, len(ARTWORK_THEMES)))
    theme_affinity = personal + 0.6 * (liked - liked.mean(axis=1, keepdims=True))

    return _Members(
        country=country.astype(np.int64), maturity=maturity.astype(np.int8), language=language,
        devices=devices, device_count=device_count, taste=taste, est_taste=est_taste,
        theme_affinity=theme_affinity.astype(np.float32), favorites=favorites,
        favorite_count=favorite_count, activity=rng.lognormal(np.log(0.17), 1.1, n),
        join_day=_join_days(rng, n, start_day, days),
    )


def _join_days(rng: np.random.Generator, n: int, start_day: int, days: int) -> np.ndarray:
    joins_in_window = rng.random(n) < 0.12
    before = start_day - rng.integers(1, 1500, n)
    during = start_day + rng.integers(0, max(days, 1), n)
    return np.where(joins_in_window, during, before).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Behaviour
# ---------------------------------------------------------------------------------------------

_TYPE = {name: i for i, name in enumerate(EVENT_TYPES)}
_EPISODE_PAYLOADS = 12  # payload codes 0..11 are {"episode": 1..12}
_EVENT_COLUMNS = (
    ("member", np.int64, -1), ("title", np.int64, -1), ("type", np.int8, -1), ("ts", np.int64, 0),
    ("device", np.int8, -1), ("row", np.int16, -1), ("position", np.int16, -1), ("art", np.int64, -1),
    ("propensity", np.float64, np.nan), ("value", np.float64, np.nan), ("payload", np.int64, -1),
)


class _EventColumns:
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


def _take(columns: dict[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {name: values[index] for name, values in columns.items()}


def _group_starts(sorted_groups: np.ndarray) -> np.ndarray:
    """Index of the first element of each element's run in an array sorted by group."""
    first = np.r_[True, sorted_groups[1:] != sorted_groups[:-1]] if sorted_groups.size else np.zeros(0, bool)
    return np.maximum.accumulate(np.where(first, np.arange(sorted_groups.size), 0))


def _group_cumsum(values: np.ndarray, sorted_groups: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of `values` within runs of equal `sorted_groups`."""
    total = np.cumsum(values)
    starts = _group_starts(sorted_groups)
    return total - (total - values)[starts]


class _ViewingState:
    """What each member has watched (episodes done, fraction into the current one) and listed,
    one record per touched (member, title), so memory follows activity, not members x titles."""

    def __init__(self, n_titles: int) -> None:
        self.n_titles = n_titles
        self.codes = np.empty(0, np.int64)  # member * n_titles + title, sorted
        self.episodes = np.empty(0, np.int16)
        self.fraction = np.empty(0, np.float32)
        self.listed = np.empty(0, bool)

    def lookup(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Dense (len(members), n_titles) episodes, fraction and listed for these members."""
        t = self.n_titles
        episodes = np.zeros((members.size, t), np.int16)
        fraction = np.zeros((members.size, t), np.float32)
        listed = np.zeros((members.size, t), bool)
        lo = np.searchsorted(self.codes, members * t)
        count = np.searchsorted(self.codes, members * t + t) - lo
        if count.sum():
            rows = np.repeat(np.arange(members.size), count)
            idx = np.arange(count.sum()) + np.repeat(lo - (np.cumsum(count) - count), count)
            cols = self.codes[idx] - members[rows] * t
            episodes[rows, cols] = self.episodes[idx]
            fraction[rows, cols] = self.fraction[idx]
            listed[rows, cols] = self.listed[idx]
        return episodes, fraction, listed

    def store(self, members: np.ndarray, episodes: np.ndarray, fraction: np.ndarray,
              listed: np.ndarray) -> None:
        """Replace these members' records with the dense arrays' non-empty cells."""
        keep = ~np.isin(self.codes // self.n_titles, members)
        rows, cols = np.nonzero((episodes > 0) | (fraction > 0) | listed)
        codes = np.concatenate([self.codes[keep], members[rows] * self.n_titles + cols])
        order = np.argsort(codes, kind="stable")
        self.codes = codes[order]
        self.episodes = np.concatenate([self.episodes[keep], episodes[rows, cols]])[order]
        self.fraction = np.concatenate([self.fraction[keep], fraction[rows, cols]])[order]
        self.listed = np.concatenate([self.listed[keep], listed[rows, cols]])[order]


_BLAS = None


def _single_threaded_blas():
    """The simulation's matrix products are small: OpenBLAS threads only fight over the cores
    (measured here: 2.8 s single-threaded against 5-14 s threaded on a busy 2-core machine)."""
    global _BLAS
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover - optional speed-up
        return contextlib.nullcontext()
    if _BLAS is None:
        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


class _Simulator:
    """Day-by-day behaviour of members against the catalog (see `Behaviour` for the model)."""

    def __init__(self, catalog: _Catalog, members: _Members, behaviour: Behaviour, seed: int,
                 start: date, days: int) -> None:
        self.catalog, self.members, self.b = catalog, members, behaviour
        self.seed, self.days = seed, days
        self.start_day = (start - date(1970, 1, 1)).days
        self.start_ms = _epoch_ms(start)
        self.activity_scale = 1.0
        self.batch = int(max(16, min(2048, 3_000_000 // catalog.n)))
        self.release_rel = (catalog.release_day - self.start_day).astype(np.float32)  # days from start
        self.artwork_ids = catalog.artwork_table().column("artwork_id").combine_chunks()
        compact = dict(sort_keys=True, separators=(",", ":"))
        self.payloads = pa.array(
            [json.dumps({"episode": e}, **compact) for e in range(1, _EPISODE_PAYLOADS + 1)]
            + [json.dumps({"query": q}, **compact) for q in catalog.query]
            + [json.dumps({"query": g.lower()}, **compact) for g in GENRES], pa.string())

    # -- sessions ---------------------------------------------------------------------------

    def _day_factor(self, day: int) -> float:
        weekday = (self.start_day + day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        return 1.2 if weekday >= 4 else 0.92  # Friday to Sunday are busier

    def expected_sessions(self, subset: np.ndarray | None = None) -> float:
        members = np.arange(self.members.n) if subset is None else subset
        activity = self.members.activity[members] * self.activity_scale
        join_rel = self.members.join_day[members] - self.start_day
        return float(sum(activity[join_rel <= d].sum() * self._day_factor(d) for d in range(self.days)))

    def _sessions(self, rng: np.random.Generator, day: int, subset: np.ndarray):
        mem = self.members
        rate = mem.activity[subset] * self.activity_scale * self._day_factor(day)
        rate = np.where(mem.join_day[subset] - self.start_day <= day, rate, 0.0)
        who = np.repeat(subset, rng.poisson(rate))
        seconds = rng.choice(24, size=who.size, p=HOUR_P) * 3600 + rng.integers(0, 3600, who.size)
        order = np.lexsort((seconds, who))
        who, seconds = who[order], seconds[order]
        rounds = np.arange(who.size) - _group_starts(who)  # a member's n-th session that day
        count = mem.device_count[who]
        pick = np.where((count > 1) & (rng.random(who.size) >= 0.6),
                        1 + (rng.random(who.size) * np.maximum(count - 1, 1)).astype(np.int64), 0)
        device = mem.devices[who, pick]
        t0 = self.start_ms + day * DAY_MS + seconds * 1000 + rng.integers(0, 1000, who.size)
        return who, t0, device, seconds // 3600, rounds

    def day_columns(self, subset: np.ndarray | None = None, stream: int = 3,
                    progress: bool = False) -> Iterator[dict[str, np.ndarray]]:
        """Each day's events (in timestamp order) as numpy columns. Events a session causes
        after midnight are carried into the next day; those after the window's end are cut."""
        rng = np.random.default_rng([self.seed, stream])
        subset = np.arange(self.members.n) if subset is None else np.asarray(subset, np.int64)
        state = _ViewingState(self.catalog.n)
        carry: dict[str, np.ndarray] | None = None
        started, total = time.perf_counter(), 0
        for day in range(self.days):
            events = _EventColumns()
            events.extend(carry)
            who, t0, device, hour, rounds = self._sessions(rng, day, subset)
            with _single_threaded_blas():
                for r in range(int(rounds.max()) + 1 if rounds.size else 0):
                    idx = np.flatnonzero(rounds == r)
                    for lo in range(0, idx.size, self.batch):
                        b = idx[lo: lo + self.batch]
                        self._simulate(rng, state, events, who[b], t0[b], device[b], hour[b])
            columns = events.concat()
            columns = _take(columns, np.argsort(columns["ts"], kind="stable"))
            cut = int(np.searchsorted(columns["ts"], self.start_ms + (day + 1) * DAY_MS))
            carry = _take(columns, slice(cut, None))
            total += cut
            if progress:
                print(f"world: day {day + 1}/{self.days}: {who.size:,} sessions, {total:,} events "
                      f"({time.perf_counter() - started:.1f}s)", file=sys.stderr, flush=True)
            if cut:
                yield _take(columns, slice(0, cut))

    def event_tables(self, progress: bool = False) -> Iterator[pa.Table]:
        seq = 0
        for columns in self.day_columns(progress=progress):
            yield self._table(columns, seq)
            seq += columns["ts"].size

    # -- one batch of sessions (distinct members) ----------------------------------------------

    def _simulate(self, rng: np.random.Generator, state: _ViewingState, out: _EventColumns,
                  m: np.ndarray, t0: np.ndarray, dev: np.ndarray, hour: np.ndarray) -> None:
        cat, mem, b = self.catalog, self.members, self.b
        S, T = m.size, cat.n
        episodes_done, fraction, listed = state.lookup(m)
        completed = episodes_done >= cat.episodes[None, :]
        in_progress = ~completed & ((episodes_done > 0) | (fraction > 0))
        match = mem.taste[m] @ cat.vec.T
        estimate = mem.est_taste[m] @ cat.vec.T
        now = ((t0 - self.start_ms) / DAY_MS).astype(np.float32)
        age = now[:, None] - self.release_rel[None, :]
        eligible = (cat.avail[mem.country[m]] & (age >= 0)
                    & (cat.maturity[None, :] <= mem.maturity[m][:, None]))
        recency = np.exp(-np.maximum(age, 0) / np.float32(b.recency_days))
        pop = cat.pop_z[mem.country[m]]

        # Some sessions start by tidying the list.
        tidy = np.flatnonzero(listed.any(axis=1) & (rng.random(S) < b.list_remove_per_session))
        if tidy.size:
            gone = np.argmax(rng.random((tidy.size, T)) * listed[tidy], axis=1)
            listed[tidy, gone] = False
            out.add(tidy.size, member=m[tidy], title=gone, type=_TYPE["my_list_remove"],
                    ts=t0[tidy] + 500, device=dev[tidy])

        # The homepage: rows of titles, each with a uniformly random artwork.
        n_rows = 1 + rng.binomial(MAX_ROWS - 1, np.asarray(b.more_rows)[dev])
        pick = (rng.random(S) * mem.favorite_count[m]).astype(np.int64)
        favorite = mem.favorites[m, pick]
        other = (favorite + 1 + rng.integers(0, len(GENRES) - 1, S)) % len(GENRES)
        pool = np.column_stack([np.full(S, _POP), np.full(S, _TREND), np.full(S, _NEW),
                                _GENRE0 + favorite, _GENRE0 + other])
        cw = np.where(in_progress.any(axis=1) & (rng.random(S) < 0.9), _CW, -1)
        plan = np.column_stack([cw, np.full(S, _TOP), rng.permuted(pool, axis=1)])
        plan = np.take_along_axis(plan, np.argsort(plan < 0, axis=1, kind="stable"), axis=1)[:, :MAX_ROWS]
        plan[np.arange(MAX_ROWS)[None, :] >= n_rows[:, None]] = -1
        looks = rng.poisson(np.asarray(b.positions_seen)[dev][:, None], (S, MAX_ROWS))
        seen = np.minimum(2 + looks, MAX_POSITIONS)
        shown = np.zeros((S, T), bool)
        k = min(MAX_POSITIONS, T)
        parts = []
        for slot in range(MAX_ROWS):
            g = np.flatnonzero(plan[:, slot] >= 0)
            if not g.size:
                break
            code = plan[g, slot]
            kind = np.minimum(code, _GENRE0)
            coef = _ROW_COEFFS[kind]
            logits = (coef[:, :1] * estimate[g] + coef[:, 1:2] * pop[g] + coef[:, 2:3] * recency[g]
                      + coef[:, 3:] * completed[g])
            allowed = eligible[g] & ~shown[g]
            allowed &= np.where((kind == _CW)[:, None], in_progress[g], True)
            allowed &= np.where((kind == _NEW)[:, None], age[g] <= NEW_RELEASE_DAYS, True)
            genre_rows = np.flatnonzero(kind == _GENRE0)
            allowed[genre_rows] &= cat.genre_matrix.T[code[genre_rows] - _GENRE0]
            keys = logits + _gumbel(rng, (g.size, T))
            keys[~allowed] = -np.inf
            top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
            top_keys = np.take_along_axis(keys, top, axis=1)
            order = np.argsort(-top_keys, axis=1, kind="stable")
            top, top_keys = np.take_along_axis(top, order, 1), np.take_along_axis(top_keys, order, 1)
            valid = np.isfinite(top_keys) & (np.arange(k)[None, :] < seen[g, slot][:, None])
            rr, pos = np.nonzero(valid)
            s, t = g[rr], top[rr, pos]
            shown[s, t] = True
            parts.append((s, t, code[rr], np.full(s.size, slot), pos))
        s, t, row, slot, pos = (np.concatenate(x) for x in zip(*parts))
        order = np.lexsort((pos, slot, s))
        s, t, row, slot, pos = s[order], t[order], row[order], slot[order], pos[order]
        art = cat.art_offset[t] + (rng.random(s.size) * cat.art_count[t]).astype(np.int64)
        shown_at = t0[s] + 1000 + slot * 4000 + pos * 500
        out.add(s.size, member=m[s], title=t, type=_TYPE["impression"], ts=shown_at, device=dev[s],
                row=row, position=pos, art=art, propensity=1.0 / cat.art_count[t])

        # Which impressions get played (at most a couple per session, in browsing order).
        h = hour[s]
        logit = (b.play_bias + b.play_match * match[s, t] + b.play_popularity * pop[s, t]
                 + b.play_recency * recency[s, t]
                 + b.play_theme * mem.theme_affinity[m[s], cat.art_theme[art]]
                 + b.play_position * pos + b.play_row * slot + b.play_continue * in_progress[s, t]
                 + b.play_completed * completed[s, t] + b.play_listed * listed[s, t]
                 + np.where(h >= 18, b.play_evening, 0.0)
                 + np.where((h >= 1) & (h <= 6), b.play_small_hours, 0.0)
                 + np.asarray(b.play_device)[dev[s]])
        played = rng.random(s.size) < _sigmoid(logit)
        played &= _group_cumsum(played.astype(np.int64), s) <= b.max_plays_per_session

        add = ~played & ~listed[s, t] & ~completed[s, t]
        add &= rng.random(s.size) < _sigmoid(b.list_add_bias + b.list_add_match * match[s, t])
        listed[s[add], t[add]] = True
        out.add(int(add.sum()), member=m[s[add]], title=t[add], type=_TYPE["my_list_add"],
                ts=shown_at[add] + 1500, device=dev[s[add]], row=row[add], position=pos[add], art=art[add])

        # Searches after browsing: for a title not shown (often played), or for a genre.
        searched_at = t0 + 2000 + n_rows * 4000 + 10000
        searching = rng.random(S) < np.asarray(b.search_rate)[dev]
        for_title = searching & (rng.random(S) < b.search_for_title)
        q = np.flatnonzero(for_title)
        keys = 3.0 * match[q] + pop[q] + _gumbel(rng, (q.size, T))
        keys[~(eligible[q] & ~completed[q] & ~shown[q])] = -np.inf
        found = np.argmax(keys, axis=1) if q.size else np.zeros(0, np.int64)
        ok = np.isfinite(keys[np.arange(q.size), found])
        q, found = q[ok], found[ok]
        out.add(q.size, member=m[q], title=found, type=_TYPE["search"], ts=searched_at[q],
                device=dev[q], payload=_EPISODE_PAYLOADS + found)
        by_genre = np.flatnonzero(searching & ~for_title)
        out.add(by_genre.size, member=m[by_genre], type=_TYPE["search"], ts=searched_at[by_genre],
                device=dev[by_genre], payload=_EPISODE_PAYLOADS + T + favorite[by_genre])
        q_play = rng.random(q.size) < b.search_play

        # Plays: from the homepage and from search.
        p_s = np.concatenate([s[played], q[q_play]])
        p_t = np.concatenate([t[played], found[q_play]])
        p_rel = np.concatenate([shown_at[played] - t0[s[played]], searched_at[q[q_play]] - t0[q[q_play]]])
        p_rel = p_rel + rng.integers(2000, 20000, p_s.size)
        p_row = np.concatenate([row[played], np.full(int(q_play.sum()), _SEARCH)])
        p_pos = np.concatenate([pos[played], np.full(int(q_play.sum()), -1)])
        p_art = np.concatenate([art[played], np.full(int(q_play.sum()), -1)])
        self._watch(rng, out, m, t0, dev, p_s, p_t, p_rel, p_row, p_pos, p_art,
                    match, completed, episodes_done, fraction, listed)
        state.store(m, episodes_done, fraction, listed)

    def _watch(self, rng, out, m, t0, dev, p_s, p_t, p_rel, p_row, p_pos, p_art,
               match, completed, episodes_done, fraction, listed) -> None:
        """Playback: episode by episode, progress at each quarter and where the member stopped,
        completions, thumbs; updates the dense state arrays in place."""
        cat, b = self.catalog, self.b
        n = p_s.size
        restart = completed[p_s, p_t]  # a re-watch starts over but never un-finishes a title
        ep = np.where(restart, 0, episodes_done[p_s, p_t]).astype(np.int64)
        frac = np.where(restart, 0.0, fraction[p_s, p_t]).astype(np.float64)
        series = cat.is_series[p_t]
        first_episode = ep.copy()
        binge = rng.geometric(1 - np.asarray(b.binge_continue)[dev[p_s]])
        budget = np.where(series, np.minimum(binge, MAX_BINGE), 1)
        fit = match[p_s, p_t]
        finish_p = _sigmoid(b.complete_bias + b.complete_match * fit + b.complete_runtime * cat.runtime_z[p_t]
                            + np.asarray(b.complete_device)[dev[p_s]])
        runtime_ms = cat.runtime[p_t] * 60_000.0
        cursor = np.zeros(n)  # ms since the play started
        alive = np.ones(n, bool)
        any_done = np.zeros(n, bool)
        finished = np.zeros(n, bool)
        later = _EventColumns()  # (play index in `member`, offset from play start in `ts`)
        for step in range(MAX_BINGE):
            i = np.flatnonzero(alive)
            if not i.size:
                break
            done = rng.random(i.size) < finish_p[i]
            f0 = frac[i]
            end = np.where(done, 1.0, f0 + (1 - f0) * rng.uniform(0.05, 0.9, i.size))
            payload = np.where(series[i], np.minimum(ep[i], _EPISODE_PAYLOADS - 1), -1)
            for quarter in (0.25, 0.5, 0.75):
                hit = (f0 < quarter) & (quarter < end)
                later.add(int(hit.sum()), member=i[hit], type=_TYPE["progress"],
                          ts=cursor[i[hit]] + (quarter - f0[hit]) * runtime_ms[i[hit]],
                          value=quarter, payload=payload[hit])
            stop = cursor[i] + (end - f0) * runtime_ms[i]
            later.add(i.size, member=i, type=_TYPE["progress"], ts=stop, value=end, payload=payload)
            later.add(int(done.sum()), member=i[done], type=_TYPE["completion"], ts=stop[done] + 1000,
                      value=1.0, payload=payload[done])
            cursor[i] = stop + 1000 * done
            ep[i] += done
            frac[i] = np.where(done, 0.0, end)
            any_done[i] |= done
            finished[i] |= ep[i] >= cat.episodes[p_t[i]]
            alive[i] = done & ~finished[i] & (step + 1 < budget[i])
            cursor[i] += np.where(alive[i], 15_000, 0)

        # Plays in one session run one after another.
        order = np.lexsort((p_rel, p_s))
        length = cursor[order] + 30_000
        began = np.empty(n)
        began[order] = p_rel[order] + _group_cumsum(length, p_s[order]) - length
        start = t0[p_s] + began.astype(np.int64)
        out.add(n, member=m[p_s], title=p_t, type=_TYPE["play"], ts=start, device=dev[p_s],
                row=p_row, position=p_pos, art=p_art,
                payload=np.where(series, np.minimum(first_episode, _EPISODE_PAYLOADS - 1), -1))
        watched = later.concat()
        j = watched["member"]
        out.add(j.size, member=m[p_s[j]], title=p_t[j], type=watched["type"],
                ts=start[j] + watched["ts"].astype(np.int64), device=dev[p_s[j]],
                value=watched["value"], payload=watched["payload"])

        thumb = np.flatnonzero(rng.random(n) < np.where(any_done, b.thumb_rate_completed, b.thumb_rate))
        up = rng.random(thumb.size) < _sigmoid(b.thumb_match * fit[thumb] - 0.5 + 0.8 * any_done[thumb])
        out.add(thumb.size, member=m[p_s[thumb]], title=p_t[thumb], type=_TYPE["thumb"],
                ts=start[thumb] + cursor[thumb].astype(np.int64) + 5000, device=dev[p_s[thumb]],
                value=np.where(up, 1.0, -1.0))
        drop = np.flatnonzero(listed[p_s, p_t] & finished & (rng.random(n) < b.list_remove_on_finish))
        listed[p_s[drop], p_t[drop]] = False
        out.add(drop.size, member=m[p_s[drop]], title=p_t[drop], type=_TYPE["my_list_remove"],
                ts=start[drop] + cursor[drop].astype(np.int64) + 8000, device=dev[p_s[drop]])

        keep = ~restart
        episodes_done[p_s[keep], p_t[keep]] = ep[keep]
        fraction[p_s[keep], p_t[keep]] = frac[keep]

    # -- Arrow ----------------------------------------------------------------------------------

    def _table(self, c: dict[str, np.ndarray], seq0: int) -> pa.Table:
        n = c["ts"].size
        seq = pa.array(np.arange(seq0, seq0 + n, dtype=np.int64))
        title = c["title"]

        def coded(codes: np.ndarray, dictionary: pa.Array) -> pa.Array:
            indices = pa.array(codes.astype(np.int32), pa.int32(), mask=codes < 0)
            return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())

        art = c["art"]
        columns = {
            "event_id": pc.binary_join_element_wise(f"w{self.seed}-", pc.cast(seq, pa.string()), ""),
            "member_id": pa.array(c["member"] + 1, pa.int64()),
            "title_id": pa.array(title + 1, pa.int64(), mask=title < 0),
            "type": coded(c["type"], pa.array(EVENT_TYPES)),
            "timestamp": pa.array(c["ts"], pa.int64()).cast(TIMESTAMP),
            "country": coded(self.members.country[c["member"]], pa.array(COUNTRIES)),
            "device": coded(c["device"], pa.array(DEVICES)),
            "row": coded(c["row"], pa.array(ROW_NAMES)),
            "position": pa.array(c["position"], pa.int32(), mask=c["position"] < 0),
            "artwork": self.artwork_ids.take(pa.array(art, pa.int64(), mask=art < 0)),
            "propensity": pa.array(c["propensity"], pa.float64(), mask=np.isnan(c["propensity"])),
            "value": pa.array(c["value"], pa.float64(), mask=np.isnan(c["value"])),
            "experiments": pa.nulls(n, pa.string()),
            "payload": coded(c["payload"], self.payloads),
            "seq": seq,
        }
        arrays = [columns[f.name] for f in STORED_EVENT_SCHEMA]
        return pa.Table.from_arrays(arrays, schema=STORED_EVENT_SCHEMA)


def _calibrate(sim: _Simulator, target: int) -> float:
    """Activity scale so the world has about `target` events: a pilot run on a sample of members
    measures events per expected session at a first-guess scale."""
    base = sim.expected_sessions()
    if base <= 0:
        return 1.0
    guess = target / (15.0 * base)
    sim.activity_scale = guess
    per_member = base * guess / sim.members.n
    k = int(min(sim.members.n, max(200, np.ceil(4000 / max(per_member, 1e-9)))))
    subset = np.sort(np.random.default_rng([sim.seed, 4]).choice(sim.members.n, k, replace=False))
    pilot_events = sum(c["ts"].size for c in sim.day_columns(subset, stream=5))
    pilot_sessions = sim.expected_sessions(subset)
    if pilot_events == 0 or pilot_sessions <= 0:
        return guess
    return target / (pilot_events / pilot_sessions * base)


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
    parser.add_argument("--members", type=_positive, default=2000, help="number of members (default 2000)")
    parser.add_argument("--titles", type=_positive, default=1500,
                        help="number of titles; each season counts (default 1500)")
    parser.add_argument("--days", type=_positive, default=30, help="days to simulate (default 30)")
    parser.add_argument("--seed", type=int, default=7, help="random seed; same seed, same bytes (default 7)")
    parser.add_argument("--start", default="2026-01-01",
                        help="first simulated day, ISO date (default 2026-01-01)")
    parser.add_argument("--events-target", type=_positive, default=None,
                        help="scale members' activity to produce about this many events in total")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: $MARQUEE_HOME/world)")
    parser.add_argument("--quiet", action="store_true", help="no per-day progress on stderr")


def cli_main(args: argparse.Namespace) -> int:
    from marquee.config import Paths

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
