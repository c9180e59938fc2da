"""Artwork selection: one artwork per title of a page, chosen by a contextual bandit in one call.

The policies live in bandits/policies.py (uniform, epsilon-greedy, LinUCB, linear Thompson
sampling, Bernoulli Thompson sampling). Serving builds the context of the whole page
(bandits/context.py: the member's genre and artwork-theme history, device, hour; each title's
genres; each artwork's theme) and asks the policy once; every title gets its arm, the propensity
it was chosen with and the policy version. The page's decision record (deployments/decisions.py)
keeps those, so rewards are joined to what the server decided, not to what a client reports.

What a replica serves from (`BanditServing`, one per replica, kept across reconfigures): the
catalog's arms (artwork ids and themes, title genre rows), the newest learned state of each policy
and the members' theme counts the nearline learner published (bandits/store.py), or a fresh
policy while none is published. Which policy and how much it explores are hot values of the
pipeline config (ArtworkConfig): an experiment can vary them per member, so a stage never
mutates a shared policy; it keeps its own copy built from the shared state with its parameters.
Choices are seeded by (seed, request id): one request always shows the same artwork.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from bandits.arms import ArmTable
from bandits.context import (
    FEATURE_DIM,
    N_GENRES,
    N_THEMES,
    member_vectors,
    page_features,
)
from bandits.policies import POLICIES, PageContext, Policy, make_policy
from bandits.store import PolicyStore
from deployments.catalog import ServingCatalog
from deployments.contracts import HomepageContext
from deployments.follower import Follower
from marquee.schema import DEVICES

log = logging.getLogger("marquee.artwork")
MemberCounts = Callable[[int], "tuple[np.ndarray, np.ndarray] | None"]  # member -> (impressions, plays) per theme
HOUR_MS = 3_600_000


class BanditServing:
    """What every artwork stage of a replica reads: the arm table and the learned states."""

    def __init__(self, catalog: ServingCatalog, member_counts: MemberCounts | None = None):
        # the policies' small matrix products: threaded BLAS on a replica's fraction of a CPU made
        # them ~40x slower (bench bandit), and a replica serves pages concurrently anyway
        threadpool_limits(1, user_api="blas")
        self.catalog = catalog
        self.arms = ArmTable.build(catalog.artwork, catalog.artwork_theme,
                                   {t: info.genres for t, info in catalog.titles.items()})
        self._states: dict[str, dict] = {}  # policy name -> newest learned state (to_state form)
        self._member_counts = member_counts or (lambda member_id: None)
        self._lock = threading.Lock()
        self._store: PolicyStore | None = None
        self._follower: Follower | None = None
        self.loaded_version: int | None = None  # the store version served (None: a fresh policy)
        self.last_error: str | None = None

    def follow(self, store: PolicyStore, poll_s: float = 2.0) -> "BanditServing":
        """Load the store's newest version now (best effort), then keep following it on a daemon
        thread: the learner's new parameters reach this replica without a restart."""
        self._store = store
        self.refresh()
        if self._follower is None:
            self._follower = Follower(self.refresh, poll_s, "bandit-watch")
            self._follower.start()
        return self

    def refresh(self) -> bool:
        """Load the newest published version if it is not the one served; True if it changed.
        A version pruned or half-readable just now is retried at the next poll."""
        store = self._store
        if store is None:
            return False
        try:
            version = store.latest_version()
            if version is None or version == self.loaded_version:
                return False
            published = store.load(version)
        except Exception as exc:  # keep serving what is loaded
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("artwork policy version not loaded: %s", self.last_error)
            return False
        self.publish(published.policy.to_state(), published.member_counts.lookup
                     if published.member_counts is not None else None)
        self.loaded_version, self.last_error = version, None
        return True

    def stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()

    def publish(self, state: dict, member_counts: MemberCounts | None = None) -> None:
        """A newer learned state of one policy (and the members' theme counts behind it)."""
        with self._lock:
            self._states[state["policy"]] = state
            if member_counts is not None:
                self._member_counts = member_counts

    def state(self, name: str) -> dict | None:
        return self._states.get(name)

    def member_vector(self, ctx: HomepageContext) -> np.ndarray:
        """The member's context: genre plays from the live history, theme counts as published."""
        genre_plays = np.zeros(N_GENRES)
        rows = [self.arms.row_of[t] for t in ctx.recently_watched if t in self.arms.row_of]
        if rows:
            genre_plays = self.arms.genres[rows].sum(axis=0)
        counts = self._member_counts(ctx.member_id)
        impressions, plays = counts if counts is not None else (np.zeros(N_THEMES), np.zeros(N_THEMES))
        hour = (ctx.now_ms // HOUR_MS) % 24
        return member_vectors(genre_plays, impressions, plays, DEVICES.index(ctx.device), int(hour))


@dataclass(frozen=True)
class PageArtwork:
    """A page's artwork decision: per title (artwork id or None, propensity), and what made it."""

    choices: dict[int, tuple[str | None, float]]
    policy: str
    version: int
    context: dict = field(default_factory=dict)  # {"hour", "device", "member": [...]}: the learner rebuilds x


class ArtworkStage:
    """One config's artwork choice: its policy (name and exploration) over the shared state."""

    def __init__(self, serving: BanditServing, policy: str, params: dict, seed: int):
        if policy not in POLICIES:
            raise ValueError(f"artwork.policy: unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        make_policy(policy, FEATURE_DIM, n_classes=N_THEMES, **params)  # refuses a bad parameter now
        self.serving, self.name, self.params, self.seed = serving, policy, dict(params), seed
        self._policy: Policy | None = None
        self._state: dict | None = None

    def policy(self) -> Policy:
        """This stage's copy of the newest learned state (rebuilt when a newer one is published)."""
        state = self.serving.state(self.name)
        if self._policy is None or state is not self._state:
            if state is None:
                self._policy = make_policy(self.name, FEATURE_DIM, n_classes=N_THEMES, **self.params)
            else:
                self._policy = POLICIES[self.name].from_state({**state, **self.params})
            self._state = state
        return self._policy

    def choose(self, ctx: HomepageContext, title_ids: Sequence[int]) -> PageArtwork:
        arms = self.serving.arms
        policy = self.policy()
        shown = [t for t in title_ids if t in arms.row_of]
        choices: dict[int, tuple[str | None, float]] = {t: (None, 1.0) for t in title_ids}
        member = self.serving.member_vector(ctx)
        if shown:
            rows = np.fromiter((arms.row_of[t] for t in shown), np.int64, len(shown))
            themes = arms.arm_themes[rows]
            features, mask = page_features(member, themes, arms.genres[rows])
            page = PageContext(features, mask, np.maximum(themes, 0))
            picked, propensities = policy.choose(page, self._rng(ctx.request_id))
            for t, row, arm, p in zip(shown, rows.tolist(), picked.tolist(), propensities.tolist()):
                choices[t] = (arms.arm_ids[row][arm], float(p))
        context = {"hour": int((ctx.now_ms // HOUR_MS) % 24), "device": ctx.device,
                   "member": [round(float(v), 6) for v in member]}
        return PageArtwork(choices, self.name, policy.version, context)

    def _rng(self, request_id: str) -> np.random.Generator:
        return np.random.default_rng(zlib.crc32(f"{self.seed}|{request_id}".encode()))
