"""A seeded event log of one experiment with a known lift, and a builder of hand-sized tables.

`make_fixture` simulates members randomised by weight into the variants of one experiment. Each
member has an activity (sessions per day, gamma distributed, the same before and after exposure,
so the pre-period predicts the post-period and CUPED has something to remove). A session is one
homepage (a decision record with the page's latency and degradation), impressions of five
titles, each clicked with probability CLICK x (1 + lift of the member's variant); every play
gets a progress event (and a completion when it reached 0.9). The first session after the
member's exposure time is the exposure page. Client events carry a lying `experiments` column
(every member claims `treatment`), which analysis must ignore. Days are compressed
(DAY_MS is an hour) as a simulation would.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from experiments.spec import Experiment, Variant
from marquee.schema import STORED_EVENT_SCHEMA, decision_event, exposure_event

NAME = "home_ranker"
DAY_MS = 3_600_000  # a compressed day: one hour
START_MS = 1_736_121_600_000  # 2025-01-06T00:00:00Z
CLICK = 0.12  # control's chance that an impression is played
IMPRESSIONS = 5  # titles shown per page
TITLES = 30  # ids 1..30; ids above 20 are series (payload {"episode": n})
LIE = orjson.dumps({NAME: "treatment"}).decode()  # what every client claims


def experiment(weights: Mapping[str, float] | None = None, name: str = NAME) -> Experiment:
    """An experiment with these variant weights (default control and treatment, 1:1)."""
    weights = weights or {"control": 1, "treatment": 1}
    variants = tuple(Variant(v, w, {} if v == "control" else {"ranking": {"policy": v}})
                     for v, w in weights.items())
    return Experiment(name=name, layer="ranking", traffic=1.0, variants=variants)


def titles() -> pa.Table:
    """Runtimes: movies 90 to 147 minutes, series episodes 30 minutes."""
    ids = np.arange(1, TITLES + 1)
    runtime = np.where(ids > 20, 30, 90 + 3 * ids)
    return pa.table({"title_id": pa.array(ids, pa.int64()), "runtime_min": pa.array(runtime, pa.int32()),
                     "episodes": pa.array(np.where(ids > 20, 8, 1), pa.int32())})


def table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Stored events from dicts: timestamps in epoch ms, absent fields null, event_id and seq
    from the row order unless given."""
    full = [{"event_id": f"e{seq}", "seq": seq, **row} for seq, row in enumerate(rows)]
    return pa.Table.from_pylist(full, schema=STORED_EVENT_SCHEMA)


def exposures(member_ids: Sequence[int], variants: Sequence[str], timestamps: Sequence[int],
              name: str = NAME) -> pa.Table:
    """A table of exposure events only, built column-wise (for SRM tests of many members)."""
    n = len(member_ids)
    text = {v: orjson.dumps({name: v}).decode() for v in set(variants)}
    columns = {f.name: pa.nulls(n, f.type) for f in STORED_EVENT_SCHEMA}
    columns |= {"event_id": pa.array([f"decision-exposure/{name}/{v}/{m}" for m, v in zip(member_ids, variants)]),
                "member_id": pa.array(member_ids, pa.int64()), "type": pa.array(["exposure"] * n),
                "timestamp": pa.array(np.asarray(timestamps, np.int64)).cast(STORED_EVENT_SCHEMA.field("timestamp").type),
                "experiments": pa.array([text[v] for v in variants]),
                "request_id": pa.array([f"r{m}" for m in member_ids]),
                "seq": pa.array(np.arange(n), pa.int64())}
    return pa.table(columns).cast(STORED_EVENT_SCHEMA)


def exposure(member: int, variant: str, ts: int, request_id: str = "r0", name: str = NAME) -> dict:
    return exposure_event(name, variant, member, request_id, ts)


def decision(member: int, ts: int, request_id: str, assignment: Mapping[str, str], *,
             latency_ms: float | None = 50.0, degraded: Sequence[str] = ()) -> dict:
    return decision_event(request_id, member, ts, "tv", "US", "ranker", 1, [], dict(assignment), {},
                          latency_ms=latency_ms, degraded=degraded)


@dataclass
class Fixture:
    """The events with what made them: the experiment, titles, each member's true variant."""

    events: pa.Table
    experiment: Experiment
    titles: pa.Table
    day_ms: int
    variant_of: dict[int, str]
    lifts: dict[str, float] = field(default_factory=dict)


def make_fixture(*, members: int = 600, weights: Mapping[str, float] | None = None,
                 lifts: Mapping[str, float] | None = None, days: int = 6, pre_days: int = 4,
                 seed: int = 7, latency_ms: Mapping[str, float] | None = None,
                 degraded_rate: Mapping[str, float] | None = None, crossovers: int = 0,
                 enrol_days: float = 2.0) -> Fixture:
    """The seeded event log (see the module docstring), built with whole-array draws. `lifts`:
    relative lift of the click probability per variant (default treatment +30%); `latency_ms`:
    median page latency per variant (default 60); `degraded_rate`: share of degraded pages per
    variant (default 0.002); `crossovers`: members later exposed to a second variant too."""
    exp = experiment(weights)
    arms = [v.name for v in exp.arms]
    lifts = {v: 0.0 for v in arms} | (dict(lifts) if lifts is not None else {"treatment": 0.3})
    latency_ms = {v: 60.0 for v in arms} | dict(latency_ms or {})
    degraded_rate = {v: 0.002 for v in arms} | dict(degraded_rate or {})
    rng = np.random.default_rng(seed)
    share = np.array([next(v.weight for v in exp.variants if v.name == a) for a in arms], float)
    variant = rng.choice(len(arms), size=members, p=share / share.sum())
    activity = rng.gamma(2.0, 0.5, size=members)  # sessions per day
    t0 = START_MS + (rng.random(members) * enrol_days * DAY_MS).astype(np.int64)
    end = START_MS + days * DAY_MS
    ids = 1000 + np.arange(members)
    # sessions: the pre-period's, the exposure page at t0, then the post-period's
    n_pre = rng.poisson(activity * pre_days)
    n_post = rng.poisson(activity * (end - t0) / DAY_MS)
    who_pre, who_post = np.repeat(np.arange(members), n_pre), np.repeat(np.arange(members), n_post)
    pre_ts = t0[who_pre] - (rng.random(len(who_pre)) * pre_days * DAY_MS).astype(np.int64) - 1
    post_ts = t0[who_post] + (rng.random(len(who_post)) * (end - t0[who_post])).astype(np.int64)
    who = np.concatenate([who_pre, np.arange(members), who_post])
    ts = np.concatenate([pre_ts, t0, post_ts])
    post = np.r_[np.zeros(len(who_pre), bool), np.ones(members + len(who_post), bool)]
    request = np.array([f"s{j}" for j in range(len(who))], dtype=object)
    columns = _pages(rng, ids[who], ts, request, post,
                     CLICK * (1 + np.array([lifts[a] for a in arms]))[variant[who]])
    rows = _server_records(rng, exp, arms, ids, variant, t0, who, ts, request, post, latency_ms,
                           degraded_rate, crossovers)
    server = table(rows).drop_columns(["seq"]).select(columns.column_names).cast(columns.schema)
    events = pa.concat_tables([columns, server]).sort_by([("timestamp", "ascending")])
    events = events.append_column("seq", pa.array(np.arange(events.num_rows), pa.int64()))
    return Fixture(events.cast(STORED_EVENT_SCHEMA), exp, titles(), DAY_MS,
                   dict(zip(ids.tolist(), [arms[v] for v in variant])), dict(lifts))


def _pages(rng, member: np.ndarray, ts: np.ndarray, request: np.ndarray, post: np.ndarray,
           click: np.ndarray) -> pa.Table:
    """The client events of every session: five impressions, the plays they lead to (post-period
    clicks at the member's variant's rate) with progress and completions, and sometimes a play
    from search (no request id)."""
    s = len(member)
    shown = np.argsort(rng.random((s, TITLES)), axis=1)[:, :IMPRESSIONS] + 1
    position = np.tile(np.arange(IMPRESSIONS), s)
    session = np.repeat(np.arange(s), IMPRESSIONS)
    title = shown.ravel()
    chance = np.where(post, click, CLICK)[session]
    clicked = rng.random(len(title)) < chance
    fraction = rng.uniform(0.1, 1.0, len(title))
    episode = rng.integers(1, 4, len(title))
    c = np.flatnonzero(clicked)
    done = c[fraction[c] >= 0.9]
    search = np.flatnonzero(rng.random(s) < 0.2)
    payload = np.array([f'{{"episode":{e}}}' for e in episode], dtype=object)
    payload[title <= 20] = None
    play_at = ts[session] + 1000 + 10 * position
    parts = [  # (rows, type, timestamp, value, with request id, payload)
        (np.arange(len(title)), "impression", ts[session] + position, None, True, None),
        (c, "play", play_at[c], None, True, payload[c]),
        (c, "progress", play_at[c] + 60_000, np.minimum(fraction[c], 0.95), False, payload[c]),
        (done, "completion", play_at[done] + 61_000, np.ones(len(done)), False, payload[done]),
    ]
    out = {k: [] for k in ("member_id", "title_id", "type", "timestamp", "value", "request_id", "payload", "row",
                           "position")}
    for rows, kind, stamp, value, with_request, pay in parts:
        out["member_id"].append(member[session[rows]])
        out["title_id"].append(title[rows])
        out["type"].append(np.full(len(rows), kind, dtype=object))
        out["timestamp"].append(stamp)
        out["value"].append(np.full(len(rows), np.nan) if value is None else value)
        out["request_id"].append(request[session[rows]] if with_request or kind == "play"
                                 else np.full(len(rows), None, dtype=object))
        out["payload"].append(np.full(len(rows), None, dtype=object) if pay is None else pay)
        out["row"].append(np.where(kind == "impression", "top", None).repeat(len(rows)).astype(object))
        out["position"].append(np.where(kind == "impression", position[rows], -1))
    out["member_id"].append(member[search])
    out["title_id"].append(rng.integers(1, TITLES + 1, len(search)))
    out["type"].append(np.full(len(search), "play", dtype=object))
    out["timestamp"].append(ts[search] + 5000)
    out["value"].append(np.full(len(search), np.nan))
    for key in ("request_id", "payload", "row"):
        out[key].append(np.full(len(search), None, dtype=object))
    out["position"].append(np.full(len(search), -1))
    flat = {k: np.concatenate(v) for k, v in out.items()}
    n = len(flat["member_id"])
    return pa.table({
        "event_id": pa.array([f"c{i}" for i in range(n)], pa.string()),
        "member_id": pa.array(flat["member_id"], pa.int64()),
        "title_id": pa.array(flat["title_id"], pa.int64()),
        "type": pa.array(flat["type"], pa.string()),
        "timestamp": pa.array(flat["timestamp"].astype(np.int64)).cast(STORED_EVENT_SCHEMA.field("timestamp").type),
        "country": pa.nulls(n, pa.string()), "device": pa.nulls(n, pa.string()),
        "row": pa.array(flat["row"], pa.string()),
        "position": pa.array(flat["position"], pa.int32(), mask=flat["position"] < 0),
        "artwork": pa.nulls(n, pa.string()), "propensity": pa.nulls(n, pa.float64()),
        "value": pa.array(flat["value"], pa.float64(), mask=np.isnan(flat["value"])),
        "experiments": pa.array([LIE] * n, pa.string()),
        "payload": pa.array(flat["payload"], pa.string()),
        "request_id": pa.array(flat["request_id"], pa.string()),
    })


def _server_records(rng, exp, arms, ids, variant, t0, who, ts, request, post, latency_ms, degraded_rate,
                    crossovers) -> list[dict]:
    """Exposures (each member's first post-period page; `crossovers` members also get a second
    variant's half a day later) and one decision record per post-period page."""
    first = {}
    for j in np.flatnonzero(post):
        first.setdefault(int(who[j]), j)
    rows = [exposure(int(ids[m]), arms[variant[m]], int(t0[m]), request[j]) for m, j in first.items()]
    pages = np.flatnonzero(post)
    arm = variant[who[pages]]
    median = np.array([latency_ms[a] for a in arms])[arm]
    latency = rng.lognormal(np.log(median), 0.4)
    degraded = rng.random(len(pages)) < np.array([degraded_rate[a] for a in arms])[arm]
    for j, ms, bad, a in zip(pages.tolist(), latency.tolist(), degraded.tolist(), arm.tolist()):
        rows.append(decision(int(ids[who[j]]), int(ts[j]), request[j], {exp.name: arms[a]}, latency_ms=ms,
                             degraded=("retrieval",) if bad else ()))
    for m in rng.choice(len(ids), size=crossovers, replace=False).tolist():
        other = arms[(variant[m] + 1) % len(arms)]
        rows.append(exposure(int(ids[m]), other, int(t0[m]) + DAY_MS // 2, f"x{ids[m]}"))
    return rows


@functools.cache
def ship_case() -> Fixture:
    """600 members over 6 days, treatment +60% clicks (+44% plays): the always-valid test
    rejects (on day 1 with this seed). Cached: several test modules read it; do not mutate."""
    return make_fixture(members=600, days=6, seed=9, lifts={"treatment": 0.6})
