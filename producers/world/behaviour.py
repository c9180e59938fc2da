"""What the world rewards: the coefficients of its behaviour model and the shape of the
homepage its own (pre-Marquee) recommender shows.

Kept apart from the simulation so oracles and tests can read the model without the machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from producers.world.vocabulary import GENRES

MAX_ROWS = 5  # rows a member scrolls through in one session, at most
MAX_POSITIONS = 10  # titles per row a member looks at, at most
MAX_BINGE = 5  # episodes watched back to back, at most

# Rows of the homepage the world's (pre-Marquee) recommender logs impressions in.
ROW_CW, ROW_TOP, ROW_POP, ROW_TREND, ROW_NEW, ROW_SEARCH, ROW_GENRE0 = range(7)
ROW_NAMES: tuple[str, ...] = (
    "continue_watching", "top_picks", "popular", "trending", "new_releases", "search",
) + tuple(f"genre:{g.lower()}" for g in GENRES)

# Session start hour (UTC; the world keeps one clock): quiet small hours, busy evenings.
HOUR_WEIGHTS = np.array([
    0.60, 0.35, 0.20, 0.12, 0.10, 0.12, 0.25, 0.45, 0.55, 0.55, 0.60, 0.70,
    0.85, 0.80, 0.75, 0.80, 0.95, 1.20, 1.60, 2.00, 2.30, 2.20, 1.70, 1.10,
])
HOUR_P = HOUR_WEIGHTS / HOUR_WEIGHTS.sum()


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
EVENING_FROM = 18  # the evening term's hours: 18:00-23:59
SMALL_HOURS = (1, 6)  # the small-hours term's: 01:00-06:59


def play_logit(b: Behaviour, match, pop_z, recency, theme_affinity, position, row, hour, device,
               in_progress=0.0, completed=0.0, listed=0.0) -> np.ndarray:
    """The world's play logit of an impression (one definition: the simulator draws plays with
    it, the artwork bandit's environment and oracles read it)."""
    hour = np.asarray(hour)
    return (b.play_bias + b.play_match * match + b.play_popularity * pop_z + b.play_recency * recency
            + b.play_theme * theme_affinity + b.play_position * position + b.play_row * row
            + b.play_continue * in_progress + b.play_completed * completed + b.play_listed * listed
            + np.where(hour >= EVENING_FROM, b.play_evening, 0.0)
            + np.where((hour >= SMALL_HOURS[0]) & (hour <= SMALL_HOURS[1]), b.play_small_hours, 0.0)
            + np.asarray(b.play_device)[device])

# Row plan coefficients: (estimated match, popularity, recency, already completed) per row kind
# CW, TOP, POP, TREND, NEW, SEARCH, GENRE. The world's recommender knows tastes only roughly.
ROW_COEFFS = np.array([
    [0.0, 0.0, 0.0, 0.0],
    [2.5, 0.5, 0.0, -3.0],
    [0.0, 1.3, 0.0, -1.0],
    [0.0, 0.6, 2.5, -1.0],
    [0.3, 0.3, 3.0, -1.0],
    [0.0, 0.0, 0.0, 0.0],
    [1.0, 0.9, 0.0, -2.0],
], dtype=np.float32)
NEW_RELEASE_DAYS = 120
