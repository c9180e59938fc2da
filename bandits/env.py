"""A gymnasium environment for artwork choice, on the synthetic world's own members, catalog and
behaviour model.

The world is the real one at a small size: `build_catalog`, `build_members` and `Simulator` run
from a `WorldSettings` exactly as `generate_world` runs them (same seeds per stream), and the
simulator's days (under its uniformly random artwork) are the members' observable past. From
those events each member's history is counted as a feature store would: plays per genre,
impressions and plays per artwork theme. Then, per step, one impression:

  * a session of the world's traffic (`Simulator._sessions` for a day after the past: who, with
    which device, at which hour; sessions in time order);
  * a title the member has not played, drawn like a title of the world's own "top picks" row
    (its row coefficients, Gumbel top-1 among titles available, released and within maturity),
    at a uniformly random position of one of the first rows;
  * the arms are the title's artwork variants; the click (play) probability of each is the
    world's play model with the real `Behaviour` coefficients, including `play_theme` x the
    member's hidden theme affinity for the arm's theme - the one term that differs between arms.

The observation is the context of bandits.context (what the policy may see), padded to the
catalog's widest title with a mask; the action is the arm index; the reward is 1 for a play. The
true probabilities ride in `info` (for the oracle and regret only). One step is one episode.

The history is live (`MemberHistory`), as it is in serving, where the learner publishes the
members' theme counts with every version and member state follows their plays: each impression
shown and each play it earns is added to the member's counts (`observe`), so a member's context
carries what the policy showed them and what they did. What is drawn (who, which title, where)
never depends on the history, so every policy on a seed still meets the same impressions.
`reset(seed=s)` restores the session stream and the past's history, so identical seeds give
identical episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from bandits.context import (
    FEATURE_BOUND,
    FEATURE_DIM,
    N_GENRES,
    N_THEMES,
    member_vectors,
    page_features,
)
from producers.world.behaviour import (
    DEFAULT_BEHAVIOUR,
    MAX_POSITIONS,
    MAX_ROWS,
    ROW_COEFFS,
    ROW_TOP,
    Behaviour,
    play_logit,
)
from producers.world.catalog import build_catalog
from producers.world.event_columns import TYPE_CODE
from producers.world.generate import WorldSettings
from producers.world.members import build_members
from producers.world.sampling import gumbel, sigmoid
from producers.world.simulator import Simulator
from producers.world.vocabulary import genre_vectors

DEFAULT_WORLD = WorldSettings(members=1000, titles=500, days=30)  # days = the observable past


@dataclass
class Impressions:
    """n impressions: who, what, where, the policy's view (features, mask, arm_class) and the
    truth (probabilities per arm, 0 on padding; the logit they share before the theme term)."""

    member: np.ndarray
    title: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    features: np.ndarray  # (n, max_arms, FEATURE_DIM)
    mask: np.ndarray  # (n, max_arms)
    arm_class: np.ndarray  # (n, max_arms) theme index, -1 on padding
    probabilities: np.ndarray  # (n, max_arms)
    base_logit: np.ndarray  # (n,) the play logit before the arm's theme term (truth, for the oracles)

    @property
    def best(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


@dataclass
class MemberHistory:
    """Per member, what a feature store counts from the log: plays per genre, homepage
    impressions and plays per artwork theme. `observe` adds impressions as they happen."""

    genre_plays: np.ndarray  # (members, N_GENRES)
    theme_impressions: np.ndarray  # (members, N_THEMES)
    theme_plays: np.ndarray  # (members, N_THEMES)

    def copy(self) -> "MemberHistory":
        return MemberHistory(self.genre_plays.copy(), self.theme_impressions.copy(), self.theme_plays.copy())

    def observe(self, shown: "Impressions", arm: np.ndarray, reward: np.ndarray, title_genres: np.ndarray) -> None:
        """Count each impression under its shown arm's theme, and its play if it earned one
        (a padded arm is never shown, so it counts nothing)."""
        arm = np.asarray(arm, np.int64)
        theme = shown.arm_class[np.arange(arm.size), arm]
        shown_ok = theme >= 0
        played = shown_ok & (np.asarray(reward) > 0)
        np.add.at(self.theme_impressions, (shown.member[shown_ok], theme[shown_ok]), 1.0)
        np.add.at(self.theme_plays, (shown.member[played], theme[played]), 1.0)
        np.add.at(self.genre_plays, shown.member[played], title_genres[shown.title[played]])


class SessionStream:
    """The world's sessions after the past, day by day, in time order, drawn from one Generator
    (which `ArtworkWorld.impressions` also draws titles and positions from): the same seed and
    the same sequence of batch sizes give the same impressions, whichever policy is choosing."""

    def __init__(self, world: ArtworkWorld, rng: np.random.Generator) -> None:
        self.world, self.rng = world, rng
        self.day = world.settings.days
        self._who = self._device = self._hour = np.empty(0, np.int64)

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        while self._who.size < n:
            who, t0, device, hour, _ = self.world.simulator._sessions(self.rng, self.day, self.world.everyone)
            order = np.argsort(t0, kind="stable")
            self._who = np.concatenate([self._who, who[order]])
            self._device = np.concatenate([self._device, device[order].astype(np.int64)])
            self._hour = np.concatenate([self._hour, hour[order].astype(np.int64)])
            self.day += 1
        out = self._who[:n], self._device[:n], self._hour[:n]
        self._who, self._device, self._hour = self._who[n:], self._device[n:], self._hour[n:]
        return out


class ArtworkWorld:
    """A small world, its simulated past counted into member histories, and impressions drawn
    from it (vectorised: the benchmark draws a batch at a time, the gym env one)."""

    def __init__(self, settings: WorldSettings = DEFAULT_WORLD, behaviour: Behaviour = DEFAULT_BEHAVIOUR) -> None:
        self.settings, self.behaviour = settings, behaviour
        seed, start, days = settings.seed, settings.start, settings.days
        genre_vecs = genre_vectors(seed)  # the streams generate_world_from uses
        self.catalog = cat = build_catalog(np.random.default_rng([seed, 1]), settings.titles, start, days, genre_vecs)
        self.members = mem = build_members(np.random.default_rng([seed, 2]), settings.members, start, days, genre_vecs)
        self.simulator = Simulator(cat, mem, behaviour, seed, start, days)
        self.everyone = np.arange(mem.n)
        self._count_history()
        self.past = MemberHistory(self.genre_plays, self.theme_impressions, self.theme_plays)

        self.max_arms = int(cat.art_count.max())
        slots = np.arange(self.max_arms)[None, :]
        arms = cat.art_offset[:, None] + np.minimum(slots, cat.art_count[:, None] - 1)
        self.arm_themes = np.where(slots < cat.art_count[:, None], cat.art_theme[arms], -1).astype(np.int64)
        self.title_genres = cat.genre_matrix.astype(np.float64)

        # The top-picks draw: the world's row logit for every (member, title), at the first day
        # after the past; titles the member played, or may not see, are out.
        b = behaviour
        age = days - (cat.release_day - self.simulator.start_day)
        self.recency = np.exp(-np.maximum(age, 0) / b.recency_days).astype(np.float32)
        self.pop_z = cat.pop_z[mem.country]  # (members, titles)
        estimate = mem.est_taste @ cat.vec.T
        coef = ROW_COEFFS[ROW_TOP]
        logit = coef[0] * estimate + coef[1] * self.pop_z + coef[2] * self.recency[None, :]
        eligible = cat.avail[mem.country] & (age >= 0)[None, :] & (cat.maturity[None, :] <= mem.maturity[:, None])
        allowed = eligible & ~self.played
        allowed = np.where(allowed.any(axis=1, keepdims=True), allowed, eligible)
        allowed = np.where(allowed.any(axis=1, keepdims=True), allowed, True)
        self.title_logit = np.where(allowed, logit, -np.inf).astype(np.float32)

    def _count_history(self) -> None:
        """Plays per genre and impressions / plays per artwork theme, per member, from the past."""
        cat, m = self.catalog, self.members.n
        self.genre_plays = np.zeros((m, N_GENRES))
        self.theme_impressions = np.zeros((m, N_THEMES))
        self.theme_plays = np.zeros((m, N_THEMES))
        self.played = np.zeros((m, cat.n), bool)
        for day in self.simulator.day_columns():
            member, title, art, kind = day["member"], day["title"], day["art"], day["type"]
            shown = kind == TYPE_CODE["impression"]
            play = kind == TYPE_CODE["play"]
            from_art = play & (art >= 0)
            np.add.at(self.theme_impressions, (member[shown], cat.art_theme[art[shown]]), 1.0)
            np.add.at(self.theme_plays, (member[from_art], cat.art_theme[art[from_art]]), 1.0)
            np.add.at(self.genre_plays, member[play], cat.genre_matrix[title[play]].astype(np.float64))
            self.played[member[play], title[play]] = True

    def stream(self, rng: np.random.Generator) -> SessionStream:
        return SessionStream(self, rng)

    def history(self) -> MemberHistory:
        """A fresh live history, starting from the simulated past."""
        return self.past.copy()

    def impressions(self, n: int, stream: SessionStream, history: MemberHistory | None = None) -> Impressions:
        """The next n impressions of the stream (its Generator draws titles and positions too),
        in the context of `history` (default: the simulated past alone)."""
        rng = stream.rng
        h = self.past if history is None else history
        who, device, hour = stream.take(n)
        title = np.argmax(self.title_logit[who] + gumbel(rng, (n, self.catalog.n)), axis=1)
        position = rng.integers(0, MAX_POSITIONS, n)
        row = rng.integers(0, MAX_ROWS, n)
        themes = self.arm_themes[title]
        mask = themes >= 0
        member_vec = member_vectors(h.genre_plays[who], h.theme_impressions[who], h.theme_plays[who], device, hour)
        features, _ = page_features(member_vec, themes, self.title_genres[title])
        m = self.members
        match = np.einsum("nd,nd->n", m.taste[who], self.catalog.vec[title])
        affinity = m.theme_affinity[who[:, None], np.maximum(themes, 0)]
        base = play_logit(self.behaviour, match, self.pop_z[who, title], self.recency[title], 0.0,
                          position, row, hour, device)  # common to the arms; the theme term per arm:
        probabilities = np.where(mask, sigmoid(base[:, None] + self.behaviour.play_theme * affinity), 0.0)
        return Impressions(who, title, device, hour, features, mask, themes, probabilities, base)


class ArtworkEnv(gym.Env):
    """One impression per episode: observe the title's arms in context, pick one, get a play or
    not. Observation: {"features": (max_arms, FEATURE_DIM), "mask": (max_arms,) 0/1,
    "arm_class": (max_arms,) theme index or -1}. A padded arm is a legal action that never plays
    (info["valid_action"] False)."""

    metadata: ClassVar[dict] = {"render_modes": []}

    def __init__(self, settings: WorldSettings = DEFAULT_WORLD, behaviour: Behaviour = DEFAULT_BEHAVIOUR,
                 world: ArtworkWorld | None = None) -> None:
        self.world = world if world is not None else ArtworkWorld(settings, behaviour)
        width = self.world.max_arms
        self.observation_space = spaces.Dict({
            "features": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (width, FEATURE_DIM), np.float64),
            "mask": spaces.MultiBinary(width),
            "arm_class": spaces.Box(-1, N_THEMES - 1, (width,), np.int64),
        })
        self.action_space = spaces.Discrete(width)
        self._stream: SessionStream | None = None
        self._history: MemberHistory | None = None
        self._current: Impressions | None = None

    def _observe(self) -> tuple[dict, dict]:
        c = self._current
        obs = {"features": c.features[0].copy(), "mask": c.mask[0].astype(np.int8),
               "arm_class": c.arm_class[0].copy()}
        info = {"click_probabilities": c.probabilities[0].copy(), "best_arm": int(np.argmax(c.probabilities[0])),
                "member": int(c.member[0]), "title": int(c.title[0])}
        return obs, info

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or self._stream is None:
            self._stream = self.world.stream(self.np_random)
            self._history = self.world.history()
        self._current = self.world.impressions(1, self._stream, self._history)
        return self._observe()

    def step(self, action):
        if self._current is None:
            raise RuntimeError("step: call reset() first (every episode is one impression)")
        action = int(action)
        p = self._current.probabilities[0]
        valid = bool(self._current.mask[0, action])
        reward = float(valid and self.np_random.random() < p[action])
        self._history.observe(self._current, np.array([action]), np.array([reward]), self.world.title_genres)
        _, info = self._observe()
        info.update(valid_action=valid, regret=float(p.max() - p[action]))
        obs, _ = self._observe()
        self._current = None
        return obs, reward, True, False, info
