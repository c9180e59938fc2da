"""Vocabularies of the synthetic world: genres, artwork themes per genre, countries, languages,
devices, and the latent space tastes and titles share.

Catalog, members and simulator all draw from these, so they live apart from any one of them.
"""

from __future__ import annotations

import numpy as np

from marquee.schema import ARTWORK_THEMES
from producers.world.sampling import unit

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


def genre_vectors(seed: int) -> np.ndarray:
    """One latent direction per genre, shared by titles and tastes (so genres carry signal)."""
    return unit(np.random.default_rng([seed, 0]).standard_normal((len(GENRES), LATENT_DIM)))


def genre_theme_matrix() -> np.ndarray:
    return np.array([[t in GENRE_THEMES[g] for t in ARTWORK_THEMES] for g in GENRES], dtype=np.float64)
