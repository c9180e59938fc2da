"""The traffic simulator (`marquee simulate`): the world's members, with their hidden tastes, use
the running system over its real HTTP API - fetch a homepage, look along its rows, choose titles
by the world's behaviour model (artwork included), post what they did as events.

Why it is built this way:
- The schedule is computed before the first request and is a fixed-rate queue: session i leaves
  at its simulated time / `compression`, or one tick (1 / `rate` s) after session i-1, whichever
  is later. It never runs "as fast as possible", so the order and spacing of requests do not
  depend on how fast the server answers.
- Every random choice comes from a Generator seeded by (seed, member, day[, session]), and a
  member's sessions run one after another (each sees the state the previous one left), so the
  same seed and the same responses give the same events, whatever the concurrency.
- Timestamps are wall-clock epoch ms (what the server stamps on its decision and exposure
  records) taken from the schedule, not from when a coroutine happened to run: the session's
  dispatch time plus its simulated offsets / compression. Simulated day of any event:
  (timestamp - start_ms) // day_ms.
- Events are posted when their timestamp comes due (a play's completion an hour of simulated time
  later is posted then), in batches; 503 / 5xx / transport errors are retried with back-off until
  acknowledged (the log deduplicates by event_id, so resending is safe). Events timed after the
  window's end are cut, as the world's own simulator cuts them.

Members are the first N member ids of the world (ids are drawn independently of the members'
traits, so the first N are as good as a random sample and stay the same across runs).
Popularity is the title's global standardized log popularity (the world's per-country noise is
not stored); everything else (taste, theme affinity, activity, runtimes) is the world's own.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from marquee.api import MAX_EVENTS_PER_BATCH
from marquee.dataset import load_dataset
from marquee.home import Paths
from marquee.names import DAY_S
from marquee.schema import (
    ARTWORK_THEMES,
    DEVICES,
    EVENT_TYPES,
    MAX_REQUEST_ID_LENGTH,
    REQUEST_ID_PATTERN,
)
from marquee.settings import assign, check_int, check_number, fail
from producers.world.behaviour import (
    DEFAULT_BEHAVIOUR,
    HOUR_P,
    MAX_POSITIONS,
    MAX_ROWS,
    Behaviour,
    play_logit,
)
from producers.world.event_columns import EventColumns
from producers.world.sampling import sigmoid
from producers.world.simulator import Simulator
from producers.world.viewing_state import ViewingState

__all__ = [
    "Session",
    "Traffic",
    "TrafficSettings",
    "Viewer",
    "World",
    "cli_main",
    "configure_cli",
    "fixed_rate",
    "resolve_dataset",
    "run_traffic",
    "schedule",
]

RETRYABLE = frozenset({429, 500, 502, 503, 504})
PAGE_ATTEMPTS = 3  # a homepage that fails this often is a lost session (counted), not a hang
FLUSH_S = 0.25  # how often due events are posted (wall seconds)
MAX_BACKOFF_S = 8.0
_EVENT_INDEX = re.compile(r"^events\[(\d+)\]")
_REQUEST_ID = re.compile(REQUEST_ID_PATTERN.removesuffix("$") + r"\Z")


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficSettings:
    """One simulation run; validated here so a bad value is refused by name before any request."""

    url: str = "http://127.0.0.1:8000"
    members: int = 2000  # the first N member ids of the world
    days: int = 14  # simulated days
    seed: int = 0
    compression: float = 86400 / 60  # simulated seconds per wall second (a day lasts 60 s)
    rate: float = 25.0  # homepage requests per wall second, at most (the queue's tick)
    concurrency: int = 16  # homepage requests in flight, at most
    timeout: float = 10.0  # seconds per HTTP request
    batch: int = 500  # events per POST /v1/events
    retry_deadline_s: float = 600.0  # a batch still refused after this long is reported lost

    def __post_init__(self) -> None:
        if not isinstance(self.url, str) or not re.match(r"^https?://[^/\s]+", self.url):
            raise fail("url", "an http:// or https:// URL", self.url)
        assign(self, "url", self.url.rstrip("/"))
        for name in ("members", "days", "concurrency"):
            assign(self, name, check_int(name, getattr(self, name), ge=1))
        assign(self, "seed", check_int("seed", self.seed, ge=0))
        assign(self, "batch", check_int("batch", self.batch, ge=1, le=MAX_EVENTS_PER_BATCH))
        for name in ("compression", "rate", "timeout", "retry_deadline_s"):
            assign(self, name, float(check_number(name, getattr(self, name), gt=0)))
        if self.day_ms < 1:
            raise fail("compression", f"at most {DAY_S * 1000} (a simulated day of at least 1 ms)",
                       self.compression)

    @property
    def day_ms(self) -> int:
        """A simulated day in wall milliseconds (what analysis buckets event timestamps by)."""
        return round(DAY_S * 1000 / self.compression)

    @property
    def window_s(self) -> float:
        """The run's length in wall seconds: `days` simulated days."""
        return self.days * DAY_S / self.compression


# ---------------------------------------------------------------------------------------------
# The world, as the simulator needs it
# ---------------------------------------------------------------------------------------------


def _matrix(column: pa.ChunkedArray, what: str, dtype=np.float32) -> np.ndarray:
    """A list column of equal-length lists as a 2-D array, naming the column when it is not one."""
    if column.null_count:
        raise ValueError(f"{what}: {column.null_count} rows have no value (a world dataset has them; "
                         "an imported dataset such as MovieLens has no hidden tastes)")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths.min() != lengths.max() or lengths.min() == 0):
        raise ValueError(f"{what}: expected lists of one length, got lengths {lengths.min()}..{lengths.max()}")
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(dtype)
    return flat.reshape(len(column), -1 if len(column) else 0)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _order(ids: np.ndarray, other: np.ndarray, what: str) -> np.ndarray:
    """Rows of `other` (ids) in the order of `ids`; ValueError naming `what` when one is missing."""
    index = {int(v): i for i, v in enumerate(other.tolist())}
    missing = [int(v) for v in ids.tolist() if int(v) not in index]
    if missing:
        raise ValueError(f"{what}: no row for id(s) {missing[:5]}")
    return np.array([index[int(v)] for v in ids.tolist()], np.int64)


@dataclass
class World:
    """Members (hidden taste, theme affinity, activity, devices) and titles (vectors, popularity,
    runtimes, artwork themes) as numpy columns; member/title i is row i."""

    member_ids: np.ndarray
    country: list[str]
    devices: np.ndarray  # (n, 3) indices into DEVICES, primary first, -1 padded
    device_count: np.ndarray
    taste: np.ndarray  # (n, D) unit
    theme_affinity: np.ndarray  # (n, len(ARTWORK_THEMES))
    activity: np.ndarray  # expected sessions per day
    title_ids: np.ndarray
    vec: np.ndarray  # (T, D) unit
    pop_z: np.ndarray  # standardized log popularity
    release_day: np.ndarray  # days since epoch (NaN: unknown, counted as old)
    runtime: np.ndarray  # minutes (per episode for series)
    runtime_z: np.ndarray  # runtime standardized within its kind
    episodes: np.ndarray
    is_series: np.ndarray
    artwork_theme: dict[str, int]  # artwork_id -> index into ARTWORK_THEMES
    start_day: int  # days since epoch that simulated day 0 stands for (the world's end)
    title_index: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.title_index = {int(t): i for i, t in enumerate(self.title_ids.tolist())}

    @property
    def n_members(self) -> int:
        return int(self.member_ids.size)

    @property
    def n_titles(self) -> int:
        return int(self.title_ids.size)

    @classmethod
    def load(cls, root: Path | str) -> World:
        """A world dataset directory (generate.py `_write`): the dataset plus latent_*.parquet."""
        root = Path(root)
        data = load_dataset(root)
        latent = {}
        for name in ("latent_members", "latent_titles"):
            path = root / f"{name}.parquet"
            if not path.exists():
                raise ValueError(f"dataset: {root} has no {name}.parquet (only a generated world "
                                 "has the hidden tastes the simulator needs)")
            latent[name] = pq.read_table(path)
        end = str(data.manifest.get("end") or "")
        try:
            start_day = (datetime.fromisoformat(end).date() - date(1970, 1, 1)).days
        except ValueError:
            raise ValueError(f"dataset: manifest.json 'end' is not an ISO time, got {end!r}") from None
        return cls.from_tables(data.members, latent["latent_members"], data.titles, latent["latent_titles"],
                               data.artwork, start_day)

    @classmethod
    def from_tables(cls, members: pa.Table, latent_members: pa.Table, titles: pa.Table,
                    latent_titles: pa.Table, artwork: pa.Table, start_day: int) -> World:
        """From the tables of a world (WorldTables or the files of its directory)."""
        member_ids = members.column("member_id").to_numpy().astype(np.int64)
        lm = _order(member_ids, latent_members.column("member_id").to_numpy(), "latent_members.member_id")
        theme = _matrix(latent_members.column("theme_affinity"), "latent_members.theme_affinity")[lm]
        if theme.shape[1] != len(ARTWORK_THEMES):
            raise ValueError(f"latent_members.theme_affinity: expected {len(ARTWORK_THEMES)} themes, "
                             f"got {theme.shape[1]}")
        devices, counts = [], []
        for i, row in enumerate(members.column("devices").to_pylist()):
            known = [DEVICES.index(d) for d in row if d in DEVICES][:3] or [0]
            counts.append(len(known))
            devices.append(known + [-1] * (3 - len(known)))
        activity = members.column("activity").to_numpy(zero_copy_only=False).astype(np.float64)

        title_ids = titles.column("title_id").to_numpy().astype(np.int64)
        lt = _order(title_ids, latent_titles.column("title_id").to_numpy(), "latent_titles.title_id")
        vec = _matrix(latent_titles.column("vector"), "latent_titles.vector")[lt]
        taste = _matrix(members.column("taste"), "members.taste")
        if taste.shape[1] != vec.shape[1]:
            raise ValueError(f"members.taste: {taste.shape[1]} dimensions, titles' vectors have {vec.shape[1]}")
        log_pop = np.log(np.maximum(latent_titles.column("popularity").to_numpy(zero_copy_only=False)[lt], 1e-12))
        pop_z = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-9)
        release = pc.cast(titles.column("release_date"), pa.int32()).to_numpy(zero_copy_only=False)
        runtime = titles.column("runtime_min").to_numpy(zero_copy_only=False).astype(np.float64)
        runtime = np.where(np.isnan(runtime), 90.0, runtime)
        is_series = np.asarray(titles.column("kind").to_pylist()) == "series"
        runtime_z = np.zeros(title_ids.size)
        for kind in (True, False):
            sel = is_series == kind
            if sel.any():
                runtime_z[sel] = (runtime[sel] - runtime[sel].mean()) / (runtime[sel].std() + 1e-9)
        themes = {name: i for i, name in enumerate(ARTWORK_THEMES)}
        artwork_theme = {a: themes[t] for a, t in zip(artwork.column("artwork_id").to_pylist(),
                                                       artwork.column("theme").to_pylist()) if t in themes}
        return cls(
            member_ids=member_ids, country=members.column("country").to_pylist(),
            devices=np.array(devices, np.int64), device_count=np.array(counts, np.int64),
            taste=_unit(taste), theme_affinity=theme.astype(np.float32),
            activity=np.nan_to_num(activity, nan=0.0), title_ids=title_ids, vec=_unit(vec),
            pop_z=pop_z.astype(np.float32), release_day=release.astype(np.float64),
            runtime=runtime, runtime_z=runtime_z.astype(np.float32),
            episodes=np.maximum(titles.column("episodes").to_numpy().astype(np.int64), 1),
            is_series=is_series, artwork_theme=artwork_theme, start_day=int(start_day))


def resolve_dataset(dataset: Path | str | None, home: Path | str | None = None) -> Path:
    """--dataset, else the dataset `marquee up` serves (HOME/serving.json), else HOME/world."""
    if dataset is not None:
        return Path(dataset)
    paths = Paths(Path(home)) if home is not None else Paths()
    record = paths.serving_record
    if record.exists():
        try:
            return Path(json.loads(record.read_text())["dataset"])
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"dataset: {record} holds no {{\"dataset\": DIR}}") from None
    return paths.world


# ---------------------------------------------------------------------------------------------
# The schedule
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """One homepage visit: who, when (simulated and wall), on which device."""

    member: int  # row of the world's members
    member_id: int
    day: int
    k: int  # the member's k-th session that day
    sim_s: float  # simulated seconds since the run's start (as the member intended it)
    hour: int  # hour of day the member chose (the behaviour model's hour)
    device: int  # index into DEVICES
    wall_s: float  # when the queue sends it: wall seconds since the run's start
    request_id: str


def fixed_rate(nominal: np.ndarray, rate: float) -> np.ndarray:
    """Dispatch times of a fixed-rate queue over sorted nominal times: each leaves at its nominal
    time or one tick (1/rate) after the previous one, whichever is later
    (w_i = max(n_i, w_{i-1} + 1/rate), in closed form)."""
    i = np.arange(nominal.size, dtype=np.float64)
    return np.maximum.accumulate(nominal - i / rate) + i / rate if nominal.size else nominal


def _day_factor(world: World, day: int) -> float:
    """The world's weekday rhythm (Simulator._day_factor), for the day simulated day `day` is."""
    return Simulator._day_factor(SimpleNamespace(start_day=world.start_day), day)


def schedule(world: World, settings: TrafficSettings) -> list[Session]:
    """Every session of the run in dispatch order. A member's sessions on a day come from
    default_rng([seed, member_id, day]) alone (count ~ Poisson(activity x weekday factor), hour by
    the world's HOUR_P, device as the world picks it), so they do not depend on N or on timing."""
    if settings.members > world.n_members:
        raise fail("members", f"at most {world.n_members} (the world's members)", settings.members)
    rows: list[tuple[float, int, int, int, int, int, int]] = []
    for day in range(settings.days):
        factor = _day_factor(world, day)
        for m in range(settings.members):
            member_id = int(world.member_ids[m])
            rng = np.random.default_rng([settings.seed, member_id, day])
            count = int(rng.poisson(world.activity[m] * factor))
            if not count:
                continue
            hours = rng.choice(24, size=count, p=HOUR_P)
            seconds = np.sort(hours * 3600 + rng.integers(0, 3600, count) + rng.random(count))
            n_dev = int(world.device_count[m])
            for k, second in enumerate(seconds.tolist()):
                pick = 0 if n_dev == 1 or rng.random() < 0.6 else 1 + int(rng.random() * (n_dev - 1))
                rows.append((day * DAY_S + second, member_id, k, m, day, int(second // 3600),
                             int(world.devices[m, pick])))
    rows.sort()
    nominal = np.array([r[0] for r in rows], np.float64) / settings.compression
    walls = fixed_rate(nominal, settings.rate)
    return [Session(member=m, member_id=member_id, day=day, k=k, sim_s=sim_s, hour=hour, device=device,
                    wall_s=float(wall), request_id=f"sim{settings.seed}-{member_id}-{day}-{k}")
            for (sim_s, member_id, k, m, day, hour, device), wall in zip(rows, walls.tolist())]


# ---------------------------------------------------------------------------------------------
# One session's behaviour: what a member does with a page
# ---------------------------------------------------------------------------------------------


@dataclass
class Shown:
    """The impressions a member looked at on a page, in browsing order."""

    slot: np.ndarray  # row number on the page, from 0
    position: np.ndarray
    title: np.ndarray  # row of the world's titles; -1 for a title the world does not know
    row_id: list[str]
    title_id: list[int]
    artwork: list[str | None]
    propensity: list[float | None]


class Viewer:
    """The world's behaviour model applied to pages the real system serves. It carries the
    `catalog` and `b` attributes Simulator._watch reads, so playback, progress, completions and
    thumbs are drawn by the world's own code."""

    def __init__(self, world: World, behaviour: Behaviour = DEFAULT_BEHAVIOUR) -> None:
        self.world, self.b = world, behaviour
        self.catalog = SimpleNamespace(is_series=world.is_series, runtime_z=world.runtime_z,
                                       runtime=world.runtime, episodes=world.episodes)
        self.states: dict[int, ViewingState] = {}

    def state(self, member: int) -> ViewingState:
        """The member's own viewing state (episodes, fraction, listed), kept across sessions."""
        if member not in self.states:
            self.states[member] = ViewingState(self.world.n_titles)
        return self.states[member]

    def look(self, rng: np.random.Generator, page: dict, device: int) -> Shown:
        """How far the member looks: rows and positions by device, as the world's homepage."""
        b = self.b
        rows = [r for r in page.get("rows") or [] if isinstance(r, dict)]
        n_rows = min(1 + int(rng.binomial(MAX_ROWS - 1, b.more_rows[device])), len(rows))
        seen = np.minimum(2 + rng.poisson(b.positions_seen[device], MAX_ROWS), MAX_POSITIONS)
        out: dict[str, list] = {k: [] for k in ("slot", "position", "title", "row_id", "title_id", "artwork",
                                                "propensity")}
        for slot in range(n_rows):
            items = [i for i in rows[slot].get("items") or [] if _valid_item(i)]
            for index, item in enumerate(items[: int(seen[slot])]):
                art = item.get("artwork") or {}
                artwork_id = art.get("artwork_id") if isinstance(art.get("artwork_id"), str) else None
                p = art.get("propensity")
                ok = artwork_id is not None and isinstance(p, (int, float)) and not isinstance(p, bool) \
                    and 0 < p <= 1
                out["slot"].append(slot)
                out["position"].append(int(item.get("position", index)))
                out["title"].append(self.world.title_index.get(item["title_id"], -1))
                out["row_id"].append(str(rows[slot].get("row_id") or f"row:{slot}"))
                out["title_id"].append(item["title_id"])
                out["artwork"].append(artwork_id)
                out["propensity"].append(float(p) if ok else None)
        return Shown(slot=np.array(out["slot"], np.int64), position=np.array(out["position"], np.int64),
                     title=np.array(out["title"], np.int64), row_id=out["row_id"], title_id=out["title_id"],
                     artwork=out["artwork"], propensity=out["propensity"])

    def play_logits(self, member: int, shown: Shown, hour: int, device: int, now_day: float,
                    episodes_done: np.ndarray, fraction: np.ndarray, listed: np.ndarray) -> np.ndarray:
        """play_logit of each impression (theme affinity of the shown artwork's theme); -inf for
        a title the world does not know."""
        w, b = self.world, self.b
        t = np.maximum(shown.title, 0)
        match = w.vec[t] @ w.taste[member]
        age = now_day - w.release_day[t]
        recency = np.where(np.isnan(age), 0.0, np.exp(-np.maximum(np.nan_to_num(age), 0) / b.recency_days))
        theme = np.array([w.artwork_theme.get(a, -1) if a else -1 for a in shown.artwork], np.int64)
        affinity = np.where(theme >= 0, w.theme_affinity[member][np.maximum(theme, 0)], 0.0)
        completed = episodes_done[t] >= w.episodes[t]
        in_progress = ~completed & ((episodes_done[t] > 0) | (fraction[t] > 0))
        logit = play_logit(b, match, w.pop_z[t], recency, affinity, shown.position, shown.slot, hour, device,
                           in_progress, completed, listed[t])
        return np.where(shown.title >= 0, logit, -np.inf)

    def browse(self, rng: np.random.Generator, member: int, page: dict, hour: int, device: int,
               now_day: float) -> list[tuple[float, dict]]:
        """What the member does with the page: (simulated ms after the page arrived, event without
        id / timestamp / request_id), in the order drawn. Updates the member's viewing state."""
        w, b = self.world, self.b
        shown = self.look(rng, page, device)
        state = self.state(member)
        episodes_done, fraction, listed = state.lookup(np.array([member]))
        n = shown.title.size
        shown_at = 1000.0 + shown.slot * 4000 + np.arange(n) * 500 if n else np.zeros(0)
        events: list[tuple[float, dict]] = []
        for i in range(n):
            event = {"type": "impression", "title_id": shown.title_id[i], "row": shown.row_id[i],
                     "position": int(shown.position[i])}
            if shown.propensity[i] is not None:
                event.update(artwork=shown.artwork[i], propensity=shown.propensity[i])
            events.append((float(shown_at[i]), event))

        logit = self.play_logits(member, shown, hour, device, now_day, episodes_done[0], fraction[0], listed[0])
        played = rng.random(n) < sigmoid(logit)
        played &= np.cumsum(played) <= b.max_plays_per_session

        known = shown.title >= 0
        t = np.maximum(shown.title, 0)
        match = w.vec @ w.taste[member]  # (T,)
        completed = episodes_done[0] >= w.episodes
        add = known & ~played & ~listed[0, t] & ~completed[t]
        add &= rng.random(n) < sigmoid(b.list_add_bias + b.list_add_match * match[t])
        add &= ~_repeated(shown.title, add)
        for i in np.flatnonzero(add).tolist():
            listed[0, t[i]] = True
            events.append((float(shown_at[i]) + 1500, {"type": "my_list_add", "title_id": shown.title_id[i],
                                                       "row": shown.row_id[i], "position": int(shown.position[i])}))

        p = np.flatnonzero(played)
        out = EventColumns()
        Simulator._watch(  # the world's playback model, on this one session (p_art: impression index)
            self, rng, out, np.array([member]), np.zeros(1, np.int64), np.array([device]),
            np.zeros(p.size, np.int64), t[p], shown_at[p] + rng.integers(2000, 20000, p.size), shown.slot[p],
            shown.position[p], p, match[None, :], completed[None, :], episodes_done, fraction, listed)
        state.store(np.array([member]), episodes_done, fraction, listed)
        return events + self._watched(out.concat(), shown)

    def _watched(self, c: dict[str, np.ndarray], shown: Shown) -> list[tuple[float, dict]]:
        """Simulator event columns (plays, progress, completions, thumbs, list removals) as events."""
        out = []
        for j in range(c["ts"].size):
            kind = EVENT_TYPES[int(c["type"][j])]
            event: dict[str, Any] = {"type": kind, "title_id": int(self.world.title_ids[int(c["title"][j])])}
            if kind == "play":
                i = int(c["art"][j])  # the impression the play started from
                event.update(row=shown.row_id[i], position=int(shown.position[i]))
                if shown.artwork[i] is not None:
                    event["artwork"] = shown.artwork[i]
            if not np.isnan(c["value"][j]):
                event["value"] = float(c["value"][j])
            if c["payload"][j] >= 0:
                event["payload"] = {"episode": int(c["payload"][j]) + 1}
            out.append((float(c["ts"][j]), event))
        return out


def _valid_item(item: Any) -> bool:
    return isinstance(item, dict) and type(item.get("title_id")) is int and item["title_id"] >= 0 \
        and (type(item.get("position", 0)) is int and item.get("position", 0) >= 0)


def _repeated(titles: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """True where `mask` is set for a title already set earlier (a title shown in two rows)."""
    seen: set[int] = set()
    out = np.zeros(titles.size, bool)
    for i in np.flatnonzero(mask).tolist():
        out[i] = int(titles[i]) in seen
        seen.add(int(titles[i]))
    return out


# ---------------------------------------------------------------------------------------------
# The run: a fixed-rate queue of sessions, an outbox of timed events, counters
# ---------------------------------------------------------------------------------------------


@dataclass
class _Variant:
    members: set = field(default_factory=set)
    pages: int = 0
    plays: int = 0
    completions: int = 0

    def summary(self) -> dict[str, float | int]:
        n = len(self.members)
        return {"members": n, "pages": self.pages, "plays": self.plays, "completions": self.completions,
                "plays_per_member": round(self.plays / n, 4) if n else 0.0,
                "completions_per_member": round(self.completions / n, 4) if n else 0.0}


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


class Traffic:
    """One run against `settings.url`. `transport`, `clock` and `sleep` are injectable so tests
    run it against an in-process fake server on a fake clock."""

    def __init__(self, settings: TrafficSettings, world: World, *, behaviour: Behaviour = DEFAULT_BEHAVIOUR,
                 transport: httpx.AsyncBaseTransport | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep, progress: bool = False,
                 log: TextIO | None = sys.stderr) -> None:
        self.s, self.world = settings, world
        self.viewer = Viewer(world, behaviour)
        self.transport, self.clock, self.sleep = transport, clock, sleep
        self.progress, self.log = progress, log
        self.sessions = schedule(world, settings)
        self.start_s = 0.0
        self.start_ms = 0
        self.outbox: list[tuple[int, int, dict]] = []  # (timestamp ms, order, event): a heap
        self.pushed = 0
        self.requests = 0
        self.pages = 0
        self.sessions_failed = 0
        self.sessions_late = 0
        self.max_lag_s = 0.0
        self.errors: dict[str, Counter] = {"homepage": Counter(), "events": Counter()}
        self.events = Counter()
        self.by_type = Counter()
        self.rejections: list[str] = []
        self.variants: dict[str, dict[str, _Variant]] = {}
        self.reported_days = 0
        self._sessions_done = False
        self._bar: tqdm | None = None

    # -- clock ----------------------------------------------------------------------------------

    def _now(self) -> float:
        return self.clock() - self.start_s

    async def _until(self, offset_s: float) -> None:
        wait = offset_s - self._now()
        if wait > 0:
            await self.sleep(wait)

    def _day_of(self, wall_s: float) -> int:
        return int(wall_s * self.s.compression // DAY_S)

    # -- the run --------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        s = self.s
        self.start_s = self.clock()
        self.start_ms = round(self.start_s * 1000)
        in_window = sum(1 for x in self.sessions if x.wall_s < s.window_s)
        self._say(f"simulate: {s.members} members, {s.days} days of {s.day_ms} ms (day_ms={s.day_ms}), "
                  f"start_ms={self.start_ms}, {len(self.sessions)} sessions at <= {s.rate:g}/s")
        if in_window < len(self.sessions):
            self._say(f"simulate: warning: {len(self.sessions) - in_window} sessions fall after the window at "
                      f"rate {s.rate:g}/s (raise --rate); they are skipped")
        self._bar = tqdm(total=in_window, unit="page", file=sys.stderr, disable=not self.progress,
                         dynamic_ncols=True, desc="simulate")
        limits = httpx.Limits(max_connections=s.concurrency + 2, max_keepalive_connections=s.concurrency + 2)
        try:
            async with httpx.AsyncClient(base_url=s.url, timeout=s.timeout, transport=self.transport,
                                         limits=limits) as client:
                poster = asyncio.create_task(self._post_loop(client))
                try:
                    await self._dispatch(client)
                finally:
                    self._sessions_done = True
                await poster
        finally:
            self._bar.close()
        self._report(self.s.days)
        return self.summary()

    async def _dispatch(self, client: httpx.AsyncClient) -> None:
        """Send each session at its scheduled time; a member's sessions run one after another."""
        gate = asyncio.Semaphore(self.s.concurrency)
        tails: dict[int, asyncio.Task] = {}
        tasks: list[asyncio.Task] = []
        for session in self.sessions:
            if session.wall_s >= self.s.window_s:
                self.sessions_late += 1
                continue
            await self._until(session.wall_s)
            self._report(self._day_of(session.wall_s))
            await gate.acquire()
            self.max_lag_s = max(self.max_lag_s, self._now() - session.wall_s)
            task = asyncio.create_task(self._session(client, session, tails.get(session.member)))
            task.add_done_callback(lambda _: gate.release())
            tails[session.member] = task
            tasks.append(task)
        await asyncio.gather(*tasks)

    async def _session(self, client: httpx.AsyncClient, session: Session, before: asyncio.Task | None) -> None:
        if before is not None:
            await asyncio.wait([before])  # the member's previous session first: its state is this one's
        page = await self._fetch(client, session)
        if page is None:
            self.sessions_failed += 1
        else:
            self._handle(session, page)
        if self._bar is not None:
            self._bar.update(1)

    async def _fetch(self, client: httpx.AsyncClient, session: Session) -> dict | None:
        params = {"member_id": session.member_id, "request_id": session.request_id,
                  "device": DEVICES[session.device]}
        for attempt in range(PAGE_ATTEMPTS):
            self.requests += 1
            try:
                response = await client.get("/v1/homepage", params=params)
            except httpx.TimeoutException:
                self.errors["homepage"]["timeout"] += 1
            except httpx.TransportError:
                self.errors["homepage"]["transport"] += 1
            else:
                if response.status_code == 200:
                    try:
                        page = response.json()
                    except ValueError:
                        page = None
                    if isinstance(page, dict) and isinstance(page.get("rows"), list):
                        return page
                    self.errors["homepage"]["bad_page"] += 1
                    return None
                self.errors["homepage"][str(response.status_code)] += 1
                if response.status_code not in RETRYABLE:
                    return None
                if attempt + 1 < PAGE_ATTEMPTS:
                    await self.sleep(self._backoff(attempt, response))
                continue
            if attempt + 1 < PAGE_ATTEMPTS:
                await self.sleep(self._backoff(attempt, None))
        return None

    def _handle(self, session: Session, page: dict) -> None:
        """Draw what the member does with the page; queue the events; count engagement."""
        self.pages += 1
        s, world = self.s, self.world
        rng = np.random.default_rng([s.seed, session.member_id, session.day, session.k, 1])
        now_day = world.start_day + session.sim_s / DAY_S
        drawn = self.viewer.browse(rng, session.member, page, session.hour, session.device, now_day)
        order = sorted(range(len(drawn)), key=lambda i: (drawn[i][0], i))
        base_ms = self.start_ms + round(session.wall_s * 1000)
        end_ms = self.start_ms + s.days * s.day_ms
        plays = completions = 0
        member = session.member
        served = page.get("request_id")  # the id the server's decision record carries
        request_id = served if isinstance(served, str) and len(served) <= MAX_REQUEST_ID_LENGTH \
            and _REQUEST_ID.match(served) else session.request_id
        common = {"member_id": session.member_id, "device": DEVICES[session.device],
                  "country": world.country[member], "request_id": request_id}
        for n, i in enumerate(order):
            offset, event = drawn[i]
            ts = base_ms + int(offset / s.compression)
            if ts >= end_ms:
                self.events["cut"] += 1
                continue
            full = {"event_id": f"{session.request_id}-{n}", **common, **event, "timestamp": ts}
            heapq.heappush(self.outbox, (ts, self.pushed, full))
            self.pushed += 1
            self.events["generated"] += 1
            self.by_type[event["type"]] += 1
            plays += event["type"] == "play"
            completions += event["type"] == "completion"
        experiments = page.get("experiments")
        for experiment, variant in (experiments.items() if isinstance(experiments, dict) else ()):
            v = self.variants.setdefault(str(experiment), {}).setdefault(str(variant), _Variant())
            v.members.add(session.member_id)
            v.pages += 1
            v.plays += plays
            v.completions += completions

    # -- posting --------------------------------------------------------------------------------

    async def _post_loop(self, client: httpx.AsyncClient) -> None:
        """Post events as their timestamps come due, until the sessions are over and all are sent."""
        while True:
            now_ms = self.start_ms + self._now() * 1000
            due: list[dict] = []
            while self.outbox and self.outbox[0][0] <= now_ms:
                due.append(heapq.heappop(self.outbox)[2])
            for lo in range(0, len(due), self.s.batch):
                await self._post(client, due[lo: lo + self.s.batch])
            if self._sessions_done and not self.outbox:
                return
            wait = FLUSH_S
            if self.outbox:
                wait = min(wait, max((self.outbox[0][0] - now_ms) / 1000, 0.0))
            await self.sleep(max(wait, 0.001))

    async def _post(self, client: httpx.AsyncClient, batch: list[dict]) -> None:
        """One batch until acknowledged: retried on shedding and transport errors with back-off;
        events a 422 names are dropped (and counted), the rest resent."""
        began = self._now()
        attempt = 0
        while batch:
            try:
                response = await client.post("/v1/events", json={"events": batch})
            except httpx.TimeoutException:
                self.errors["events"]["timeout"] += 1
                response = None
            except httpx.TransportError:
                self.errors["events"]["transport"] += 1
                response = None
            if response is not None and response.status_code == 200:
                answer = _json(response)
                self.events["posted"] += len(batch)
                self.events["accepted"] += int(answer.get("accepted", 0))
                self.events["duplicates"] += int(answer.get("duplicates", 0))
                return
            if response is not None:
                self.errors["events"][str(response.status_code)] += 1
                if response.status_code not in RETRYABLE:
                    batch = self._refused(batch, response)
                    continue
            if self._now() - began > self.s.retry_deadline_s:
                self.events["lost"] += len(batch)
                self._say(f"simulate: error: {len(batch)} events not acknowledged after "
                          f"{self.s.retry_deadline_s:g}s of retries")
                return
            await self.sleep(self._backoff(attempt, response))
            attempt += 1

    def _refused(self, batch: list[dict], response: httpx.Response) -> list[dict]:
        """What to resend after a 4xx: the batch without the events the answer names (all or
        nothing: the others were not stored), or nothing when it names none."""
        answer = _json(response)
        if len(self.rejections) < 5:
            self.rejections.append(f"{response.status_code}: {str(answer.get('error', response.text))[:300]}")
        fields = answer.get("fields") if isinstance(answer.get("fields"), list) else []
        bad = {int(m.group(1)) for f in fields if isinstance(f, str) and (m := _EVENT_INDEX.match(f))}
        bad = {i for i in bad if i < len(batch)}
        if response.status_code != 422 or not bad:
            self.events["rejected"] += len(batch)
            return []
        self.events["rejected"] += len(bad)
        return [e for i, e in enumerate(batch) if i not in bad]

    def _backoff(self, attempt: int, response: httpx.Response | None) -> float:
        hinted = _retry_after(response) if response is not None else None
        base = min(MAX_BACKOFF_S, 0.25 * 2 ** attempt)
        return min(30.0, hinted) if hinted is not None else base

    # -- reporting ------------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        if self.log is not None:
            tqdm.write(line, file=self.log)

    def _report(self, upto_day: int) -> None:
        """A line per variant of each experiment seen, for each simulated day that has ended."""
        while self.reported_days < min(upto_day, self.s.days):
            self.reported_days += 1
            day = self.reported_days
            if not self.variants:
                self._say(f"day {day}/{self.s.days}: {self.pages} pages, no experiments in the pages")
            for experiment in sorted(self.variants):
                for variant, v in sorted(self.variants[experiment].items()):
                    x = v.summary()
                    self._say(f"day {day}/{self.s.days} {experiment}={variant}: {x['members']} members, "
                              f"{x['pages']} pages, {x['plays_per_member']:.2f} plays/member, "
                              f"{x['completions_per_member']:.2f} completions/member")

    def summary(self) -> dict[str, Any]:
        s = self.s
        events = {key: int(self.events[key]) for key in ("generated", "posted", "accepted", "duplicates",
                                                          "rejected", "lost", "cut")}
        return {
            "url": s.url, "members": s.members, "days": s.days, "seed": s.seed, "compression": s.compression,
            "rate": s.rate, "day_ms": s.day_ms, "start_ms": self.start_ms,
            "sessions": len(self.sessions), "sessions_late": self.sessions_late,
            "sessions_failed": self.sessions_failed, "requests": self.requests, "pages": self.pages,
            "errors": {where: dict(sorted(c.items())) for where, c in self.errors.items()},
            "events": {**events, "by_type": dict(sorted(self.by_type.items()))},
            "rejections": list(self.rejections),
            "max_lag_s": round(self.max_lag_s, 3),
            "experiments": {e: {v: x.summary() for v, x in sorted(vs.items())}
                            for e, vs in sorted(self.variants.items())},
            "elapsed_s": round(self._now(), 3),
        }


def _json(response: httpx.Response) -> dict:
    try:
        answer = response.json()
    except ValueError:
        return {}
    return answer if isinstance(answer, dict) else {}


def run_traffic(settings: TrafficSettings, world: World, **kwargs: Any) -> dict[str, Any]:
    """Run the simulation to its end (blocking); the summary dict (JSON-serializable)."""
    return asyncio.run(Traffic(settings, world, **kwargs).run())


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------

_DEFAULT = TrafficSettings()


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=_DEFAULT.url, help=f"the system's HTTP API (default {_DEFAULT.url})")
    parser.add_argument("--members", type=int, default=_DEFAULT.members,
                        help=f"the first N member ids of the world (default {_DEFAULT.members})")
    parser.add_argument("--days", type=int, default=_DEFAULT.days, help=f"simulated days (default {_DEFAULT.days})")
    parser.add_argument("--seed", type=int, default=_DEFAULT.seed, help="random seed; same seed and answers, same events")
    parser.add_argument("--compression", type=float, default=_DEFAULT.compression,
                        help=f"simulated seconds per wall second (default {_DEFAULT.compression:g}: a day in 60 s)")
    parser.add_argument("--rate", type=float, default=_DEFAULT.rate,
                        help=f"homepage requests per wall second at most: the queue's fixed tick (default {_DEFAULT.rate:g})")
    parser.add_argument("--concurrency", type=int, default=_DEFAULT.concurrency,
                        help=f"homepage requests in flight at most (default {_DEFAULT.concurrency})")
    parser.add_argument("--timeout", type=float, default=_DEFAULT.timeout, help="seconds per HTTP request")
    parser.add_argument("--dataset", type=Path, default=None,
                        help="the world's dataset directory (default: the one `marquee up` serves)")
    parser.add_argument("--home", type=Path, default=None, help="Marquee home (default $MARQUEE_HOME)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or daily lines on stderr")


def cli_main(args: argparse.Namespace) -> int:
    try:
        settings = TrafficSettings(url=args.url, members=args.members, days=args.days, seed=args.seed,
                                   compression=args.compression, rate=args.rate, concurrency=args.concurrency,
                                   timeout=args.timeout)
        world = World.load(resolve_dataset(args.dataset, args.home))
        traffic = Traffic(settings, world, progress=not args.quiet, log=None if args.quiet else sys.stderr)
    except ValueError as exc:
        print(f"marquee simulate: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(traffic.run())
    except KeyboardInterrupt:
        print("marquee simulate: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        e = summary["events"]
        print(f"{summary['pages']:,} pages of {summary['sessions']:,} sessions, {e['accepted']:,} events accepted "
              f"({e['duplicates']:,} duplicates, {e['rejected']:,} rejected, {e['lost']:,} lost), "
              f"day_ms={summary['day_ms']}, errors {summary['errors']}, {summary['elapsed_s']:.1f}s")
        for experiment, variants in summary["experiments"].items():
            for variant, x in variants.items():
                print(f"  {experiment}={variant}: {x['members']} members, {x['plays_per_member']:.3f} plays/member, "
                      f"{x['completions_per_member']:.3f} completions/member")
    ok = summary["pages"] > 0 and summary["events"]["lost"] == 0 and summary["events"]["rejected"] == 0
    return 0 if ok else 1
