"""Team-draft interleaving: compare two rankers on one row of one page, credit plays, score members.

Why interleave: an A/B test compares two groups of members, so the between-member spread of
activity (a heavy viewer against a light one) is noise the test must average away. Interleaving
shows every member one row merged from both rankers and asks which ranker's titles they played;
each member is their own control, and the position effect is shared fairly because team draft
alternates who picks first (Radlinski, Kurup & Joachims 2008, "How Does Clickthrough Data Reflect
Retrieval Quality?", CIKM; Chapelle, Joachims, Radlinski & Yue 2012, "Large-Scale Validation and
Analysis of Interleaved Search Evaluation", TOIS).

- `seed_of(request_id)`: the per-page seed, stable across processes (blake2b, never hash()).
- `team_draft(a, b, k, seed)`: the interleaved row and the team of every slot (serving, per page);
  `interleaving_payload` is the decision payload's block that records it.
- `credit(pages, plays)`: per-member wins of each team from homepage plays.
- `pages_and_plays(table)`: both inputs of `credit` from stored events (decision + play rows).
- `preference(wins)`: the per-member preference for B, its mean with a t interval and p-value.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from marquee.settings import check_int, check_number, fail

TEAMS = ("A", "B")
_PERSON = b"marquee-tdi"  # a blake2b personalisation: these seeds never collide with bucket hashes
_INT_TYPES = {int}
_COIN_BITS = 512  # one blake2b digest (64 bytes) of coin flips; more rounds take the next block


# --- the per-page seed ---------------------------------------------------------------------------


def seed_of(request_id: str) -> int:
    """The seed of one page's coin flips, from its request id: a 63-bit int, the same in every
    process and on every platform (Python's hash() is salted per process, so it cannot be used).

    Why from the request: a page re-rendered for the same request interleaves identically, so the
    decision logged and the row the member saw always agree.
    """
    if not isinstance(request_id, str) or not request_id:
        raise fail("request_id", "a non-empty string", request_id)
    digest = blake2b(request_id.encode("utf-8"), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") >> 1


# --- team draft ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interleaved:
    """The interleaved row: `titles` in slot order and the team ("A" or "B") that drafted each."""

    titles: tuple[int, ...]
    teams: tuple[str, ...]

    def team_of(self) -> dict[str, str]:
        """{str(title_id): team}: the decision payload's "interleaving"."teams" (JSON keys are str)."""
        return {str(title): team for title, team in zip(self.titles, self.teams)}

    def count(self, team: str) -> int:
        """How many slots `team` drafted."""
        return sum(1 for t in self.teams if t == team)


def _coins(seed: int, block: int) -> int:
    """Block `block` of the seed's coin flips as a 512-bit int (counter-mode blake2b).

    Why not a numpy Generator: building one costs more than the whole draft (serving drafts once
    per page, aiming under 50 us); a keyed hash in counter mode is an explicit-seed stream that is
    identical across processes, platforms and library versions.
    """
    key = seed.to_bytes(8, "big") + block.to_bytes(4, "big")
    return int.from_bytes(blake2b(key, digest_size=64, person=_PERSON).digest(), "big")


def _ranking(name: str, ranking: Sequence[int]) -> Sequence[int]:
    """A sequence of title ids (ints, numpy ints accepted; not bools); a numpy array as a list
    (membership tests on Python ints are several times faster than on numpy scalars)."""
    if isinstance(ranking, np.ndarray):
        if ranking.ndim != 1 or (ranking.size and ranking.dtype.kind not in "iu"):
            raise fail(name, "a one-dimensional array of integer title ids", ranking)
        return ranking.tolist()
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
        raise fail(name, "a sequence of title ids", ranking)
    if set(map(type, ranking)) <= _INT_TYPES:  # the common case, checked at C speed
        return ranking
    for title in ranking:
        if not isinstance(title, numbers.Integral) or isinstance(title, bool):
            raise fail(name, "a sequence of integer title ids", title)
    return ranking


def team_draft(a: Sequence[int], b: Sequence[int], k: int, seed: int) -> Interleaved:
    """Interleave rankings `a` and `b` into `k` slots by team draft (Radlinski et al. 2008).

    Each round starts when the teams are the same size: a seeded coin says which team drafts
    first, then each team in turn adds its highest-ranked title not already in the row. A title
    both rankers want goes to whoever drafts it first (the other moves on to its next one), a
    title repeated inside one ranking is taken once, and a team whose ranking is used up leaves
    the remaining slots to the other. Stops at `k` slots or when both rankings are exhausted.
    Why the coin per round: within a round either team is equally likely to take the higher
    slot, so a member who plays regardless of ranker (position effects included) credits both
    teams equally in expectation; the credit then measures preference, not placement.
    """
    k = check_int("k", k, ge=1)
    seed = check_int("seed", seed, ge=0, le=2 ** 64 - 1)
    a = _ranking("a", a)
    b = _ranking("b", b)
    titles: list[int] = []
    teams: list[str] = []
    used: set[int] = set()
    ia = ib = n_a = n_b = flips = block = 0
    coins = _coins(seed, 0)
    len_a, len_b = len(a), len(b)
    while len(titles) < k:
        while ia < len_a and a[ia] in used:
            ia += 1
        while ib < len_b and b[ib] in used:
            ib += 1
        a_left, b_left = ia < len_a, ib < len_b
        if not (a_left or b_left):
            break
        if n_a < n_b:
            pick_a = True
        elif n_b < n_a:
            pick_a = False
        else:
            if flips == _COIN_BITS:
                block += 1
                flips = 0
                coins = _coins(seed, block)
            pick_a = bool((coins >> flips) & 1)
            flips += 1
        if pick_a and not a_left:
            pick_a = False
        elif not pick_a and not b_left:
            pick_a = True
        if pick_a:
            title = int(a[ia])
            n_a += 1
            teams.append("A")
        else:
            title = int(b[ib])
            n_b += 1
            teams.append("B")
        used.add(title)
        titles.append(title)
    return Interleaved(tuple(titles), tuple(teams))


def interleaving_payload(experiment: str, ranker_a: str, ranker_b: str, rows: Iterable[Interleaved]) -> dict:
    """The decision payload's "interleaving" block for an interleaved page (events.md): which
    experiment, which ranker each team is, and the team of each title in the page's
    interleaved rows."""
    for name, value in (("experiment", experiment), ("ranker_a", ranker_a), ("ranker_b", ranker_b)):
        if not isinstance(value, str) or not value:
            raise fail(name, "a non-empty string", value)
    teams: dict[str, str] = {}
    for row in rows:
        if not isinstance(row, Interleaved):
            raise fail("rows", "Interleaved rows (from team_draft)", type(row).__name__)
        teams.update(row.team_of())
    return {"experiment": experiment, "rankers": {"A": ranker_a, "B": ranker_b}, "teams": teams}


# --- credit --------------------------------------------------------------------------------------


class Page(NamedTuple):
    """One interleaved page: whose it was, its request, and the team of each interleaved title."""

    member_id: int
    request_id: str
    teams: Mapping[int, str]


class Play(NamedTuple):
    """A homepage play: the member, the page's request id, the title played."""

    member_id: int
    request_id: str
    title_id: int


@dataclass(frozen=True)
class Wins:
    """Credited plays per exposed member (sorted by member id; members with no credit hold 0, 0)."""

    members: np.ndarray
    wins_a: np.ndarray
    wins_b: np.ndarray

    def __post_init__(self) -> None:
        for name in ("members", "wins_a", "wins_b"):
            value = np.asarray(getattr(self, name))
            if value.ndim != 1 or (value.size and value.dtype.kind not in "iu"):
                raise fail(name, "a one-dimensional array of integers", value)
            object.__setattr__(self, name, value.astype(np.int64, copy=False))
        if not len(self.members) == len(self.wins_a) == len(self.wins_b):
            raise fail("wins_b", f"{len(self.members)} members' wins (as many as members)", len(self.wins_b))
        if np.any(self.wins_a < 0) or np.any(self.wins_b < 0):
            raise fail("wins_a", "wins >= 0", "a negative count")

    @property
    def credited(self) -> np.ndarray:
        """Which members have at least one credited play (the ones a preference is defined for)."""
        return (self.wins_a + self.wins_b) > 0


def _team_map(name: str, teams: Mapping) -> dict[int, str]:
    """{title_id: "A" | "B"} with int keys (the payload's JSON keys are strings)."""
    if not isinstance(teams, Mapping):
        raise fail(name, "a mapping of title_id -> 'A' or 'B'", teams)
    out = {}
    for title, team in teams.items():
        if team not in TEAMS:
            raise fail(f"{name}[{title!r}]", "'A' or 'B'", team)
        try:
            out[int(title)] = team
        except (TypeError, ValueError):
            raise fail(name, "integer title ids as keys", title) from None
    return out


def credit(pages: Iterable[Page | tuple], plays: Iterable[Play | tuple]) -> Wins:
    """Each member's wins per team: a play of a title on an interleaved page credits the team that
    drafted it, once per (request, title) however often it was replayed.

    Why once: the unit of evidence is "the member chose this title from this page"; counting
    replays would let one binge outweigh every other choice. Plays of titles outside the
    interleaved row (another row of the page), of requests that were not interleaved, or whose
    member is not the page's member are not credited. Every member with a page is in the result,
    with zero wins when nothing was credited: they were exposed and an experiment enrols them.
    A request logged twice keeps its first page.
    """
    by_request: dict[str, tuple[int, dict[int, str]]] = {}
    members: set[int] = set()
    for index, page in enumerate(pages):
        member, request, teams = page
        member = check_int(f"pages[{index}].member_id", member)
        if not isinstance(request, str) or not request:
            raise fail(f"pages[{index}].request_id", "a non-empty string", request)
        members.add(member)
        if request not in by_request:
            by_request[request] = (member, _team_map(f"pages[{index}].teams", teams))
    wins = {member: [0, 0] for member in members}
    seen: set[tuple[str, int]] = set()
    for index, play in enumerate(plays):
        member, request, title = play
        page = by_request.get(request)
        if page is None or page[0] != member:
            continue
        title = check_int(f"plays[{index}].title_id", title)
        team = page[1].get(title)
        if team is None or (request, title) in seen:
            continue
        seen.add((request, title))
        wins[member][team == "B"] += 1
    order = sorted(wins)
    counts = np.array([wins[m] for m in order], dtype=np.int64).reshape(-1, 2)
    return Wins(np.array(order, dtype=np.int64), counts[:, 0], counts[:, 1])


@dataclass(frozen=True)
class InterleavedLog:
    """What `pages_and_plays` found: the pages and plays for `credit`, and which rankers were A, B."""

    experiment: str | None
    rankers: dict[str, str]
    pages: list[Page]
    plays: list[Play]


def _payload(text: str | None, index: int) -> dict:
    try:
        payload = json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise fail(f"payload[{index}]", "JSON text", text) from None
    if not isinstance(payload, dict):
        raise fail(f"payload[{index}]", "a JSON object", text)
    return payload


def pages_and_plays(table: pa.Table, experiment: str | None = None) -> InterleavedLog:
    """The interleaved pages (decision events whose payload has "interleaving") and the homepage
    plays (play events with a request id) of a table of stored events.

    `experiment` picks one interleaving experiment; without it the table must hold at most one
    (crediting two experiments' teams together would mix different rankers). Only the columns
    type, member_id, title_id, request_id and payload are read.
    """
    if not isinstance(table, pa.Table):
        raise fail("table", "a pyarrow Table of stored events", type(table).__name__)
    missing = [c for c in ("type", "member_id", "title_id", "request_id", "payload")
               if c not in table.column_names]
    if missing:
        raise fail("table", f"the columns {', '.join(missing)}", table.column_names)
    if experiment is not None and (not isinstance(experiment, str) or not experiment):
        raise fail("experiment", "a non-empty experiment name or None", experiment)
    types = table.column("type")
    decisions = table.filter(pc.equal(types, "decision")).select(["member_id", "request_id", "payload"])
    found: dict[str, dict[str, str]] = {}
    pages = []
    for index, row in enumerate(decisions.to_pylist()):
        block = _payload(row["payload"], index).get("interleaving")
        if not block:
            continue
        if not isinstance(block, dict) or not isinstance(block.get("experiment"), str):
            raise fail(f"payload[{index}].interleaving", "an object with an experiment name", block)
        name = block["experiment"]
        if experiment is not None and name != experiment:
            continue
        rankers = block.get("rankers") or {}
        found.setdefault(name, dict(rankers) if isinstance(rankers, dict) else {})
        if row["request_id"] is None:
            raise fail(f"decision[{index}].request_id", "the page's request id", None)
        pages.append(Page(row["member_id"], row["request_id"],
                          _team_map(f"payload[{index}].interleaving.teams", block.get("teams"))))
    if len(found) > 1:
        raise fail("experiment", f"one of the interleaving experiments {sorted(found)}", experiment)
    is_play = pc.and_(pc.equal(types, "play"), pc.is_valid(table.column("request_id")))
    plays_table = table.filter(is_play).select(["member_id", "request_id", "title_id"])
    plays = [Play(m, r, t) for m, r, t in zip(*(plays_table.column(c).to_pylist()
                                              for c in ("member_id", "request_id", "title_id")))
             if t is not None]
    name = next(iter(found), experiment)
    return InterleavedLog(name, found.get(name, {}) if name else {}, pages, plays)


# --- the preference ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preference:
    """How much members prefer ranker B over A, over members with at least one credited play.

    `mean` is the mean per-member score (wins_B - wins_A) / (wins_A + wins_B), in [-1, 1]: > 0
    favours B. `low`, `high`: its (1 - alpha) t interval; `p_value`: two-sided, H0 mean = 0.
    `n_members`: members with a credited play; `n_exposed`: all members with an interleaved page.
    `prefer_b`, `prefer_a`, `ties`: shares of the n_members; `delta_ab` is Chapelle et al.'s
    Delta_AB = prefer_b + ties / 2 - 1/2.
    """

    mean: float
    se: float
    low: float
    high: float
    statistic: float
    df: float
    p_value: float
    n_members: int
    n_exposed: int
    prefer_b: float
    prefer_a: float
    ties: float
    delta_ab: float
    alpha: float

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def member_scores(wins: Wins) -> np.ndarray:
    """The per-member score (wins_B - wins_A) / (wins_A + wins_B) of the members with a credit.

    Why per member and normalised: the member is the randomisation unit and the independent draw;
    normalising keeps one heavy viewer from outvoting many light ones (Chapelle et al. 2012 score
    per query the same way)."""
    if not isinstance(wins, Wins):
        raise fail("wins", "a Wins (from credit)", type(wins).__name__)
    active = wins.credited
    a, b = wins.wins_a[active], wins.wins_b[active]
    return (b - a) / (a + b)


def preference(wins: Wins, *, alpha: float = 0.05) -> Preference:
    """The mean preference for B with a one-sample t interval and p-value (H0: no preference).

    A t test on per-member scores: members are independent, a score is bounded, so the mean is
    close to normal at the sizes an experiment runs. With every score equal (no spread) the
    interval is that point and the p-value is 0 (1 if the score is 0).
    """
    alpha = float(check_number("alpha", alpha, gt=0, lt=1))
    scores = member_scores(wins)
    n = len(scores)
    if n < 2:
        raise fail("wins", "at least 2 members with a credited play", n)
    mean = float(scores.mean())
    se = float(scores.std(ddof=1) / math.sqrt(n))
    df = float(n - 1)
    if se > 0:
        statistic = mean / se
        p_value = float(2 * stats.t.sf(abs(statistic), df))
        half = float(stats.t.isf(alpha / 2, df) * se)
    else:
        statistic = math.copysign(math.inf, mean) if mean else math.nan
        p_value, half = (0.0 if mean else 1.0), 0.0
    prefer_b, prefer_a = float(np.mean(scores > 0)), float(np.mean(scores < 0))
    ties = 1.0 - prefer_b - prefer_a
    return Preference(mean=mean, se=se, low=mean - half, high=mean + half, statistic=float(statistic),
                      df=df, p_value=p_value, n_members=n, n_exposed=len(wins.members),
                      prefer_b=prefer_b, prefer_a=prefer_a, ties=ties,
                      delta_ab=prefer_b + ties / 2 - 0.5, alpha=alpha)


def interleaving_report(table: pa.Table, experiment: str, *, alpha: float = 0.05) -> dict:
    """An interleaving experiment's section of `marquee experiment report`: the rankers, pages,
    credited plays and the preference for B with its interval (JSON-ready; NaN as None)."""
    log = pages_and_plays(table, experiment)
    wins = credit(log.pages, log.plays)
    found = preference(wins, alpha=alpha)
    out = {name: getattr(found, name) for name in found.__dataclass_fields__}
    out = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}
    return {"experiment": experiment, "rankers": log.rankers, "pages": len(log.pages),
            "credited_plays": int(wins.wins_a.sum() + wins.wins_b.sum()),
            "significant": found.significant, "preference": out}


def interleaving_verdict(section: dict) -> dict:
    """The verdict in words of an interleaving report section: which ranker members prefer (the
    screen before an A/B test: the preferred ranker goes on to one), or keep running."""
    p, rankers = section["preference"], section["rankers"]
    level = round((1 - p["alpha"]) * 100)
    shown = (f"preference for B ({rankers['B']}) over A ({rankers['A']}) {p['mean']:+.3f} "
             f"({level}% CI {p['low']:+.3f} to {p['high']:+.3f}, p = {p['p_value']:.2g}) over "
             f"{p['n_members']} members with a credited play ({p['n_exposed']} shown an interleaved page)")
    if section["significant"]:
        winner = rankers["B"] if p["mean"] > 0 else rankers["A"]
        return {"decision": f"prefer {winner}", "winner": winner,
                "reasons": [f"Members prefer {winner}: {shown}; take it to an A/B test."]}
    return {"decision": "keep running", "winner": None,
            "reasons": [f"No preference yet: {shown}."]}
