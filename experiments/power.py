"""How many members interleaving needs to find a known-better ranker, against an A/B test.

A seeded, in-process study on a simulated population of the synthetic world (producers/world):
its catalog, its members with hidden tastes, and its behaviour model (`play_logit`) deciding
which impressions are played. One homepage row of `k` titles is under test:

- ranker A ("popularity"): the member's country's popularity order, pop_z (plus
  `a_match_weight` x the estimated match below; 0 by default);
- ranker B ("popularity+estimated_match"): pop_z plus `b_match_weight` (0.5) x the match the
  world's own recommender estimates (est_taste . title vector; est_taste is the member's hidden
  taste plus noise, `producers/world/members.py`).

Why B is known better: the world's play logit rises by `play_match` = 3.0 per unit of true match
and by only `play_popularity` = 0.45 per standard deviation of popularity, and the estimated match
correlates with the true one; so B's rows hold titles of higher true match and, by the world's own
model, more plays. The study reports the rows' mean true match (an oracle the rankers never see)
and the measured plays per session of each ranker to show it.

Three arms on one population (common random numbers: the same sessions, hours, devices, looks and
uniform draws, so the estimated differences are sharp): every member sees ranker A's row in every
session, or B's, or team_draft(A, B). A member's sessions over `days` are Poisson(activity x
active days); each session looks at 2 + Poisson(positions_seen[device]) positions of the row (the
world's position effect: later slots are seen less and logit -0.08 per slot), each seen title is
played with probability sigmoid(play_logit), at most `max_plays_per_session` per session; a played
title leaves both rankers' candidates for later sessions (rankers do not re-recommend watched
titles). Members with no session in the window are never exposed and are in neither design.

Then ab_members (both arms, Welch at alpha, power) comes from `sample_size_two_means` with the
measured difference in plays per member and the arms' pooled SD; interleaving_members from the
one-sample t test of the per-member preference (members with a credited play) divided by the share
of exposed members with one, because an experiment enrols (and pays for) every exposed member.
Both counts are then checked by simulation: `replications` fresh populations at exactly those sizes
(fresh seeds), tested the way the experiment would be, and the share that finds B better is the
empirical power (near `power` when the sizes are right).

Simplifications, stated: the row is the page's first row (row = 0) and the only one simulated;
titles released during the window are not candidates; recency is evaluated at mid-window; the
world's weekday factors (mean ~1.04) and in-progress / list terms are left out.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from datetime import date

import numpy as np
from scipy import optimize, special, stats

from experiments.interleaving import Wins, preference, seed_of, team_draft
from experiments.stats import sample_size_two_means, welch_from_moments
from marquee.schema import MAX_MATURITY
from marquee.settings import assign, check_int, check_number, fail
from producers.world.behaviour import DEFAULT_BEHAVIOUR, HOUR_P, Behaviour, play_logit
from producers.world.catalog import Catalog, build_catalog
from producers.world.members import Members, build_members
from producers.world.sampling import sigmoid
from producers.world.vocabulary import genre_vectors

WORLD_START = date(2026, 1, 1)
ROW = 0  # the row under test is the page's first
CHUNK = 2048  # members simulated at once (memory: a few (CHUNK x pool) arrays, ~30 MB at most)
PRIMARY_DEVICE_SHARE = 0.6  # as in the world's simulator: most sessions on the primary device
# Streams of the seed: one per population, so the fresh populations never reuse a draw.
STREAM_ESTIMATE, STREAM_AB_A, STREAM_AB_B, STREAM_INTERLEAVED = 10, 11, 12, 13


@dataclass(frozen=True)
class StudySettings:
    """The study's size and seeds (validated here; recorded in the result's settings)."""

    members: int = 20_000  # simulated to estimate the effects and SDs (each sees all three arms)
    days: int = 14
    k: int = 10  # titles in the row
    seed: int = 0
    world_seed: int = 7  # the world's catalog (7 is the world's default)
    titles: int = 1500
    pool: int = 200  # candidates per member: the most popular eligible titles in their country
    a_match_weight: float = 0.0
    b_match_weight: float = 0.5
    replications: int = 200  # fresh populations per design for the empirical power
    alpha: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        for name, low in (("members", 20), ("days", 1), ("k", 2), ("titles", 50), ("replications", 0)):
            assign(self, name, check_int(name, getattr(self, name), ge=low))
        for name in ("seed", "world_seed"):
            assign(self, name, check_int(name, getattr(self, name), ge=0))
        assign(self, "pool", check_int("pool", self.pool, ge=2 * self.k))
        if self.pool > self.titles:
            raise fail("pool", f"at most titles ({self.titles})", self.pool)
        for name in ("a_match_weight", "b_match_weight"):
            assign(self, name, float(check_number(name, getattr(self, name), ge=0)))
        for name in ("alpha", "power"):
            assign(self, name, float(check_number(name, getattr(self, name), gt=0, lt=1)))
        if self.power <= self.alpha:
            raise fail("power", f"more than alpha ({self.alpha})", self.power)


# --- one-sample power ----------------------------------------------------------------------------


def power_one_mean(n, effect: float, *, alpha: float = 0.05):
    """Power of the two-sided one-sample t test of H0 mean = 0 at standardized effect mean / sd.

    Under the alternative the statistic is noncentral t, df n - 1, noncentrality effect sqrt(n)
    (the same as statsmodels' TTestPower); vectorised over n.
    """
    n = np.asarray(n, dtype=float)
    df = n - 1
    noncentrality = effect * np.sqrt(n)
    critical = stats.t.isf(alpha / 2, df)
    return special.nctdtr(df, noncentrality, -critical) + (1 - special.nctdtr(df, noncentrality, critical))


def sample_size_one_mean(mean: float, sd: float, *, alpha: float = 0.05, power: float = 0.8) -> int:
    """The fewest members for a one-sample t test to find a mean `mean` (SD `sd`) with `power`.

    About ((z_{1-alpha/2} + z_power) sd / mean)^2, i.e. 7.85 (sd / mean)^2 at 80% and 0.05; the
    exact noncentral-t solution is a member or two more. Never under 2.
    """
    mean = float(check_number("mean", mean))
    if mean == 0:
        raise fail("mean", "a non-zero mean", mean)
    sd = float(check_number("sd", sd, gt=0))
    alpha = float(check_number("alpha", alpha, gt=0, lt=1))
    power = float(check_number("power", power, gt=alpha, lt=1))
    effect = abs(mean) / sd
    if power_one_mean(2, effect, alpha=alpha) >= power:
        return 2
    z = special.ndtri(1 - alpha / 2) + special.ndtri(power)
    upper = 2 * (z / effect) ** 2 + 20
    n = optimize.brentq(lambda x: power_one_mean(x, effect, alpha=alpha) - power, 2, upper, xtol=1e-7)
    return math.ceil(n - 1e-6)


# --- the simulated world -------------------------------------------------------------------------


@dataclass(frozen=True)
class _World:
    """The catalog and behaviour the populations are simulated against."""

    catalog: Catalog
    genre_vecs: np.ndarray
    behaviour: Behaviour
    start_day: int
    released: np.ndarray  # titles out before the window (the only candidates)
    recency: np.ndarray  # exp(-age / recency_days) at mid-window, per title
    pools: np.ndarray  # (countries, maturity levels, pool) the candidates of each kind of member
    pool_valid: np.ndarray  # same shape: False past the titles a (kids) profile may see


def _world(s: StudySettings, behaviour: Behaviour = DEFAULT_BEHAVIOUR) -> _World:
    genre_vecs = genre_vectors(s.world_seed)
    catalog = build_catalog(np.random.default_rng([s.world_seed, 1]), s.titles, WORLD_START, s.days,
                            genre_vecs)
    start_day = (WORLD_START - date(1970, 1, 1)).days
    age = start_day + s.days / 2 - catalog.release_day
    recency = np.exp(-np.maximum(age, 0) / behaviour.recency_days).astype(np.float32)
    released = catalog.release_day < start_day
    pools, valid = _pools(catalog, released, s.pool)
    return _World(catalog, genre_vecs, behaviour, start_day, released, recency, pools, valid)


def _pools(catalog: Catalog, released: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pool of every (country, maturity): its `size` most popular titles that are
    available there, out, and within the maturity. Eligibility depends on nothing else, so the
    pools are computed once per kind of member, not once per member."""
    levels = np.arange(MAX_MATURITY + 1)
    eligible = (catalog.avail[:, None, :] & released[None, None, :]
                & (catalog.maturity[None, None, :] <= levels[None, :, None]))
    key = np.where(eligible, catalog.pop_z[:, None, :], -np.inf)
    pools = np.argsort(-key, axis=2, kind="stable")[:, :, :size]
    return pools, np.isfinite(np.take_along_axis(key, pools, axis=2))


@dataclass
class _Outcome:
    """Per exposed member of a chunk: plays under A and B, interleaving wins; oracle sums."""

    plays_a: np.ndarray
    plays_b: np.ndarray
    wins_a: np.ndarray
    wins_b: np.ndarray
    sessions: np.ndarray
    match_a: float = 0.0  # summed mean true match of the first session's row
    match_b: float = 0.0
    simulated: int = 0  # members drawn (exposed or not)


def _candidates(world: _World, people: Members, who: np.ndarray):
    """Members `who`'s pools (the most popular eligible titles in their country) and, on them,
    popularity, true and estimated match, and validity (a kids profile may have fewer titles)."""
    cat = world.catalog
    country, maturity = people.country[who], people.maturity[who]
    pool, valid = world.pools[country, maturity], world.pool_valid[country, maturity]
    pop = cat.pop_z[country[:, None], pool]
    vectors = cat.vec[pool]  # (members, pool, dim)
    match = np.einsum("nd,npd->np", people.taste[who], vectors)
    estimate = np.einsum("nd,npd->np", people.est_taste[who], vectors)
    return pool, valid, pop, match, estimate


def _sessions(rng: np.random.Generator, people: Members, world: _World, days: int) -> np.ndarray:
    """Sessions in the window per member: Poisson(activity x days since joining, within it)."""
    join = people.join_day - world.start_day
    active_days = np.clip(days - np.maximum(join, 0), 0, days)
    return rng.poisson(people.activity * active_days)


def _next_rows(order: np.ndarray, valid: np.ndarray, played: np.ndarray, n_played: np.ndarray,
               who: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each member's ranking today: their `n` best candidates (in the ranker's fixed `order`) not
    yet played, as pool indices (-1 where the pool runs out) and a mask of the real ones.

    Why a fixed order: the scores never change, only played titles leave, so the n best unplayed
    lie in the first n + (titles played) of the order; far cheaper than re-sorting every session.
    """
    width = min(order.shape[1], n + int(n_played[who].max(initial=0)))
    cand = order[who, :width]
    usable = valid[who[:, None], cand] & ~played[who[:, None], cand]
    rank = np.cumsum(usable, axis=1)
    keep = usable & (rank <= n)
    r, c = np.nonzero(keep)
    rows = np.full((len(who), n), -1, dtype=np.int64)
    rows[r, rank[r, c] - 1] = cand[r, c]
    return rows, rows >= 0


def _interleave(lists_a: np.ndarray, lists_b: np.ndarray, ok_a, ok_b, k: int, request: str,
                members: np.ndarray, round_: int):
    """team_draft per page (the serving function itself), seeded by the page's request id."""
    rows = np.full((len(members), k), -1, dtype=np.int64)
    is_b = np.zeros((len(members), k), dtype=bool)
    for i, member in enumerate(members.tolist()):
        page = team_draft(lists_a[i][ok_a[i]].tolist(), lists_b[i][ok_b[i]].tolist(), k,
                          seed_of(f"{request}-{member}-{round_}"))
        rows[i, :len(page.titles)] = page.titles
        is_b[i, :len(page.teams)] = [t == "B" for t in page.teams]
    return rows, is_b


def _plays(world: _World, s: StudySettings, who, rows, ok, draws, pop, match, affinity, pool):
    """Which titles of each session's row are played: the world's play logit on the seen slots,
    at most max_plays_per_session in browsing order."""
    cat, b = world.catalog, world.behaviour
    hour, device, seen, u_art, u_play = draws
    member, slot = who[:, None], np.where(ok, rows, 0)
    titles = pool[member, slot]
    art = cat.art_offset[titles] + (u_art * cat.art_count[titles]).astype(np.int64)
    theme = affinity[member, cat.art_theme[art]]
    position = np.arange(s.k)[None, :]
    logit = play_logit(b, match[member, slot], pop[member, slot], world.recency[titles], theme,
                       position, ROW, hour[:, None], device[:, None])
    played = ok & (position < seen[:, None]) & (u_play < sigmoid(logit))
    return played & (np.cumsum(played, axis=1) <= b.max_plays_per_session)


def _simulate_chunk(world: _World, s: StudySettings, stream: int, chunk: int, arms: str,
                    size: int = CHUNK) -> _Outcome:
    """One chunk of `size` members, seeded by (seed, stream, chunk), under the arms in `arms`
    ("A", "B", "I" for interleaved), with common random numbers across arms. Exposed members only."""
    b = world.behaviour
    people = build_members(np.random.default_rng([s.seed, stream, chunk, 0]), size, WORLD_START,
                           s.days, world.genre_vecs)
    rng = np.random.default_rng([s.seed, stream, chunk, 1])
    sessions = _sessions(rng, people, world, s.days)
    exposed = np.flatnonzero(sessions > 0)
    sessions = sessions[exposed]
    pool, valid, pop, match, estimate = _candidates(world, people, exposed)
    affinity = people.theme_affinity[exposed]
    devices, device_count = people.devices[exposed], people.device_count[exposed]
    order = {"A": np.argsort(-np.where(valid, pop + s.a_match_weight * estimate, -np.inf), axis=1,
                             kind="stable"),
             "B": np.argsort(-np.where(valid, pop + s.b_match_weight * estimate, -np.inf), axis=1,
                             kind="stable")}
    n = len(exposed)
    out = _Outcome(*(np.zeros(n, np.int64) for _ in range(4)), sessions=sessions)
    played = {arm: np.zeros((n, s.pool), bool) for arm in "ABI"}
    n_played = {arm: np.zeros(n, np.int64) for arm in "ABI"}
    request = f"power{s.seed}-{stream}-{chunk}"
    for round_ in range(int(sessions.max()) if n else 0):
        who = np.flatnonzero(sessions > round_)
        m = len(who)
        pick = np.where((device_count[who] > 1) & (rng.random(m) >= PRIMARY_DEVICE_SHARE),
                        1 + (rng.random(m) * np.maximum(device_count[who] - 1, 1)).astype(np.int64), 0)
        device = devices[who, pick]
        hour = rng.choice(24, size=m, p=HOUR_P)
        seen = 2 + rng.poisson(np.asarray(b.positions_seen)[device])
        draws = (hour, device, seen, rng.random((m, s.k)), rng.random((m, s.k)))
        view = (pop, match, affinity, pool)
        for arm in arms:
            if arm == "I":
                lists = {t: _next_rows(order[t], valid, played[arm], n_played[arm], who, 2 * s.k)
                         for t in "AB"}
                rows, is_b = _interleave(lists["A"][0], lists["B"][0], lists["A"][1], lists["B"][1],
                                         s.k, request, who, round_)
                ok = rows >= 0
            else:
                rows, ok = _next_rows(order[arm], valid, played[arm], n_played[arm], who, s.k)
            hit = _plays(world, s, who, rows, ok, draws, *view)
            r, c = np.nonzero(hit)
            played[arm][who[r], rows[r, c]] = True
            np.add.at(n_played[arm], who[r], 1)
            if arm == "I":
                np.add.at(out.wins_b, who[r], is_b[r, c])
                np.add.at(out.wins_a, who[r], ~is_b[r, c])
            else:
                np.add.at(out.plays_a if arm == "A" else out.plays_b, who[r], 1)
                if round_ == 0:
                    true = np.where(ok, match[who[:, None], np.where(ok, rows, 0)], 0)
                    mean_match = float((true.sum(axis=1) / np.maximum(ok.sum(axis=1), 1)).sum())
                    if arm == "A":
                        out.match_a += mean_match
                    else:
                        out.match_b += mean_match
    return out


def _population(world: _World, s: StudySettings, stream: int, arms: str, *,
                members: int | None = None, exposed: int | None = None) -> _Outcome:
    """Chunks of a stream until `members` simulated or `exposed` exposed members; outcomes joined
    (and cut to exactly `exposed` members when that is the target)."""
    parts, chunk, simulated, have = [], 0, 0, 0
    while (members is not None and simulated < members) or (exposed is not None and have < exposed):
        if members is not None:
            size = min(CHUNK, members - simulated)
        else:  # about what is still missing (~80% of members are exposed), so small studies stay small
            size = min(CHUNK, max(64, math.ceil((exposed - have) / 0.7)))
        part = _simulate_chunk(world, s, stream, chunk, arms, size)
        parts.append(part)
        chunk += 1
        simulated += size
        have += len(part.sessions)
    joined = _Outcome(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("plays_a", "plays_b", "wins_a", "wins_b", "sessions")),
                      match_a=sum(p.match_a for p in parts), match_b=sum(p.match_b for p in parts),
                      simulated=simulated)
    if exposed is not None:
        for name in ("plays_a", "plays_b", "wins_a", "wins_b", "sessions"):
            setattr(joined, name, getattr(joined, name)[:exposed])
    return joined


# --- the study -----------------------------------------------------------------------------------


def _ab_power(world, s: StudySettings, per_arm: tuple[int, int]) -> float | None:
    """Empirical power of the A/B test: fresh arm populations at the computed sizes."""
    if not s.replications:
        return None
    reps = s.replications
    a = _population(world, s, STREAM_AB_A, "A", exposed=reps * per_arm[0]).plays_a
    b = _population(world, s, STREAM_AB_B, "B", exposed=reps * per_arm[1]).plays_b
    a, b = a.reshape(reps, per_arm[0]).astype(float), b.reshape(reps, per_arm[1]).astype(float)
    test = welch_from_moments(a.mean(1), a.var(1, ddof=1), per_arm[0], b.mean(1), b.var(1, ddof=1),
                              per_arm[1], alpha=s.alpha)
    return float(np.mean((np.asarray(test.p_value) < s.alpha) & (np.asarray(test.difference) > 0)))


def _interleaving_power(world, s: StudySettings, members: int) -> float | None:
    """Empirical power of the preference test: fresh populations of `members` exposed members."""
    if not s.replications:
        return None
    pop = _population(world, s, STREAM_INTERLEAVED, "I", exposed=s.replications * members)
    found = 0
    for rep in range(s.replications):
        part = slice(rep * members, (rep + 1) * members)
        wins = Wins(np.arange(members), pop.wins_a[part], pop.wins_b[part])
        if wins.credited.sum() >= 2:
            result = preference(wins, alpha=s.alpha)
            found += result.significant and result.mean > 0
    return found / s.replications


_D = StudySettings()


def power_study(*, members: int = _D.members, days: int = _D.days, k: int = _D.k, seed: int = _D.seed,
                world_seed: int = _D.world_seed, titles: int = _D.titles, pool: int = _D.pool,
                a_match_weight: float = _D.a_match_weight, b_match_weight: float = _D.b_match_weight,
                replications: int = _D.replications, alpha: float = _D.alpha,
                power: float = _D.power) -> dict:
    """Members an A/B test and an interleaving experiment need to find ranker B better than A
    (at alpha, power), measured on one simulated population and checked on fresh ones.

    The arguments are StudySettings' fields (bad values raise ValueError naming the field); the
    default run takes ~30 s here (25 s of CPU), most of it the 200 + 200 fresh populations of the
    empirical power (replications=0 skips them). Returns a JSON-ready dict.
    """
    s = StudySettings(members=members, days=days, k=k, seed=seed, world_seed=world_seed,
                      titles=titles, pool=pool, a_match_weight=a_match_weight,
                      b_match_weight=b_match_weight, replications=replications, alpha=alpha,
                      power=power)
    began = time.perf_counter()
    world = _world(s)
    est = _population(world, s, STREAM_ESTIMATE, "ABI", members=s.members)
    exposed = len(est.sessions)
    if exposed < 10:
        raise fail("members", "enough members for at least 10 to be exposed", s.members)
    a, b = est.plays_a.astype(float), est.plays_b.astype(float)
    difference = float(b.mean() - a.mean())
    sd = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    if difference <= 0:
        raise fail("b_match_weight", "a ranker B that gets more plays than A in this world",
                   s.b_match_weight)
    ab = sample_size_two_means(difference, sd, alpha=s.alpha, power=s.power)
    wins = Wins(np.arange(exposed), est.wins_a, est.wins_b)
    pref = preference(wins, alpha=s.alpha)
    credited_share = pref.n_members / exposed
    score_sd = pref.se * math.sqrt(pref.n_members)
    if pref.mean <= 0:
        raise fail("b_match_weight", "a ranker B that members prefer in this world", s.b_match_weight)
    credited_needed = sample_size_one_mean(pref.mean, score_sd, alpha=s.alpha, power=s.power)
    interleaving_members = math.ceil(credited_needed / credited_share)
    measured = time.perf_counter() - began
    ab_power = _ab_power(world, s, (ab.control, ab.treatment))
    interleaving_power = _interleaving_power(world, s, interleaving_members)
    sessions = float(est.sessions.sum())
    reps = s.replications
    return {
        "ab_members": ab.total,
        "ab_members_per_arm": [ab.control, ab.treatment],
        "interleaving_members": interleaving_members,
        "ratio": interleaving_members / ab.total,
        "ab": {
            "metric": "homepage-row plays per exposed member over the window",
            "mean_a": float(a.mean()), "mean_b": float(b.mean()), "difference": difference,
            "relative_lift": difference / float(a.mean()) if a.mean() else None,
            "sd_a": float(a.std(ddof=1)), "sd_b": float(b.std(ddof=1)), "sd_pooled": sd,
            "standardized_effect": difference / sd,
            "plays_per_session_a": float(a.sum() / sessions),
            "plays_per_session_b": float(b.sum() / sessions),
        },
        "interleaving": {
            "metric": "per-member (wins_B - wins_A) / (wins_A + wins_B), members with a credited play",
            "mean_preference": pref.mean, "low": pref.low, "high": pref.high, "p_value": pref.p_value,
            "sd": score_sd, "standardized_effect": pref.mean / score_sd,
            "prefer_b": pref.prefer_b, "prefer_a": pref.prefer_a, "ties": pref.ties,
            "delta_ab": pref.delta_ab, "credited_share": credited_share,
            "credited_members_needed": credited_needed,
        },
        "oracle": {
            "why_b_is_better": "the world's play logit weighs true match 3.0 and popularity 0.45 per "
                               "SD; B adds the world's estimated match, so its rows match members' "
                               "hidden tastes better",
            "row_true_match_a": est.match_a / exposed, "row_true_match_b": est.match_b / exposed,
        },
        "empirical_power": {
            "ab": ab_power, "interleaving": interleaving_power, "replications": reps,
            "se": math.sqrt(s.power * (1 - s.power) / reps) if reps else None,
        },
        "settings": asdict(s) | {
            "members_simulated": est.simulated, "members_exposed": exposed,
            "sessions": int(sessions),
            "rankers": {"A": {"name": "popularity" if s.a_match_weight == 0 else "popularity+estimated_match",
                              "score": f"pop_z + {s.a_match_weight} * estimated_match"},
                        "B": {"name": "popularity+estimated_match",
                              "score": f"pop_z + {s.b_match_weight} * estimated_match"}},
        },
        "seconds": {"estimate": round(measured, 2),
                    "total": round(time.perf_counter() - began, 2)},
    }
