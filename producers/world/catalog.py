"""The world's catalog: movies and seasons of shows with genres, maturity, runtimes, availability,
latent vectors, popularity and artwork variants.

Seasons of one show share most of what they are, so series behave like series downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa

from marquee.schema import ARTWORK_SCHEMA, ARTWORK_THEMES, MAX_MATURITY, TITLE_SCHEMA
from producers.world.sampling import unit, weighted_subset
from producers.world.vocabulary import (
    COUNTRIES,
    GENRE_WEIGHTS,
    GENRES,
    LATENT_DIM,
    TITLE_ORIGIN_WEIGHTS,
    genre_theme_matrix,
)

# Words generated title names are made of.
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


@dataclass
class Catalog:
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


def build_catalog(
    rng: np.random.Generator, n: int, start: date, days: int, genre_vecs: np.ndarray
) -> Catalog:
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
    extras = weighted_subset(rng, extra_p, extra_k)
    unit_genres = np.zeros((units, len(GENRES)), dtype=bool)
    unit_genres[np.arange(units), primary] = True
    for col in range(extras.shape[1]):
        ok = extras[:, col] >= 0
        unit_genres[np.flatnonzero(ok), extras[ok, col]] = True
    mix = genre_vecs[primary] + 0.6 * (unit_genres.astype(np.float32) @ genre_vecs - genre_vecs[primary])
    unit_vec = unit(mix + 0.6 * rng.standard_normal((units, LATENT_DIM)) / np.sqrt(LATENT_DIM))

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
    vec = unit(unit_vec[u] + season_drift * is_series[:, None])
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

    theme_w = 0.3 + genre_matrix.astype(np.float64) @ genre_theme_matrix()
    art_count = rng.integers(3, 7, u.size)
    art_pick = weighted_subset(rng, theme_w, art_count)
    art_theme = art_pick[art_pick >= 0].astype(np.int8)  # row-major: title by title
    art_offset = np.cumsum(art_count) - art_count

    query = []
    for name in names:
        base = name.split(":")[0].lower()
        base = base[4:] if base.startswith("the ") else base
        query.append(base[: max(3, int(rng.integers(4, 14)))])

    return Catalog(
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
