"""The world's members: country, language, devices, maturity profile, a hidden taste vector shaped
by favourite genres, affinity for artwork themes, activity and join date.

The hidden taste is the ground truth models are judged against; `est_taste` is the rougher
belief the world's own recommender acts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import pyarrow as pa

from marquee.schema import ARTWORK_THEMES, DEVICES, MEMBER_SCHEMA
from producers.world.sampling import unit, weighted_subset
from producers.world.vocabulary import (
    COUNTRIES,
    COUNTRY_WEIGHTS,
    DEVICE_WEIGHTS,
    GENRE_WEIGHTS,
    GENRES,
    KIDS_GENRES,
    LANGUAGES,
    LATENT_DIM,
    genre_theme_matrix,
)


@dataclass
class Members:
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


FAVORITE_WEIGHTS = (1.0, 0.7, 0.5)  # a member's first, second and third favourite genre
THEME_LEAN = 0.6  # how strongly the favourite genres' themes tilt the theme affinity
PERSONAL_THEME_SD = 0.5  # the rest of the theme affinity: each member's own, unrelated to genres


def theme_lean(favorites: np.ndarray) -> np.ndarray:
    """The part of each member's artwork-theme affinity their favourite genres explain (centred
    per member); the rest is personal noise of sd PERSONAL_THEME_SD. One definition, for the
    world and for the bandit benchmark's oracles, which are told this part and must learn the rest."""
    fav_weight = np.where(favorites >= 0, np.array(FAVORITE_WEIGHTS)[None, :], 0.0)
    liked = np.einsum("nk,nkt->nt", fav_weight, genre_theme_matrix()[np.maximum(favorites, 0)])
    liked = liked / fav_weight.sum(axis=1, keepdims=True)
    return THEME_LEAN * (liked - liked.mean(axis=1, keepdims=True))


def build_members(
    rng: np.random.Generator, n: int, start: date, days: int, genre_vecs: np.ndarray
) -> Members:
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
    devices = weighted_subset(rng, np.tile(DEVICE_WEIGHTS, (n, 1)), device_count)
    devices = np.pad(devices, ((0, 0), (0, 3 - devices.shape[1])), constant_values=-1)

    genre_p = np.array(list(GENRE_WEIGHTS.values()))
    kids_p = np.array([genre_p[i] if g in KIDS_GENRES else 0.0 for i, g in enumerate(GENRES)])
    weights = np.where(kids[:, None], kids_p[None, :] + 1e-12, genre_p[None, :])
    favorite_count = 1 + rng.binomial(2, 0.5, n)
    favorites = weighted_subset(rng, weights, favorite_count)
    favorites = np.pad(favorites, ((0, 0), (0, 3 - favorites.shape[1])), constant_values=-1)

    fav_weight = np.where(favorites >= 0, np.array(FAVORITE_WEIGHTS)[None, :], 0.0)
    mix = np.einsum("nk,nkd->nd", fav_weight, genre_vecs[np.maximum(favorites, 0)])
    taste = unit(mix + 0.6 * rng.standard_normal((n, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    est_taste = unit(taste + 0.9 * rng.standard_normal((n, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    personal = PERSONAL_THEME_SD * rng.standard_normal((n, len(ARTWORK_THEMES)))
    theme_affinity = personal + theme_lean(favorites)

    return Members(
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
