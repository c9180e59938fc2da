"""Read an experiment off the event log: per-member metrics, lifts, CUPED, mSPRT, guardrails, a verdict.

One call, `analyze(events, experiment, runtimes=...)`, returns a JSON-ready dict (schema 1) that
`experiments/report.py` renders and the CLI prints.

Who counts: members with an `exposure` event of the experiment (assignment comes from exposures
only; the `experiments` column of client events is the client's word and is never read). A
member's variant is the one of their first exposure; a member exposed to a second variant (the
file changed under them) stays in the first and is counted in `crossovers`. What counts: client
events at or after the member's first exposure (and before `now_ms`, by default the wall clock at
the call: an event dated in the future, which a client may post, is not read), so members assigned but not
yet shown anything do not dilute the effect (Kohavi, Tang & Xu 2020, ch. 20).

Two stages, so the heavy part scales and the statistics stay exact:

1. aggregation (engine "arrow" in-process over a pa.Table, or "ray" with Ray Data over a
   Dataset or Parquet paths): the exposure cohort, then per member and look-day the additive
   increments of every metric (`member_day_rows`), and per variant the serving health of its
   decision records (`guardrail_rows`). Both engines run the same functions on the same rows
   per member, sorted first, so they give identical numbers.
2. statistics in-process on the small per-member table: experiments/stats.py and
   experiments/sequential.py.

Days: look k (k = 0, 1, ...) is the end of day k of the experiment, T0 + (k + 1) day_ms with T0 its
first exposure (the last look is at the end of the data, or `now_ms`); a member's active days are
counted from their own first exposure. day_ms is a parameter so compressed simulations work.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats as scipy_stats

from experiments.sequential import group_sequential_from_moments, msprt_from_moments
from experiments.spec import Experiment
from experiments.stats import (
    ALPHA,
    SRM_ALPHA,
    Comparison,
    GuardrailLimits,
    check_alpha,
    check_guardrails,
    compare_means,
    compare_ratios,
    cuped,
    cuped_adjusted,
    ratio_moments,
    sample_ratio_mismatch,
)
from marquee.schema import SERVER_EVENT_TYPES
from marquee.settings import SettingsError, check_choice, check_int, check_number

SCHEMA_VERSION = 1
DAY_MS = 86_400_000
MAX_LOOKS = 10_000  # daily looks an analysis walks (27 years of days): more means a wrong day_ms
ENGINES = ("arrow", "ray")
DEFAULT_LIMITS = GuardrailLimits()  # frozen: safe to share as a default
RAY_PARTITIONS = 8  # hash partitions of the Ray shuffles (Ray's default 200 costs seconds on a small log)

# metric -> ("mean", column) or ("ratio", numerator column, denominator column)
METRICS: dict[str, tuple[str, ...]] = {
    "plays_per_member": ("mean", "plays"),
    "minutes_watched": ("mean", "minutes"),
    "active_days": ("mean", "active_days"),
    "completion_rate": ("ratio", "completions", "plays"),
    "homepage_ctr": ("ratio", "home_plays", "home_impressions"),
}
CUPED_METRICS = ("plays_per_member", "minutes_watched")
COUNT_COLUMNS = ("plays", "completions", "home_plays", "home_impressions", "active_days")
ROW_SCHEMA = pa.schema([("member_id", pa.int64()), ("look", pa.int64()),
                        *[(c, pa.int64()) for c in COUNT_COLUMNS], ("minutes", pa.float64()),
                        ("last_ts", pa.int64())])
PRE_LOOK = -1  # the row of a member's pre-period (the CUPED covariate)
EXPOSURE_SCHEMA = pa.schema([("member_id", pa.int64()), ("ts", pa.int64()), ("variant", pa.string())])
DECISION_SCHEMA = pa.schema([("variant", pa.string()), ("latency_ms", pa.float64()), ("degraded", pa.bool_())])
GUARDRAIL_SCHEMA = pa.schema([("variant", pa.string()), ("pages", pa.int64()), ("degraded_pages", pa.int64()),
                              ("latency_pages", pa.int64()), ("p99_latency_ms", pa.float64())])
WATCH_TYPES = ("progress", "completion")
EPISODE_RE = r'"episode"\s*:\s*(?P<episode>[0-9]{1,9})'

# events column -> the Arrow type families it may have (checked before anything is read)
REQUIRED_COLUMNS = {"member_id": "integer", "title_id": "integer", "type": "string",
                    "timestamp": "timestamp", "value": "number", "experiments": "string",
                    "payload": "string"}
OPTIONAL_COLUMNS = {"request_id": "string"}  # older files lack it (marquee.schema.ADDED_EVENT_COLUMNS)


# -- input checks --------------------------------------------------------------------------------


def _type_ok(family: str, dtype: pa.DataType) -> bool:
    if pa.types.is_null(dtype):
        return True
    return {"integer": pa.types.is_integer, "string": lambda t: pa.types.is_string(t) or pa.types.is_large_string(t),
            "number": lambda t: pa.types.is_floating(t) or pa.types.is_integer(t),
            "timestamp": lambda t: pa.types.is_timestamp(t) or pa.types.is_int64(t)}[family](dtype)


def check_event_schema(schema: pa.Schema) -> None:
    """Refuse events without the columns the analysis reads, or with a column of the wrong type."""
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise ValueError(f"events: missing column(s) {', '.join(missing)} (expected STORED_EVENT_SCHEMA)")
    for name, family in {**REQUIRED_COLUMNS, **OPTIONAL_COLUMNS}.items():
        if name in schema.names and not _type_ok(family, schema.field(name).type):
            raise ValueError(f"events.{name}: expected a {family} column, got {schema.field(name).type}")


def narrow(batch: pa.Table) -> pa.Table:
    """The columns the analysis reads, typed one way: `ts` in epoch ms (int64), a null
    request_id column for files written before it existed."""
    check_event_schema(batch.schema)
    stamp = batch.column("timestamp")
    if pa.types.is_timestamp(stamp.type):
        stamp = pc.cast(stamp, pa.timestamp("ms", tz=stamp.type.tz), safe=False).cast(pa.int64())
    request = (batch.column("request_id").cast(pa.string()) if "request_id" in batch.column_names
               else pa.nulls(batch.num_rows, pa.string()))
    return pa.table({
        "member_id": batch.column("member_id").cast(pa.int64()),
        "title_id": batch.column("title_id").cast(pa.int64()),
        "type": batch.column("type").cast(pa.string()),
        "ts": stamp.cast(pa.int64()),
        "value": batch.column("value").cast(pa.float64()),
        "experiments": batch.column("experiments").cast(pa.string()),
        "payload": batch.column("payload").cast(pa.string()),
        "request_id": request,
    })


@dataclass(frozen=True)
class Options:
    """The checked scalar arguments of `analyze`, passed to the aggregation functions."""

    day_ms: int
    pre_ms: int | None  # None: the whole history before each member's first exposure
    now_ms: int | None
    alpha: float
    cutoff_ms: int  # events dated at or after it are not read: now_ms, else the wall clock at the call


def _check_options(experiment: Any, day_ms: Any, alpha: Any, pre_days: Any, primary: Any,
                   guardrails: Any, now_ms: Any, engine: Any, control: Any, sequential_mde: Any,
                   mixing_sd: Any) -> Options:
    if not isinstance(experiment, Experiment):
        raise ValueError(f"experiment: expected an experiments.spec.Experiment, got {type(experiment).__name__}")
    if len(experiment.arms) < 2:
        raise ValueError(f"experiment: {experiment.name!r} has one variant; nothing to compare")
    try:
        check_choice("engine", engine, ENGINES)
        check_choice("primary", primary, tuple(METRICS))
        day_ms = check_int("day_ms", day_ms, ge=1)
        if pre_days is not None:
            pre_days = check_number("pre_days", pre_days, ge=0)
        if now_ms is not None:
            now_ms = check_int("now_ms", now_ms)
        if control is not None:
            check_choice("control", control, tuple(v.name for v in experiment.arms))
        check_number("sequential_mde", sequential_mde, gt=0)
        if mixing_sd is not None:
            check_number("mixing_sd", mixing_sd, gt=0)
    except SettingsError as exc:
        raise ValueError(str(exc)) from None
    alpha = check_alpha("alpha", alpha)
    if not isinstance(guardrails, GuardrailLimits):
        raise ValueError(f"guardrails: expected experiments.stats.GuardrailLimits, got {type(guardrails).__name__}")
    cutoff_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    pre_ms = None if pre_days is None else round(pre_days * day_ms)
    return Options(day_ms=day_ms, pre_ms=pre_ms, now_ms=now_ms, alpha=alpha,
                   cutoff_ms=cutoff_ms)


def runtime_table(runtimes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Sorted title ids and their runtime_min (per episode for a series) from the titles table
    (TITLE_SCHEMA) or a mapping title_id -> minutes; a null runtime reads as 0 minutes."""
    if isinstance(runtimes, pa.Table):
        missing = [c for c in ("title_id", "runtime_min") if c not in runtimes.column_names]
        if missing:
            raise ValueError(f"runtimes: missing column(s) {', '.join(missing)} (expected titles.parquet)")
        ids = runtimes.column("title_id").to_numpy(zero_copy_only=False).astype(np.int64)
        minutes = pc.fill_null(runtimes.column("runtime_min").cast(pa.float64()), 0.0).to_numpy()
    elif isinstance(runtimes, Mapping):
        try:
            ids = np.array([int(k) for k in runtimes], dtype=np.int64)
            minutes = np.array([float(v) for v in runtimes.values()], dtype=float)
        except (TypeError, ValueError):
            raise ValueError("runtimes: expected a mapping of title_id -> runtime in minutes") from None
    else:
        raise ValueError(f"runtimes: expected the titles table or a mapping title_id -> minutes, "
                         f"got {type(runtimes).__name__}")
    if not np.all(np.isfinite(minutes)) or np.any(minutes < 0):
        raise ValueError("runtimes: every runtime must be a finite number of minutes >= 0")
    order = np.argsort(ids, kind="stable")
    ids, minutes = ids[order], minutes[order]
    if len(ids) > 1 and np.any(ids[1:] == ids[:-1]):
        raise ValueError("runtimes: a title_id appears twice")
    return ids, minutes


# -- stage 1: the exposure cohort ------------------------------------------------------------------


def _np(column: pa.ChunkedArray | pa.Array, fill: Any = None) -> np.ndarray:
    if fill is not None:
        column = pc.fill_null(column, fill)
    return column.to_numpy(zero_copy_only=False)


def exposure_rows(batch: pa.Table, experiment: str) -> pa.Table:
    """The exposures of `experiment` in a batch of narrowed events: member_id, ts, variant."""
    rows = batch.filter(pc.equal(batch.column("type"), "exposure"))
    members, stamps, variants = [], [], []
    for member, ts, text in zip(_np(rows.column("member_id")), _np(rows.column("ts")),
                                rows.column("experiments").to_pylist()):
        try:
            assignment = orjson.loads(text) if text is not None else None
        except orjson.JSONDecodeError:
            raise ValueError(f"events.experiments: an exposure of member {member} is not JSON: {text!r}") from None
        if not isinstance(assignment, dict):
            raise ValueError(f"events.experiments: an exposure of member {member} holds {text!r}, "
                             "expected {experiment: variant}")
        variant = assignment.get(experiment)
        if variant is not None:
            members.append(int(member))
            stamps.append(int(ts))
            variants.append(str(variant))
    return pa.table({"member_id": pa.array(members, pa.int64()), "ts": pa.array(stamps, pa.int64()),
                     "variant": pa.array(variants, pa.string())}, schema=EXPOSURE_SCHEMA)


@dataclass(frozen=True)
class Cohort:
    """The exposed members, sorted by id: each one's variant (index into `variants`), first
    exposure time, and whether they were later exposed to another variant."""

    variants: tuple[str, ...]
    member_id: np.ndarray
    variant: np.ndarray
    t0: np.ndarray
    crossover: np.ndarray

    @property
    def start_ms(self) -> int:
        return int(self.t0.min())

    def arrays(self) -> dict[str, np.ndarray]:
        """What the aggregation workers need (plain arrays, cheap to ship)."""
        return {"member_id": self.member_id, "t0": self.t0}


def build_cohort(exposures: pa.Table, experiment: Experiment, cutoff_ms: int) -> Cohort:
    """Each member's first exposure (ties in time broken by variant name, so the result does not
    depend on row order); crossovers are members exposed to more than one variant."""
    known = tuple(v.name for v in experiment.arms)
    exposures = exposures.filter(pc.less(exposures.column("ts"), cutoff_ms))
    if exposures.num_rows == 0:
        raise ValueError(f"experiment: no exposure events of {experiment.name!r} in events"
                         + f" before {cutoff_ms} ms")
    unknown = sorted(set(exposures.column("variant").to_pylist()) - set(known))
    if unknown:
        raise ValueError(f"events.experiments: exposures to variant(s) {unknown} that experiment "
                         f"{experiment.name!r} does not have (it has {list(known)})")
    member = _np(exposures.column("member_id"))
    ts = _np(exposures.column("ts"))
    code = np.searchsorted(np.array(known), np.array(exposures.column("variant").to_pylist()))
    order = np.lexsort((code, ts, member))
    member, ts, code = member[order], ts[order], code[order]
    starts = _group_starts(member)
    # variants per member: distinct (member, variant) pairs, sorted by member then variant
    pair = np.lexsort((code, member))
    pairs = np.zeros(len(pair), np.int64)
    pairs[_group_starts(member[pair], code[pair])] = 1
    crossover = np.add.reduceat(pairs, _group_starts(member[pair])) > 1
    return Cohort(variants=known, member_id=member[starts], variant=code[starts], t0=ts[starts],
                  crossover=crossover)


# -- stage 1: per member and look-day --------------------------------------------------------------


def relevant_events(batch: pa.Table, cohort: Mapping[str, np.ndarray], options: Options) -> pa.Table:
    """The client events of exposed members from the start of their pre-period to now (what
    `member_day_rows` reads); a cheap filter before the shuffle by member."""
    client = pc.invert(pc.fill_null(pc.is_in(batch.column("type"), pa.array(SERVER_EVENT_TYPES)), True))
    batch = batch.filter(client)
    member = _np(batch.column("member_id"))
    ts = _np(batch.column("ts"))
    ids = cohort["member_id"]
    at = np.minimum(np.searchsorted(ids, member), len(ids) - 1)
    keep = ids[at] == member
    if options.pre_ms is not None:
        keep &= ts >= cohort["t0"][at] - options.pre_ms
    keep &= ts < options.cutoff_ms
    return batch.filter(pa.array(keep)).select(["member_id", "title_id", "type", "ts", "value",
                                                "payload", "request_id"])


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Start indices of runs of equal keys in arrays already sorted by them."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64)
    change = np.zeros(n, bool)
    change[0] = True
    for key in keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def _segmented_cummax(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The running maximum of `values` restarting at each start: a Hillis-Steele scan (log2 of
    the longest run vectorised passes; max is exact, so any batching of members gives the same)."""
    out = values.copy()
    if not len(out):
        return out
    run_start = np.repeat(starts, np.diff(np.r_[starts, len(values)]))
    index = np.arange(len(values))
    shift = 1
    while True:
        reach = index[index - shift >= run_start]
        if not len(reach):
            return out
        out[reach] = np.maximum(out[reach], out[reach - shift])
        shift *= 2


def member_day_rows(batch: pa.Table, cohort: Mapping[str, np.ndarray], runtime_ids: np.ndarray,
                    runtime_min: np.ndarray, options: Options, start_ms: int) -> pa.Table:
    """Per (member, look) the increments of every metric's parts, plus a look -1 row of the
    pre-period (ROW_SCHEMA); `batch` holds `relevant_events` of whole members.

    Minutes watched: a member's minutes are the sum over what they watched of the furthest
    fraction reached (progress value, 1.0 at a completion) times its runtime. A series' runtime_min
    is per episode, so each episode is its own item: (title, payload "episode"); a progress or
    completion without an episode in its payload counts as one episode of the title. (The world
    simulator numbers episodes up to 12 and writes later ones as 12, so a long binge of one
    series is undercounted, never overcounted.) The pre-period's minutes are computed the same
    way over its own window; after exposure the furthest fraction counts from the exposure on.
    A title without a runtime counts 0 minutes.
    """
    member = _np(batch.column("member_id"))
    ts = _np(batch.column("ts"))
    kind = batch.column("type")
    ids = cohort["member_id"]
    t0 = cohort["t0"][np.searchsorted(ids, member)] if len(member) else np.zeros(0, np.int64)
    post = ts >= t0
    look = np.where(post, (ts - start_ms) // options.day_ms, PRE_LOOK)
    home = _np(pc.is_valid(batch.column("request_id")))
    is_play = _np(pc.equal(kind, "play"), False)
    parts = {
        "plays": is_play,
        "completions": _np(pc.equal(kind, "completion"), False),
        "home_plays": is_play & home,
        "home_impressions": _np(pc.equal(kind, "impression"), False) & home,
        "active_days": np.zeros(len(member), bool),
    }
    pieces = [(member, look, {c: v.astype(np.int64) for c, v in parts.items()}, np.zeros(len(member)), ts)]
    pieces.append(_active_day_rows(member[post], ts[post], t0[post], options.day_ms, start_ms))
    pieces.append(_minutes_rows(batch, member, look, runtime_ids, runtime_min))
    return _sum_rows(pieces)


def _active_day_rows(member: np.ndarray, ts: np.ndarray, t0: np.ndarray, day_ms: int, start_ms: int):
    """One row per (member, day since their exposure) with activity, at the look of its first event."""
    day = (ts - t0) // day_ms
    order = np.lexsort((ts, day, member))
    member, ts, day = member[order], ts[order], day[order]
    first = _group_starts(member, day)
    m, first_ts = member[first], ts[first]
    counts = {c: np.zeros(len(m), np.int64) for c in COUNT_COLUMNS if c != "active_days"}
    counts["active_days"] = np.ones(len(m), np.int64)
    return m, (first_ts - start_ms) // day_ms, counts, np.zeros(len(m)), first_ts


def _minutes_rows(batch: pa.Table, member: np.ndarray, look: np.ndarray, runtime_ids: np.ndarray,
                  runtime_min: np.ndarray):
    """Per (member, look) the minutes newly watched: the rise of each item's running furthest
    fraction at that look, times its runtime (see `member_day_rows`)."""
    kind = batch.column("type")
    watch = _np(pc.is_in(kind, pa.array(WATCH_TYPES)), False) & _np(pc.is_valid(batch.column("title_id")))
    title = _np(batch.column("title_id"), 0)[watch]
    is_completion = _np(pc.equal(kind, "completion"), False)[watch]
    value = np.clip(np.nan_to_num(_np(batch.column("value"), 0.0)[watch].astype(float)), 0.0, 1.0)
    fraction = np.where(is_completion, 1.0, value)
    payload = batch.column("payload").filter(pa.array(watch))
    episode = pc.fill_null(pc.struct_field(pc.extract_regex(pc.fill_null(payload, ""), EPISODE_RE), "episode"), "0")
    episode = _np(episode.cast(pa.int64()))
    m, lk = member[watch], look[watch]
    pre = lk == PRE_LOOK
    # order by item, then look with the pre-period (-1) first; pre and post are separate items
    order = np.lexsort((fraction, lk, pre, episode, title, m))
    m, title, episode, lk, pre, fraction = (a[order] for a in (m, title, episode, lk, pre, fraction))
    cell = _group_starts(m, title, episode, pre, lk)
    best = np.maximum.reduceat(fraction, cell) if len(cell) else np.zeros(0)
    m, title, episode, lk, pre = m[cell], title[cell], episode[cell], lk[cell], pre[cell]
    item = _group_starts(m, title, episode, pre)
    running = _segmented_cummax(best, item)
    previous = np.r_[0.0, running[:-1]]
    previous[item] = 0.0
    at = np.minimum(np.searchsorted(runtime_ids, title), max(len(runtime_ids) - 1, 0))
    known = (runtime_ids[at] == title) if len(runtime_ids) else np.zeros(len(title), bool)
    runtime = np.where(known, runtime_min[at] if len(runtime_ids) else 0.0, 0.0)
    minutes = (running - previous) * runtime
    counts = {c: np.zeros(len(m), np.int64) for c in COUNT_COLUMNS}
    return m, lk, counts, minutes, np.full(len(m), np.iinfo(np.int64).min)


def _sum_rows(pieces) -> pa.Table:
    """Sum the pieces' rows per (member, look), in an order fixed by the rows themselves."""
    member = np.concatenate([p[0] for p in pieces]).astype(np.int64)
    look = np.concatenate([p[1] for p in pieces]).astype(np.int64)
    counts = {c: np.concatenate([p[2][c] for p in pieces]) for c in COUNT_COLUMNS}
    minutes = np.concatenate([p[3] for p in pieces]).astype(float)
    last = np.concatenate([p[4] for p in pieces]).astype(np.int64)
    # minutes last in the sort key: float sums then run in the same order whatever the batching
    order = np.lexsort((minutes, look, member))
    member, look, minutes, last = member[order], look[order], minutes[order], last[order]
    starts = _group_starts(member, look)
    if not len(starts):
        return ROW_SCHEMA.empty_table()
    columns = {"member_id": member[starts], "look": look[starts]}
    for c in COUNT_COLUMNS:
        columns[c] = np.add.reduceat(counts[c][order], starts)
    columns["minutes"] = np.add.reduceat(minutes, starts)
    columns["last_ts"] = np.maximum.reduceat(last, starts)
    return pa.table(columns, schema=ROW_SCHEMA)


# -- stage 1: guardrails from decision records -----------------------------------------------------


def decision_rows(batch: pa.Table, experiment: str, cutoff_ms: int) -> pa.Table:
    """Per decision record of a page in `experiment`: its variant (from the decision's own
    experiments column), latency_ms (NaN when not recorded) and whether it was degraded."""
    rows = batch.filter(pc.equal(batch.column("type"), "decision"))
    rows = rows.filter(pc.less(rows.column("ts"), cutoff_ms))
    variants, latencies, degraded = [], [], []
    for assigned, text in zip(rows.column("experiments").to_pylist(), rows.column("payload").to_pylist()):
        try:
            variant = orjson.loads(assigned).get(experiment) if assigned else None
        except (orjson.JSONDecodeError, AttributeError):
            variant = None  # serving writes these; a broken one is not this experiment's page
        if variant is None:
            continue
        try:
            payload = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            payload = {}
        payload = payload if isinstance(payload, dict) else {}
        latency = payload.get("latency_ms")
        variants.append(str(variant))
        latencies.append(float(latency) if isinstance(latency, (int, float)) and math.isfinite(latency)
                         else math.nan)
        degraded.append(bool(payload.get("degraded")))
    return pa.table({"variant": pa.array(variants, pa.string()), "latency_ms": pa.array(latencies, pa.float64()),
                     "degraded": pa.array(degraded, pa.bool_())}, schema=DECISION_SCHEMA)


def guardrail_rows(batch: pa.Table) -> pa.Table:
    """Per variant: pages, degraded pages, pages with a latency and the p99 latency (numpy's
    linear-interpolation percentile over the sorted latencies, so any batching gives the same)."""
    variant = np.array(batch.column("variant").to_pylist(), dtype=object)
    latency = _np(batch.column("latency_ms"))
    degraded = _np(batch.column("degraded"), False)
    out = {name: [] for name in GUARDRAIL_SCHEMA.names}
    for name in sorted(set(variant)):
        mine = variant == name
        lat = np.sort(latency[mine][np.isfinite(latency[mine])])
        out["variant"].append(name)
        out["pages"].append(int(mine.sum()))
        out["degraded_pages"].append(int(degraded[mine].sum()))
        out["latency_pages"].append(len(lat))
        out["p99_latency_ms"].append(float(np.percentile(lat, 99)) if len(lat) else None)
    return pa.table(out, schema=GUARDRAIL_SCHEMA)


# -- the engines -----------------------------------------------------------------------------------


def _aggregate_arrow(events: Any, experiment: Experiment, runtimes, options: Options):
    if not isinstance(events, pa.Table):
        raise ValueError(f"events: engine 'arrow' takes a pyarrow.Table, got {type(events).__name__}")
    if events.num_rows == 0:
        raise ValueError("events: the table is empty")
    table = narrow(events)
    cohort = build_cohort(exposure_rows(table, experiment.name), experiment, options.cutoff_ms)
    relevant = relevant_events(table, cohort.arrays(), options)
    rows = member_day_rows(relevant, cohort.arrays(), *runtimes, options, cohort.start_ms)
    guard = guardrail_rows(decision_rows(table, experiment.name, options.cutoff_ms))
    return cohort, rows, guard


def _ray_dataset(events: Any):
    import ray.data

    if isinstance(events, ray.data.Dataset):
        return events
    if isinstance(events, str) or (isinstance(events, (list, tuple)) and events
                                   and all(isinstance(p, str) for p in events)):
        return ray.data.read_parquet(events)
    if hasattr(events, "__fspath__"):
        return ray.data.read_parquet(str(events))
    raise ValueError(f"events: engine 'ray' takes a ray.data.Dataset or Parquet path(s), got {type(events).__name__}")


def _collect(ds, schema: pa.Schema) -> pa.Table:
    import ray

    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables([t.select(schema.names).cast(schema) for t in tables]) if tables else schema.empty_table()


def _aggregate_ray(events: Any, experiment: Experiment, runtimes, options: Options):
    """The same functions as the arrow engine, run by Ray Data: map_batches to narrow and filter,
    a groupby on member_id (map_groups) for the per-member rows, one on variant for guardrails."""
    ds = _ray_dataset(events)
    check_event_schema(ds.schema().base_schema if hasattr(ds.schema(), "base_schema") else ds.schema())
    if ds.count() == 0:
        raise ValueError("events: the dataset is empty")
    narrowed = ds.map_batches(narrow, batch_format="pyarrow")
    exposures = _collect(narrowed.map_batches(exposure_rows, batch_format="pyarrow",
                                              fn_kwargs={"experiment": experiment.name}), EXPOSURE_SCHEMA)
    cohort = build_cohort(exposures, experiment, options.cutoff_ms)
    shipped = cohort.arrays()
    relevant = narrowed.map_batches(relevant_events, batch_format="pyarrow",
                                    fn_kwargs={"cohort": shipped, "options": options})
    rows = _collect(relevant.groupby("member_id", num_partitions=RAY_PARTITIONS).map_groups(
        member_day_rows, batch_format="pyarrow",
        fn_kwargs={"cohort": shipped, "runtime_ids": runtimes[0], "runtime_min": runtimes[1],
                   "options": options, "start_ms": cohort.start_ms}), ROW_SCHEMA)
    decisions = narrowed.map_batches(decision_rows, batch_format="pyarrow",
                                     fn_kwargs={"experiment": experiment.name, "cutoff_ms": options.cutoff_ms})
    guard = _collect(decisions.groupby("variant", num_partitions=len(experiment.arms))
                     .map_groups(guardrail_rows, batch_format="pyarrow"),
                     GUARDRAIL_SCHEMA)
    return cohort, rows.sort_by([("member_id", "ascending"), ("look", "ascending")]), guard


# -- stage 2: statistics ---------------------------------------------------------------------------


def _clean(value: Any) -> Any:
    """Plain JSON data: numpy scalars as Python numbers, NaN and infinities as None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    return value


def comparison_dict(c: Comparison) -> dict:
    """A Comparison as report data (the relative lift is treatment / control - 1)."""
    return _clean({"control": c.control_mean, "treatment": c.treatment_mean, "difference": c.difference,
                   "difference_low": c.difference_low, "difference_high": c.difference_high,
                   "p_value": c.p_value, "significant": bool(c.significant),
                   "relative_lift": c.relative_lift, "relative_low": c.relative_low,
                   "relative_high": c.relative_high, "n_control": int(c.n_control),
                   "n_treatment": int(c.n_treatment)})


class MemberTable:
    """Per exposed member, the cumulative parts of every metric, advanced look by look."""

    def __init__(self, cohort: Cohort, rows: pa.Table, day_ms: int) -> None:
        self.cohort = cohort
        self.n = len(cohort.member_id)
        self.exposed_look = (cohort.t0 - cohort.start_ms) // day_ms
        member = _np(rows.column("member_id"))
        self.look = _np(rows.column("look"))
        self.index = np.searchsorted(cohort.member_id, member)
        self.parts = {c: _np(rows.column(c)).astype(float) for c in (*COUNT_COLUMNS, "minutes")}
        self.values = {c: np.zeros(self.n) for c in self.parts}
        self.pre = {c: np.zeros(self.n) for c in self.parts}
        self._add(self.pre, self.look == PRE_LOOK)

    def _add(self, into: dict, mask: np.ndarray) -> None:
        for c, part in self.parts.items():
            np.add.at(into[c], self.index[mask], part[mask])

    def advance(self, look: int) -> np.ndarray:
        """Add look `look`'s increments; the mask of members exposed by then."""
        self._add(self.values, self.look == look)
        return self.exposed_look <= look


def _metric_moments(metric: str, values: dict, mask: np.ndarray) -> tuple[float, float, int] | None:
    """(value, per-member variance so that variance / n is the estimate's, n) of a metric over the
    members in `mask`; None when it is undefined (under 2 members, a ratio with a 0 denominator)."""
    spec = METRICS[metric]
    n = int(mask.sum())
    if n < 2:
        return None
    if spec[0] == "mean":
        y = values[spec[1]][mask]
        return float(y.mean()), float(y.var(ddof=1)), n
    num, den = values[spec[1]][mask], values[spec[2]][mask]
    if den.sum() == 0:
        return None
    ratio, variance = ratio_moments(num, den)
    return ratio, variance * n, n


def _interval(moments: tuple[float, float, int] | None, kind: str, alpha: float) -> dict:
    if moments is None:
        return {"n": None, "value": None, "ci_low": None, "ci_high": None}
    value, variance, n = moments
    quantile = scipy_stats.t.ppf(1 - alpha / 2, n - 1) if kind == "mean" else scipy_stats.norm.ppf(1 - alpha / 2)
    half = quantile * math.sqrt(variance / n)
    return {"n": n, "value": value, "ci_low": value - half, "ci_high": value + half}


def _looks(cohort: Cohort, rows: pa.Table, options: Options) -> tuple[int, int]:
    """(number of looks, end of the data in ms): the last look is at now_ms or the last event."""
    if options.now_ms is not None:
        end = options.now_ms
    else:
        last = pc.max(rows.column("last_ts")).as_py() if rows.num_rows else None
        end = max(int(cohort.t0.max()), last if last is not None else int(cohort.t0.max())) + 1
    looks = max(1, -(-(end - cohort.start_ms) // options.day_ms))
    if looks > MAX_LOOKS:
        raise ValueError(f"day_ms: {options.day_ms} ms days from the first exposure to {end} ms make {looks} "
                         f"looks (at most {MAX_LOOKS}); pass the day length the traffic ran at, or now_ms")
    return looks, end


def cuped_key(metric: str) -> str:
    """The path's entry for a metric's CUPED-adjusted moments."""
    return f"{metric}:cuped"


def _walk_looks(table: MemberTable, cohort: Cohort, looks: int, end: int, options: Options,
                adjusted: tuple[str, ...] = ()):
    """Per look: its time and, per metric and variant, the moments over members exposed by then;
    for the metrics in `adjusted` also the moments of their CUPED-adjusted values (theta
    re-estimated at each look from the members exposed by then, the pre-period as covariate)."""
    path = []
    for k in range(looks):
        exposed = table.advance(k)
        entry = {"look": k, "day": k + 1,
                 "time_ms": min(cohort.start_ms + (k + 1) * options.day_ms, end), "metrics": {}}
        for metric in METRICS:
            entry["metrics"][metric] = {
                name: _metric_moments(metric, table.values, exposed & (cohort.variant == i))
                for i, name in enumerate(cohort.variants)}
        for metric in adjusted:
            column = METRICS[metric][1]
            values = np.zeros(table.n)
            values[exposed] = cuped_adjusted(table.values[column][exposed], table.pre[column][exposed],
                                             cohort.variant[exposed])
            entry["metrics"][cuped_key(metric)] = {
                name: _metric_moments(metric, {column: values}, exposed & (cohort.variant == i))
                for i, name in enumerate(cohort.variants)}
        path.append(entry)
    return path


def _daily(path: list, cohort: Cohort, options: Options) -> dict:
    return {metric: {name: [{"day": e["day"], "time_ms": e["time_ms"],
                             **_interval(e["metrics"][metric][name], METRICS[metric][0], options.alpha)}
                            for e in path] for name in cohort.variants}
            for metric in METRICS}


def _final_arrays(table: MemberTable, metric: str, mask: np.ndarray, pre: bool = False) -> list[np.ndarray]:
    source = table.pre if pre else table.values
    return [source[c][mask] for c in METRICS[metric][1:]]


def _metrics(table: MemberTable, cohort: Cohort, control: str, options: Options) -> dict:
    """Per metric: each variant's value with its interval, and each treatment against control
    (Welch for means, the delta method for ratios)."""
    arm = {name: cohort.variant == i for i, name in enumerate(cohort.variants)}
    out = {}
    for metric, spec in METRICS.items():
        by_variant = {name: _interval(_metric_moments(metric, table.values, arm[name]), spec[0], options.alpha)
                      for name in cohort.variants}
        comparisons = {}
        for name in cohort.variants:
            if name == control:
                continue
            try:
                a, b = _final_arrays(table, metric, arm[control]), _final_arrays(table, metric, arm[name])
                c = (compare_means(a[0], b[0], alpha=options.alpha) if spec[0] == "mean"
                     else compare_ratios(a[0], a[1], b[0], b[1], alpha=options.alpha))
                comparisons[name] = comparison_dict(c)
            except ValueError as exc:
                comparisons[name] = {"error": str(exc)}
        out[metric] = {"kind": spec[0], "by_variant": by_variant, "comparisons": comparisons}
    return out


def _cuped(table: MemberTable, cohort: Cohort, control: str, options: Options) -> dict:
    """CUPED for the mean metrics with a pre-period: the covariate is the same metric over the
    pre_days before each member's first exposure."""
    arm = {name: cohort.variant == i for i, name in enumerate(cohort.variants)}
    out = {}
    for metric in CUPED_METRICS:
        out[metric] = {}
        for name in cohort.variants:
            if name == control:
                continue
            try:
                result = cuped(_final_arrays(table, metric, arm[control])[0],
                               _final_arrays(table, metric, arm[control], pre=True)[0],
                               _final_arrays(table, metric, arm[name])[0],
                               _final_arrays(table, metric, arm[name], pre=True)[0], alpha=options.alpha)
            except ValueError as exc:
                out[metric][name] = {"error": str(exc)}
                continue
            out[metric][name] = _clean({
                "theta": result.theta, "correlation": result.correlation,
                "variance_reduction": result.variance_reduction,
                "adjusted": comparison_dict(result.adjusted), "unadjusted": comparison_dict(result.unadjusted)})
    return out


def _group_sequential(a: np.ndarray, b: np.ndarray, days: list[int], planned_days: int, alpha: float) -> dict:
    """The planned-horizon test (experiments/sequential.py; what `marquee experiment calibrate`
    checks at daily looks): O'Brien-Fleming-type spending over `planned_days`, look k at calendar
    time day_k / planned_days. Looks past the horizon are not read (the alpha is spent)."""
    inside = [i for i, day in enumerate(days) if day <= planned_days]
    if not inside:
        return {"planned_days": planned_days, "rejected": False, "first_rejection": None, "looks": []}
    a, b = a[inside], b[inside]
    result = group_sequential_from_moments(a[:, 0], a[:, 1], a[:, 2], b[:, 0], b[:, 1], b[:, 2],
                                           planned_looks=planned_days, alpha=alpha,
                                           fractions=[days[i] / planned_days for i in inside])
    first = result.first_rejection
    return _clean({"planned_days": planned_days, "rejected": bool(result.rejected),
                   "first_rejection": None if first is None else {"day": days[inside[first]]},
                   "direction": None if not result.rejected else ("better" if result.difference[first] > 0
                                                                  else "worse"),
                   "looks": [{"day": days[i], "statistic": float(result.statistic[j]),
                              "critical": float(np.atleast_1d(result.critical)[j])}
                             for j, i in enumerate(inside)]})


def _sequential(path: list, cohort: Cohort, control: str, primary: str, options: Options,
                mixing_sd: float | None, sequential_mde: float, planned_days: int | None = None,
                adjusted: bool = False) -> dict:
    """The mSPRT of the primary metric per treatment, read at every look, and with a planned
    horizon (`planned_days`) the group-sequential test beside it, which the verdict then reads:
    at daily looks the mSPRT is conservative (about 1% false positives at alpha 5% over 14 looks,
    `marquee experiment calibrate`), the planned test spends the whole alpha.

    mixing_sd, as experiments/sequential.py advises, is near the effect worth detecting:
    `sequential_mde` (relative) times control's value at the last look (the metric is
    cumulative, so its scale at the horizon is the one the effect is judged on; control's value
    says nothing of the difference), or the caller's `mixing_sd` when it was fixed in advance.
    Looks where an arm has under two members or no variance are skipped (`skipped_days`).
    `adjusted`: the tests read the primary metric's CUPED-adjusted moments at each look."""
    out = {"metric": primary, "alpha": options.alpha, "adjustment": "cuped" if adjusted else None,
           "by_variant": {}}
    key = cuped_key(primary) if adjusted else primary
    chosen = mixing_sd
    for name in cohort.variants:
        if name == control:
            continue
        usable = [e for e in path if e["metrics"][key][control] is not None
                  and e["metrics"][key][name] is not None
                  and e["metrics"][key][control][1] / e["metrics"][key][control][2]
                  + e["metrics"][key][name][1] / e["metrics"][key][name][2] > 0]
        skipped = [e["day"] for e in path if e not in usable]
        if not usable:
            out["by_variant"][name] = {"looks": [], "rejected": False, "first_rejection": None,
                                       "skipped_days": skipped, "error": "no look with two members and "
                                       "some variance in both arms"}
            continue
        if chosen is None:
            value, variance, _ = usable[-1]["metrics"][primary][control]  # the raw scale
            chosen = sequential_mde * (abs(value) if value != 0 else math.sqrt(variance) or 1.0)
        a = np.array([e["metrics"][key][control] for e in usable], dtype=float)
        b = np.array([e["metrics"][key][name] for e in usable], dtype=float)
        result = msprt_from_moments(a[:, 0], a[:, 1], a[:, 2], b[:, 0], b[:, 1], b[:, 2],
                                    mixing_sd=chosen, alpha=options.alpha)
        looks = [{"day": e["day"], "time_ms": e["time_ms"], "difference": float(result.difference[i]),
                  "ci_low": float(result.ci_low[i]), "ci_high": float(result.ci_high[i]),
                  "p_value": float(result.p_value[i]), "n_control": int(a[i, 2]), "n_treatment": int(b[i, 2])}
                 for i, e in enumerate(usable)]
        first = result.first_rejection
        direction = None
        if result.rejected:
            direction = "better" if result.difference[-1] > 0 else "worse"
        planned = None
        if planned_days is not None:
            planned = _group_sequential(a, b, [e["day"] for e in usable], planned_days, options.alpha)
        out["by_variant"][name] = _clean({
            "looks": looks, "rejected": result.rejected, "direction": direction, "group_sequential": planned,
            "first_rejection": None if first is None else {"day": usable[first]["day"],
                                                           "time_ms": usable[first]["time_ms"]},
            "p_value": float(result.p_value[-1]), "skipped_days": skipped})
    out["mixing_sd"] = _clean(chosen)
    out["mixing_sd_rule"] = ("given" if mixing_sd is not None else
                             f"{sequential_mde:g} x control's value at the last look")
    return out


def _srm(cohort: Cohort, experiment: Experiment) -> dict:
    counts = {name: int(np.sum(cohort.variant == i)) for i, name in enumerate(cohort.variants)}
    weights = {v.name: v.weight for v in experiment.arms}
    result = sample_ratio_mismatch(counts, weights, threshold=SRM_ALPHA)
    return _clean({"observed": counts, "expected": dict(zip(result.variants, result.expected)),
                   "weights": weights, "statistic": result.statistic, "p_value": result.p_value,
                   "threshold": result.threshold, "mismatch": result.mismatch})


def _guardrails(guard: pa.Table, cohort: Cohort, limits: GuardrailLimits) -> dict:
    rows = {r["variant"]: r for r in guard.to_pylist()}
    by_variant, missing = {}, []
    for name in cohort.variants:
        row = rows.get(name)
        if row is None or row["pages"] == 0 or row["p99_latency_ms"] is None:
            missing.append(name)
        by_variant[name] = {"pages": row["pages"] if row else 0,
                            "error_rate": row["degraded_pages"] / row["pages"] if row and row["pages"] else None,
                            "p99_latency_ms": row["p99_latency_ms"] if row else None,
                            "latency_pages": row["latency_pages"] if row else 0}
    checked = [n for n in cohort.variants if n not in missing]
    breaches = []
    if checked:
        verdict = check_guardrails({n: by_variant[n]["error_rate"] for n in checked},
                                   {n: by_variant[n]["p99_latency_ms"] for n in checked}, limits)
        breaches = [{"variant": b.variant, "guardrail": b.guardrail, "value": b.value, "limit": b.limit}
                    for b in verdict.breaches]
    return _clean({"limits": {"max_error_rate": limits.max_error_rate,
                              "max_p99_latency_ms": limits.max_p99_latency_ms},
                   "by_variant": by_variant, "breaches": breaches, "stop": bool(breaches),
                   "unchecked": missing})


# -- the verdict -----------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def _lift_text(comparison: dict, alpha: float) -> str:
    if "error" in comparison:
        return f"not computable ({comparison['error']})"
    level = round((1 - alpha) * 100)
    return (f"{_pct(comparison['relative_lift'])} ({level}% CI {_pct(comparison['relative_low'])} "
            f"to {_pct(comparison['relative_high'])})")


def _decisive(seq: dict) -> tuple[bool, str | None, int | None, str]:
    """(rejected, direction, first day, which test) of the test the verdict reads: the planned
    group-sequential test when the report has one, else the always-valid mSPRT."""
    planned = seq.get("group_sequential")
    if planned:
        first = planned.get("first_rejection") or {}
        return (bool(planned["rejected"]), planned.get("direction"), first.get("day"),
                f"group-sequential test (horizon {planned['planned_days']} days)")
    first = seq.get("first_rejection") or {}
    return (bool(seq.get("rejected")), seq.get("direction"), first.get("day"),
            f"always-valid test (p = {seq.get('p_value', float('nan')):.2g})")


def decision_comparisons(report: dict) -> dict:
    """Per treatment, the primary metric's comparison the verdict quotes: CUPED-adjusted when the
    sequential test read adjusted values (and CUPED could run), else the raw one."""
    primary = report["primary"]
    out = dict(report["metrics"][primary]["comparisons"])
    if report["sequential"].get("adjustment") == "cuped":
        for name, result in report["cuped"].get(primary, {}).items():
            if "adjusted" in result:
                out[name] = result["adjusted"]
    return out


def verdict(report: dict) -> dict:
    """ship, stop or keep running, with the reasons in words.

    stop: a sample ratio mismatch (no metric can be trusted), a guardrail breach, or a variant
    whose primary metric the always-valid test finds worse. ship: a variant the always-valid test
    finds better on the primary metric, nothing saying stop (the largest lift wins among several).
    keep running: anything else, saying what is missing."""
    primary = report["primary"]
    alpha = report["alpha"]
    comparisons = decision_comparisons(report)
    sequential = report["sequential"]["by_variant"]
    stop, notes = [], []
    adjusted = " (CUPED-adjusted)" if report["sequential"].get("adjustment") == "cuped" else ""
    srm = report["srm"]
    if srm["mismatch"]:
        shown = ", ".join(f"{v} {srm['observed'][v]} (expected {srm['expected'][v]:.0f})" for v in srm["observed"])
        stop.append(f"Sample ratio mismatch: {shown}, chi-square p = {srm['p_value']:.2g} < {srm['threshold']:g}; "
                    "assignment or logging is broken, so no metric can be trusted.")
    for b in report["guardrails"]["breaches"]:
        unit = " ms" if b["guardrail"] == "p99_latency_ms" else ""
        what = "p99 latency" if b["guardrail"] == "p99_latency_ms" else "error rate (degraded pages)"
        stop.append(f"Guardrail breached: {b['variant']}'s {what} is {b['value']:.4g}{unit}, over the "
                    f"limit {b['limit']:g}{unit}.")
    winners = []
    for name, seq in sequential.items():
        lift = _lift_text(comparisons[name], alpha)
        rejected, direction, day, test = _decisive(seq)
        if rejected and direction == "worse":
            stop.append(f"{name} is significantly worse than {report['control']} on {primary}: lift{adjusted} {lift}; "
                        f"the {test} rejected on day {day}.")
        elif rejected:
            winners.append(name)
    if report["guardrails"]["unchecked"]:
        notes.append(f"Guardrails not checked for {', '.join(report['guardrails']['unchecked'])}: "
                     "no decision records with a latency.")
    if report["crossovers"]["count"]:
        notes.append(f"{report['crossovers']['count']} member(s) saw more than one variant; each is "
                     "counted in the first.")
    if stop:
        return {"decision": "stop", "winner": None, "reasons": stop + notes}
    if winners:
        best = max(winners, key=lambda n: comparisons[n].get("relative_lift") or 0.0)
        _, _, day, test = _decisive(sequential[best])
        reasons = [(f"Ship {best}: {primary} lift{adjusted} {_lift_text(comparisons[best], alpha)} over "
                    f"{report['control']}; the {test} rejected on day {day}, with no sample ratio "
                    "mismatch and no guardrail breach.")]
        return {"decision": "ship", "winner": best, "reasons": reasons + notes}
    reasons = []
    for name, seq in sequential.items():
        if "error" in seq:
            reasons.append(f"{name}: the sequential test cannot run yet ({seq['error']}).")
            continue
        _, _, _, test = _decisive(seq)
        reasons.append(f"{name} vs {report['control']}: {primary} lift{adjusted} {_lift_text(comparisons[name], alpha)}, "
                       f"not significant yet by the {test} after {seq['looks'][-1]['day']} day(s).")
    return {"decision": "keep running", "winner": None, "reasons": reasons + notes}


# -- the one call ----------------------------------------------------------------------------------


def _control(experiment: Experiment, control: str | None) -> str:
    """The control arm: as given, else a variant named "control", else the one without an override."""
    names = [v.name for v in experiment.arms]
    if control is not None:
        return control
    if "control" in names:
        return "control"
    plain = [v.name for v in experiment.arms if not v.override]
    if len(plain) == 1:
        return plain[0]
    raise ValueError(f"control: experiment {experiment.name!r} has no variant named 'control' and "
                     f"not exactly one without an override; pass control= one of {names}")


def _prepare(events: Any, experiment: Experiment, runtimes: Any, day_ms: Any, engine: Any, alpha: Any,
             pre_days: Any, primary: Any, guardrails: Any, now_ms: Any, control: Any,
             sequential_mde: Any = 0.05, mixing_sd: Any = None):
    """Check the arguments and run stage 1: (options, control, cohort, rows, guardrail rows)."""
    options = _check_options(experiment, day_ms, alpha, pre_days, primary, guardrails, now_ms, engine,
                             control, sequential_mde, mixing_sd)
    control = _control(experiment, control)
    runtime = runtime_table(runtimes)
    aggregate = _aggregate_arrow if engine == "arrow" else _aggregate_ray
    cohort, rows, guard = aggregate(events, experiment, runtime, options)
    return options, control, cohort, rows, guard


def member_metrics(events: Any, experiment: Experiment, *, runtimes: Any, day_ms: int = DAY_MS,
                   engine: str = "arrow", pre_days: float = 28, now_ms: int | None = None) -> pa.Table:
    """The per-member table the statistics run on, one row per exposed member (sorted by id):
    member_id, variant, first_exposure_ms, crossover, the parts of every metric (plays,
    completions, home_plays, home_impressions, active_days, minutes) and their pre-period
    values (pre_plays, pre_minutes, ...). For a notebook, a test, or an export."""
    options, _, cohort, rows, _ = _prepare(events, experiment, runtimes, day_ms, engine, ALPHA, pre_days,
                                           "plays_per_member", GuardrailLimits(), now_ms, None)
    table = MemberTable(cohort, rows, options.day_ms)
    looks, _ = _looks(cohort, rows, options)
    for k in range(looks):
        table.advance(k)
    columns = {"member_id": pa.array(cohort.member_id, pa.int64()),
               "variant": pa.array([cohort.variants[i] for i in cohort.variant], pa.string()),
               "first_exposure_ms": pa.array(cohort.t0, pa.int64()),
               "crossover": pa.array(cohort.crossover, pa.bool_())}
    for c in (*COUNT_COLUMNS, "minutes"):
        kind = pa.float64() if c == "minutes" else pa.int64()
        columns[c] = pa.array(table.values[c], pa.float64()).cast(kind)
    for c in (*COUNT_COLUMNS, "minutes"):
        kind = pa.float64() if c == "minutes" else pa.int64()
        columns[f"pre_{c}"] = pa.array(table.pre[c], pa.float64()).cast(kind)
    return pa.table(columns)


def analyze(events: Any, experiment: Experiment, *, runtimes: Any, day_ms: int = DAY_MS,
            engine: str = "arrow", alpha: float = ALPHA, pre_days: float = 28,
            primary: str = "plays_per_member", guardrails: GuardrailLimits = DEFAULT_LIMITS,
            now_ms: int | None = None, control: str | None = None, sequential_mde: float = 0.05,
            mixing_sd: float | None = None, planned_days: int | None = None,
            use_cuped: bool = True) -> dict:
    """The whole analysis of one experiment as JSON-ready data (see the module docstring).

    `events`: stored events (STORED_EVENT_SCHEMA) as a pa.Table (engine "arrow") or a
    ray.data.Dataset / Parquet path(s) (engine "ray"). `runtimes`: the titles table or a mapping
    title_id -> runtime_min. `pre_days`: the CUPED pre-period in day_ms units (None: all history
    before each member's first exposure, for compressed-time runs whose history lies in real
    days). `use_cuped`: the sequential tests and the verdict read the primary metric
    CUPED-adjusted (when it is a CUPED metric; the raw numbers are reported beside). `primary`: the
    metric the verdict and the sequential test read. `control`: default "control" (else the
    one variant without an override). `sequential_mde`/`mixing_sd`: the mSPRT's mixing scale
    (`_sequential` says how). `planned_days`: the experiment's planned horizon in days; with it
    the verdict reads the group-sequential test (calibrated at daily looks), else the mSPRT.
    Raises ValueError naming the argument or column at fault.
    """
    if planned_days is not None:
        planned_days = check_int("planned_days", planned_days, ge=1)
    if not isinstance(use_cuped, bool):
        raise ValueError(f"use_cuped: expected true or false, got {use_cuped!r}")
    options, control, cohort, rows, guard = _prepare(events, experiment, runtimes, day_ms, engine, alpha,
                                                     pre_days, primary, guardrails, now_ms, control,
                                                     sequential_mde, mixing_sd)
    table = MemberTable(cohort, rows, options.day_ms)
    looks, end = _looks(cohort, rows, options)
    adjust = use_cuped and primary in CUPED_METRICS and options.pre_ms != 0
    path = _walk_looks(table, cohort, looks, end, options, (primary,) if adjust else ())
    report = {
        "schema": SCHEMA_VERSION, "experiment": experiment.name, "engine": engine,
        "variants": list(cohort.variants), "control": control, "primary": primary, "alpha": options.alpha,
        "window": {"first_exposure_ms": cohort.start_ms, "end_ms": end, "day_ms": options.day_ms,
                   "days": looks, "pre_days": pre_days, "now_ms": options.now_ms,
                   "cutoff_ms": options.cutoff_ms},
        "members": {name: int(np.sum(cohort.variant == i)) for i, name in enumerate(cohort.variants)},
        "crossovers": {"count": int(cohort.crossover.sum()),
                       "by_variant": {name: int(np.sum(cohort.crossover & (cohort.variant == i)))
                                      for i, name in enumerate(cohort.variants)}},
        "srm": _srm(cohort, experiment),
        "metrics": _metrics(table, cohort, control, options),
        "cuped": _cuped(table, cohort, control, options),
        "sequential": _sequential(path, cohort, control, primary, options, mixing_sd, sequential_mde,
                                  planned_days, adjust),
        "daily": _daily(path, cohort, options),
        "guardrails": _guardrails(guard, cohort, guardrails),
    }
    report = _clean(report)
    report["verdict"] = verdict(report)
    return report
