"""The context vector a member and a title bring to the artwork choice, as plain numpy.

Everything here is observable: what a feature store computes from the event log (the member's
plays per genre, impressions and plays per artwork theme), the request (device, hour) and the
catalog (the title's genres, each artwork's theme). The world's ground truth (a member's hidden
theme affinity, taste vectors) never enters: a policy has to find the theme effect from history.

Layout of one (title, arm) row, in this order (`FEATURE_NAMES` spells every column):

  bias                      1
  member  genre_share       plays per genre / all plays (a title counts for each of its genres)
          theme_share       homepage plays per artwork theme shown / all such plays
          theme_lift        log(play rate under theme k / the member's overall play rate),
                            smoothed: share alone is confounded by which themes the member was
                            shown, lift divides the exposure out
          device            one-hot over DEVICES
          hour              evening (18-23), small hours (1-6), sin and cos of the hour
  title   genres            the title's genre row
  arm     theme             one-hot over ARTWORK_THEMES
          share x theme     theme_share placed in the arm's theme column (member history x arm)
          lift x theme      theme_lift likewise
          own share, lift   the two scalars above summed: one weight for "members play the themes
                            they played before", shared by every theme (what transfers in a model
                            shared across themes)
"""

from __future__ import annotations

import numpy as np

from marquee.schema import ARTWORK_THEMES, DEVICES
from producers.world.behaviour import EVENING_FROM, SMALL_HOURS  # the hours the behaviour model's terms name
from producers.world.vocabulary import GENRES

N_THEMES = len(ARTWORK_THEMES)
N_GENRES = len(GENRES)
N_DEVICES = len(DEVICES)
LIFT_PRIOR_IMPRESSIONS = 5.0  # pseudo-impressions at the member's own rate behind each theme's rate
FEATURE_BOUND = 5.0  # every feature lies in [-5, 5]: lift is clipped there (a 150x rate ratio)

_MEMBER_BLOCKS = (("genre_share", GENRES), ("theme_share", ARTWORK_THEMES),
                  ("theme_lift", ARTWORK_THEMES), ("device", DEVICES),
                  ("hour", ("evening", "small_hours", "sin", "cos")))
_ARM_BLOCKS = (("theme", ARTWORK_THEMES), ("share_x_theme", ARTWORK_THEMES),
               ("lift_x_theme", ARTWORK_THEMES), ("own", ("share", "lift")))
MEMBER_NAMES: tuple[str, ...] = tuple(f"{b}:{v}" for b, values in _MEMBER_BLOCKS for v in values)
MEMBER_DIM = len(MEMBER_NAMES)
FEATURE_NAMES: tuple[str, ...] = (
    ("bias",) + MEMBER_NAMES + tuple(f"title_genre:{g}" for g in GENRES)
    + tuple(f"{b}:{v}" for b, values in _ARM_BLOCKS for v in values))
FEATURE_DIM = len(FEATURE_NAMES)

# Column offsets inside a member vector and a feature row.
_SHARE = N_GENRES
_LIFT = _SHARE + N_THEMES
_DEVICE = _LIFT + N_THEMES
_HOUR = _DEVICE + N_DEVICES
_TITLE = 1 + MEMBER_DIM
_ARM = _TITLE + N_GENRES


def theme_history(impressions: np.ndarray, plays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share, lift) per theme from counts (..., themes) of impressions and of plays from them.
    A member without history gets zeros (no preference), not NaN."""
    impressions = np.asarray(impressions, np.float64)
    plays = np.asarray(plays, np.float64)
    total_plays = plays.sum(axis=-1, keepdims=True)
    share = plays / np.maximum(total_plays, 1.0)
    rate = (total_plays + 0.5) / (impressions.sum(axis=-1, keepdims=True) + 1.0)
    theme_rate = (plays + LIFT_PRIOR_IMPRESSIONS * rate) / (impressions + LIFT_PRIOR_IMPRESSIONS)
    return share, np.clip(np.log(theme_rate / rate), -FEATURE_BOUND, FEATURE_BOUND)


def genre_share(genre_plays: np.ndarray) -> np.ndarray:
    """Plays per genre (..., genres) as shares of the member's genre-weighted plays."""
    genre_plays = np.asarray(genre_plays, np.float64)
    return genre_plays / np.maximum(genre_plays.sum(axis=-1, keepdims=True), 1.0)


def member_vectors(genre_plays: np.ndarray, theme_impressions: np.ndarray, theme_plays: np.ndarray,
                   device: np.ndarray | int, hour: np.ndarray | int) -> np.ndarray:
    """Member vectors (n, MEMBER_DIM) (or one, (MEMBER_DIM,), for scalar device and hour) from
    history counts and the request's device index and UTC hour."""
    device, hour = np.asarray(device), np.asarray(hour)
    single = device.ndim == 0 and hour.ndim == 0 and np.ndim(genre_plays) == 1
    genre_plays = np.atleast_2d(genre_plays)
    n = max(genre_plays.shape[0], device.size, hour.size)
    if np.any((device < 0) | (device >= N_DEVICES)):
        raise ValueError(f"device: expected indices in [0, {N_DEVICES}), got {device}")
    if np.any((hour < 0) | (hour > 23)):
        raise ValueError(f"hour: expected hours in [0, 23], got {hour}")
    share, lift = theme_history(np.atleast_2d(theme_impressions), np.atleast_2d(theme_plays))
    out = np.zeros((n, MEMBER_DIM))
    out[:, :_SHARE] = genre_share(genre_plays)
    out[:, _SHARE:_LIFT] = share
    out[:, _LIFT:_DEVICE] = lift
    out[np.arange(n), _DEVICE + np.broadcast_to(device, (n,))] = 1.0
    hour = np.broadcast_to(hour, (n,)).astype(np.float64)
    out[:, _HOUR] = hour >= EVENING_FROM
    out[:, _HOUR + 1] = (hour >= SMALL_HOURS[0]) & (hour <= SMALL_HOURS[1])
    out[:, _HOUR + 2] = np.sin(2 * np.pi * hour / 24)
    out[:, _HOUR + 3] = np.cos(2 * np.pi * hour / 24)
    return out[0] if single else out


def page_features(member: np.ndarray, arm_themes: np.ndarray, title_genres: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The per-(title, arm) feature matrix of a page: (n_titles, max_arms, FEATURE_DIM) and the
    arm mask (n_titles, max_arms).

    member: one member vector (MEMBER_DIM,) for a whole page, or one per title (n, MEMBER_DIM)
    (a batch of impressions of different members); arm_themes: (n, max_arms) theme index per
    arm, -1 for padding; title_genres: (n, N_GENRES) 0/1. Padded rows are all zero.
    """
    arm_themes = np.asarray(arm_themes)
    if arm_themes.ndim != 2:
        raise ValueError(f"arm_themes: expected (titles, max_arms), got shape {arm_themes.shape}")
    n, width = arm_themes.shape
    member = np.asarray(member, np.float64)
    if member.shape[-1] != MEMBER_DIM or member.ndim not in (1, 2) or (member.ndim == 2 and member.shape[0] != n):
        raise ValueError(f"member: expected ({MEMBER_DIM},) or ({n}, {MEMBER_DIM}), got shape {member.shape}")
    title_genres = np.asarray(title_genres, np.float64)
    if title_genres.shape != (n, N_GENRES):
        raise ValueError(f"title_genres: expected ({n}, {N_GENRES}), got shape {title_genres.shape}")
    mask = arm_themes >= 0
    if np.any(arm_themes >= N_THEMES):
        raise ValueError(f"arm_themes: expected theme indices < {N_THEMES}, got {arm_themes.max()}")
    member = np.broadcast_to(member, (n, MEMBER_DIM))
    out = np.zeros((n, width, FEATURE_DIM))
    out[:, :, 0] = 1.0
    out[:, :, 1:_TITLE] = member[:, None, :]
    out[:, :, _TITLE:_ARM] = title_genres[:, None, :]
    rows, arms = np.nonzero(mask)
    theme = arm_themes[rows, arms]
    own_share = member[rows, _SHARE + theme]
    own_lift = member[rows, _LIFT + theme]
    out[rows, arms, _ARM + theme] = 1.0
    out[rows, arms, _ARM + N_THEMES + theme] = own_share
    out[rows, arms, _ARM + 2 * N_THEMES + theme] = own_lift
    out[rows, arms, _ARM + 3 * N_THEMES] = own_share
    out[rows, arms, _ARM + 3 * N_THEMES + 1] = own_lift
    out[~mask] = 0.0
    return out, mask
