"""What the features ARE, as pure Arrow/numpy functions shared by every engine.

The feature job has three steps, and this module holds all three so Ray Data and the single-process
baseline run literally the same code:

1. `partial_aggregate(events_block)`: one block of raw events -> small per-day partial tables
   (member x day x slot counts, title x day x country counts, member x title first/last play).
2. `combine_partials([...])`: merge the partials of every block (sums, mins, maxes).
3. `SnapshotBuilder(combined).member/title/cowatch(as_of)`: the point-in-time expansion. A snapshot
   at `as_of` day D reads ONLY partial rows whose day is < D, so it only ever sees events stamped
   before D 00:00 UTC; this is the single place where leakage could happen, and it cannot.

Days are integers (days since 1970-01-01, UTC) everywhere inside; dates appear only at the edges.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.cowatch import CowatchCounts, CowatchIndex
from marquee.names import DAY_MS as MS_PER_DAY  # noqa: F401 (offline_store reads it here)
from marquee.schema import DEVICES, EVENT_TYPES, SERVER_EVENT_TYPES
from marquee.settings import assign, check_int, check_number, fail

MS_PER_HOUR = 3_600_000
EPOCH = date(1970, 1, 1)

# The only event columns the job reads (projection keeps I/O and memory down).
EVENT_COLUMNS = ["member_id", "title_id", "type", "timestamp", "country", "device"]

_TYPE_CODE = {name: i for i, name in enumerate(EVENT_TYPES)}
PLAY, COMPLETION, IMPRESSION = _TYPE_CODE["play"], _TYPE_CODE["completion"], _TYPE_CODE["impression"]


class FeatureError(ValueError):
    """The inputs of a feature computation are unusable; the message says which and why."""


def day_number(day: date | str) -> int:
    """Days since 1970-01-01 for a date or an ISO 'YYYY-MM-DD' string."""
    if isinstance(day, str):
        try:
            day = date.fromisoformat(day[:10])
        except ValueError:
            raise FeatureError(f"not an ISO day (YYYY-MM-DD): {day!r}") from None
    return (day - EPOCH).days


def day_date(number: int) -> date:
    return EPOCH + timedelta(days=int(number))


@dataclass(frozen=True)
class FeatureSpec:
    """Tunable definitions. Changing one changes the features, so it is recorded in the manifest."""

    half_life_days: float = 14.0  # time decay of genre affinities
    cowatch_k: int = 50  # neighbours kept per title
    hour_buckets: int = 6  # UTC hour of day in 24/hour_buckets-hour buckets

    def __post_init__(self) -> None:
        assign(self, "half_life_days", check_number("half_life_days", self.half_life_days, gt=0))
        assign(self, "cowatch_k", check_int("cowatch_k", self.cowatch_k, ge=1))
        assign(self, "hour_buckets", check_int("hour_buckets", self.hour_buckets, ge=1, le=24))
        if 24 % self.hour_buckets:
            raise fail("hour_buckets", "a divisor of 24", self.hour_buckets)


@dataclass(frozen=True)
class Vocab:
    """Catalog facts the partial step needs: title genres (CSR), country and device vocabularies.
    Small and picklable: it travels with every Ray Data task."""

    genres: tuple[str, ...]
    countries: tuple[str, ...]
    devices: tuple[str, ...]
    title_ids: np.ndarray  # sorted int64 catalog ids; a title's index is its position here
    genre_offsets: np.ndarray  # CSR: genres of title i are genre_index[offsets[i]:offsets[i+1]]
    genre_index: np.ndarray
    release_day: np.ndarray  # float64 day number per title, NaN when unknown

    @classmethod
    def from_tables(cls, titles: pa.Table, members: pa.Table | None = None) -> "Vocab":
        """Genres = sorted unique genres of the catalog; countries = every country a title is
        available in or a member lives in (sorted)."""
        if titles.num_rows == 0:
            raise FeatureError("titles table is empty: features need a catalog")
        titles = titles.sort_by("title_id")
        title_ids = titles.column("title_id").to_numpy().astype(np.int64)
        if len(np.unique(title_ids)) != len(title_ids):
            raise FeatureError("titles table has duplicate title_id values")
        genre_lists = titles.column("genres").to_pylist()
        genres = tuple(sorted({g for gs in genre_lists for g in (gs or [])}))
        position = {g: i for i, g in enumerate(genres)}
        offsets = np.zeros(len(genre_lists) + 1, dtype=np.int64)
        index: list[int] = []
        for i, gs in enumerate(genre_lists):
            unique = sorted({position[g] for g in (gs or [])})
            index.extend(unique)
            offsets[i + 1] = len(index)
        countries = {c for cs in titles.column("countries").to_pylist() for c in (cs or [])}
        if members is not None and "country" in members.column_names:
            countries |= {c for c in members.column("country").to_pylist() if c}
        return cls(
            genres=genres,
            countries=tuple(sorted(countries)),
            devices=tuple(DEVICES),
            title_ids=title_ids,
            genre_offsets=offsets,
            genre_index=np.asarray(index, dtype=np.int64),
            release_day=_release_days(titles),
        )

    def title_index(self, title_ids: np.ndarray) -> np.ndarray:
        """Catalog index of each id; -1 for ids not in the catalog (and for the -1 null marker)."""
        pos = np.searchsorted(self.title_ids, title_ids)
        pos = np.minimum(pos, len(self.title_ids) - 1)
        found = self.title_ids[pos] == title_ids
        return np.where(found, pos, -1)


def _release_days(titles: pa.Table) -> np.ndarray:
    """Release day per title: release_date, else 1 January of release_year, else NaN."""
    out = np.full(titles.num_rows, np.nan)
    if "release_date" in titles.column_names:
        dates = titles.column("release_date").cast(pa.int32()).to_numpy(zero_copy_only=False)
        out = np.where(np.isnan(dates.astype(np.float64)), out, dates)
    if "release_year" in titles.column_names:
        years = titles.column("release_year").to_pylist()
        from_year = np.array(
            [day_number(date(y, 1, 1)) if y and 1 <= y <= 9999 else np.nan for y in years]
        )
        out = np.where(np.isnan(out), from_year, out)
    return out


@dataclass(frozen=True)
class MemberSlots:
    """Column layout of the member partial: every per-member fact is a count in one slot."""

    hour_buckets: int
    n_devices: int
    n_genres: int

    @property
    def hour(self) -> int:
        return 0

    @property
    def device(self) -> int:
        return self.hour_buckets

    @property
    def plays(self) -> int:
        return self.device + self.n_devices

    @property
    def completions(self) -> int:
        return self.plays + 1

    @property
    def impressions(self) -> int:
        return self.plays + 2

    @property
    def genre(self) -> int:
        return self.plays + 3

    @property
    def size(self) -> int:
        return self.genre + self.n_genres

    @classmethod
    def of(cls, vocab: Vocab, spec: FeatureSpec) -> "MemberSlots":
        return cls(spec.hour_buckets, len(vocab.devices), len(vocab.genres))


# ---------------------------------------------------------------------------------------------
# 1. Partial aggregation of one block of events
# ---------------------------------------------------------------------------------------------

PARTIAL_KINDS = ("member_slots", "title_daily", "member_title", "stats")


def _np(column: pa.ChunkedArray | pa.Array, fill: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        column = pc.fill_null(column, fill)
    return column.to_numpy(zero_copy_only=False)


def _codes(column: pa.ChunkedArray, values: Iterable[str]) -> np.ndarray:
    """Position of each string in `values`; -1 for nulls and strings not in it."""
    codes = pc.index_in(column, value_set=pa.array(list(values), type=pa.string()))
    return _np(codes, -1).astype(np.int64)


def partial_aggregate(events: pa.Table, vocab: Vocab, spec: FeatureSpec) -> dict[str, pa.Table]:
    """Aggregate one block of events into day-level partials (see module docstring).

    Needs only EVENT_COLUMNS; other columns are ignored. Pure function of its block, so blocks can
    be processed in any order, on any worker, and combined afterwards. The server's own records
    (SERVER_EVENT_TYPES: the decision of each page served) are no member behaviour: they are left
    out of every feature and only counted (stats.server_records)."""
    missing = [c for c in EVENT_COLUMNS if c not in events.column_names]
    if missing:
        raise FeatureError(f"events block lacks column(s) {', '.join(missing)}")
    server = pc.fill_null(pc.is_in(events.column("type"), value_set=pa.array(SERVER_EVENT_TYPES)), False)
    server_records = int(pc.sum(server).as_py() or 0)
    if server_records:
        events = events.filter(pc.invert(server))
    slots = MemberSlots.of(vocab, spec)
    ms = _np(events.column("timestamp").cast(pa.int64()), 0).astype(np.int64)
    member = _np(events.column("member_id"), -1).astype(np.int64)
    day = (ms // MS_PER_DAY).astype(np.int32)
    hour = ((ms // MS_PER_HOUR) % 24) // (24 // spec.hour_buckets)
    etype = _codes(events.column("type"), EVENT_TYPES)
    device = _codes(events.column("device"), vocab.devices)
    country = _codes(events.column("country"), vocab.countries)
    raw_title = _np(events.column("title_id"), -1).astype(np.int64)
    title = vocab.title_index(raw_title)
    is_play, is_completion, is_impression = etype == PLAY, etype == COMPLETION, etype == IMPRESSION

    # member x day x slot counts
    has_device = device >= 0
    engaged = (is_play | is_completion) & (title >= 0)
    engaged_title = title[engaged]
    n_genres = vocab.genre_offsets[engaged_title + 1] - vocab.genre_offsets[engaged_title]
    starts = np.repeat(vocab.genre_offsets[engaged_title], n_genres)
    within = np.arange(n_genres.sum()) - np.repeat(np.cumsum(n_genres) - n_genres, n_genres)
    genre_slot = slots.genre + vocab.genre_index[starts + within]
    m_parts = [member, member[has_device], member[is_play], member[is_completion],
               member[is_impression], np.repeat(member[engaged], n_genres)]
    d_parts = [day, day[has_device], day[is_play], day[is_completion], day[is_impression],
               np.repeat(day[engaged], n_genres)]
    s_parts = [slots.hour + hour, slots.device + device[has_device],
               np.full(is_play.sum(), slots.plays), np.full(is_completion.sum(), slots.completions),
               np.full(is_impression.sum(), slots.impressions), genre_slot]
    member_slots = pa.table({
        "member_id": np.concatenate(m_parts),
        "day": np.concatenate(d_parts).astype(np.int32),
        "slot": np.concatenate(s_parts).astype(np.int16),
    }).group_by(["member_id", "day", "slot"], use_threads=False).aggregate([([], "count_all")])
    member_slots = member_slots.rename_columns(["member_id", "day", "slot", "n"])

    # title x day x country counts (country -1 = unknown or outside the vocabulary)
    counted = (title >= 0) & (is_play | is_completion | is_impression)
    title_daily = pa.table({
        "title_id": raw_title[counted],
        "day": day[counted],
        "country": country[counted].astype(np.int16),
        "plays": is_play[counted].astype(np.int64),
        "completions": is_completion[counted].astype(np.int64),
        "impressions": is_impression[counted].astype(np.int64),
    }).group_by(["title_id", "day", "country"], use_threads=False).aggregate(
        [("plays", "sum"), ("completions", "sum"), ("impressions", "sum")]
    ).rename_columns(["title_id", "day", "country", "plays", "completions", "impressions"])

    # member x title first/last play
    played = is_play & (title >= 0)
    member_title = pa.table({
        "member_id": member[played], "title_id": raw_title[played], "ms": ms[played],
    }).group_by(["member_id", "title_id"], use_threads=False).aggregate(
        [("ms", "min"), ("ms", "max"), ([], "count_all")]
    ).rename_columns(["member_id", "title_id", "first_ms", "last_ms", "plays"])

    stats = pa.table({
        "events": [len(ms)],  # member events aggregated
        "server_records": [server_records],
        "unknown_type": [int((etype < 0).sum())],
        "unknown_title": [int(((raw_title >= 0) & (title < 0)).sum())],
    })
    return {"member_slots": member_slots, "title_daily": title_daily,
            "member_title": member_title, "stats": stats}


def encode_partials(partials: dict[str, pa.Table]) -> pa.Table:
    """Pack the differently-shaped partial tables of one block into ONE Arrow table (kind, Arrow
    IPC bytes), so a Ray Data map_batches can return them as a single small block."""
    blobs = []
    for kind in PARTIAL_KINDS:
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, partials[kind].schema) as writer:
            writer.write_table(partials[kind])
        blobs.append(sink.getvalue())
    return pa.table({"kind": list(PARTIAL_KINDS), "ipc": pa.array(blobs, type=pa.large_binary())})


def decode_partials(table: pa.Table) -> list[dict[str, pa.Table]]:
    """Inverse of encode_partials; accepts several encoded blocks concatenated."""
    kinds = table.column("kind").to_pylist()
    blobs = table.column("ipc").to_pylist()
    out: list[dict[str, pa.Table]] = []
    for start in range(0, len(kinds), len(PARTIAL_KINDS)):
        group = {}
        for kind, blob in zip(kinds[start:start + len(PARTIAL_KINDS)], blobs[start:start + len(PARTIAL_KINDS)]):
            group[kind] = pa.ipc.open_stream(blob).read_all()
        if set(group) != set(PARTIAL_KINDS):
            raise FeatureError(f"malformed partial block: kinds {sorted(group)}")
        out.append(group)
    return out


# ---------------------------------------------------------------------------------------------
# 2. Combine
# ---------------------------------------------------------------------------------------------


@dataclass
class Combined:
    """All partials merged: still day-level, so any as_of can be expanded from it."""

    member_slots: pa.Table
    title_daily: pa.Table
    member_title: pa.Table
    stats: dict[str, int]
    first_day: int
    last_day: int


def combine_partials(partials: Iterable[dict[str, pa.Table]]) -> Combined:
    partials = list(partials)
    if not partials:
        raise FeatureError("no event blocks to combine (is the events directory empty?)")

    def concat(kind: str) -> pa.Table:
        return pa.concat_tables([p[kind] for p in partials])

    member_slots = concat("member_slots").group_by(["member_id", "day", "slot"]).aggregate(
        [("n", "sum")]).rename_columns(["member_id", "day", "slot", "n"])
    title_daily = concat("title_daily").group_by(["title_id", "day", "country"]).aggregate(
        [("plays", "sum"), ("completions", "sum"), ("impressions", "sum")]
    ).rename_columns(["title_id", "day", "country", "plays", "completions", "impressions"])
    member_title = concat("member_title").group_by(["member_id", "title_id"]).aggregate(
        [("first_ms", "min"), ("last_ms", "max"), ("plays", "sum")]
    ).rename_columns(["member_id", "title_id", "first_ms", "last_ms", "plays"])
    stats_table = concat("stats")
    stats = {name: int(pc.sum(stats_table.column(name)).as_py() or 0) for name in stats_table.column_names}
    if member_slots.num_rows == 0:
        raise FeatureError("no events found: the dataset's events directory holds no rows")
    days = member_slots.column("day")
    return Combined(member_slots, title_daily, member_title, stats,
                    first_day=int(pc.min(days).as_py()), last_day=int(pc.max(days).as_py()))


# ---------------------------------------------------------------------------------------------
# 3. Point-in-time snapshots
# ---------------------------------------------------------------------------------------------


def _list_column(matrix: np.ndarray, dtype=np.float32) -> pa.ListArray:
    """A (rows x width) matrix as a list<float32> column (one list per row)."""
    rows, width = matrix.shape
    offsets = pa.array(np.arange(rows + 1, dtype=np.int32) * width)
    return pa.ListArray.from_arrays(offsets, pa.array(matrix.astype(dtype).ravel()))


def _ratio(num: np.ndarray, den: np.ndarray) -> pa.Array:
    """num/den as float32, null where den == 0 (a rate of nothing is unknown, not zero)."""
    safe = np.where(den > 0, den, 1)
    return pa.array((num / safe).astype(np.float32), mask=den <= 0)


def _shares(matrix: np.ndarray) -> np.ndarray:
    total = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, total, out=np.zeros_like(matrix, dtype=np.float64), where=total > 0)


@dataclass
class _MemberIndex:
    ids: np.ndarray  # sorted unique member ids
    idx: np.ndarray  # row -> member index (rows sorted by day)
    day: np.ndarray
    slot: np.ndarray
    n: np.ndarray
    first_day: np.ndarray  # per member
    play_idx: np.ndarray  # play rows only, sorted by day
    play_day: np.ndarray
    country: pa.Array  # per member, from members.parquet (null if unknown)


class SnapshotBuilder:
    """Expands a Combined into per-as_of feature tables. Construction indexes the partials once
    (numpy); each snapshot is then a few vectorised bincounts over the rows with day < as_of."""

    def __init__(self, combined: Combined, vocab: Vocab, spec: FeatureSpec,
                 members: pa.Table | None = None):
        # Keep only the indexed arrays (not the partial tables): the builder is shipped once to
        # every Ray worker that writes snapshots.
        self.vocab, self.spec = vocab, spec
        self.first_day, self.last_day = combined.first_day, combined.last_day
        self.slots = MemberSlots.of(vocab, spec)
        self._members = self._index_members(combined.member_slots, members)
        self._index_titles(combined.title_daily)
        self._index_cowatch(combined.member_title)

    # -- as_of range -------------------------------------------------------------------------
    def as_of_days(self) -> list[int]:
        """Every day of the events' range plus the day after the last (the 'latest' snapshot)."""
        return list(range(self.first_day, self.last_day + 2))

    # -- members -----------------------------------------------------------------------------
    def _index_members(self, table: pa.Table, members: pa.Table | None) -> _MemberIndex:
        table = table.sort_by([("day", "ascending"), ("member_id", "ascending"), ("slot", "ascending")])
        member_ids = table.column("member_id").to_numpy()
        ids, idx = np.unique(member_ids, return_inverse=True)
        day = table.column("day").to_numpy().astype(np.int64)
        slot = table.column("slot").to_numpy().astype(np.int64)
        n = table.column("n").to_numpy().astype(np.float64)
        first_day = np.full(len(ids), np.iinfo(np.int64).max)
        np.minimum.at(first_day, idx, day)
        is_play = slot == self.slots.plays
        country = pa.nulls(len(ids), pa.string())
        if members is not None and members.num_rows:
            lookup = pa.table({"member_id": pa.array(ids, pa.int64()), "_row": np.arange(len(ids))})
            joined = lookup.join(members.select(["member_id", "country"]), "member_id").sort_by("_row")
            if joined.num_rows == len(ids):
                country = joined.column("country").combine_chunks()
            else:  # some members lack a profile row: place the known countries by position
                values = [None] * len(ids)
                for row, c in zip(joined.column("_row").to_pylist(), joined.column("country").to_pylist()):
                    values[row] = c
                country = pa.array(values, pa.string())
        return _MemberIndex(ids, idx, day, slot, n, first_day, idx[is_play], day[is_play], country)

    def member(self, as_of: int) -> pa.Table:
        """Member features at as_of: one row per member with at least one event before as_of."""
        m, s = self._members, self.slots
        n_members, width = len(m.ids), s.size
        end = int(np.searchsorted(m.day, as_of, side="left"))

        def window(days: int, slot: int) -> np.ndarray:
            """Per-member count of `slot` over the `days` days before as_of."""
            start = int(np.searchsorted(m.day, as_of - days, side="left"))
            rows = start + np.flatnonzero(m.slot[start:end] == slot)
            return np.bincount(m.idx[rows], weights=m.n[rows], minlength=n_members)

        keys = m.idx[:end] * width + m.slot[:end]
        total = np.bincount(keys, weights=m.n[:end], minlength=n_members * width).reshape(n_members, width)
        genre_rows = np.flatnonzero(m.slot[:end] >= s.genre)
        decay = np.power(0.5, (as_of - m.day[genre_rows]) / self.spec.half_life_days)
        genre_keys = m.idx[genre_rows] * len(self.vocab.genres) + (m.slot[genre_rows] - s.genre)
        decayed = np.bincount(genre_keys, weights=m.n[genre_rows] * decay,
                              minlength=n_members * len(self.vocab.genres)).reshape(n_members, -1)
        play_end = int(np.searchsorted(m.play_day, as_of, side="left"))
        last_play = np.full(n_members, -1, dtype=np.int64)
        np.maximum.at(last_play, m.play_idx[:play_end], m.play_day[:play_end])

        keep = np.flatnonzero(m.first_day < as_of)
        plays7 = window(7, s.plays)[keep]
        plays30, impressions30 = window(30, s.plays)[keep], window(30, s.impressions)[keep]
        total, decayed, last_play = total[keep], decayed[keep], last_play[keep]
        hours = total[:, s.hour:s.hour + s.hour_buckets]
        devices = total[:, s.device:s.device + s.n_devices]
        plays, completions = total[:, s.plays], total[:, s.completions]
        impressions = total[:, s.impressions]
        since_last_play = as_of - last_play
        return pa.table({
            "member_id": pa.array(m.ids[keep], pa.int64()),
            "country": m.country.take(pa.array(keep)),
            "genre_affinity": _list_column(_shares(decayed)),
            "hour_share": _list_column(_shares(hours)),
            "device_share": _list_column(_shares(devices)),
            "events": pa.array(hours.sum(axis=1).astype(np.int64)),
            "plays": pa.array(plays.astype(np.int64)),
            "completions": pa.array(completions.astype(np.int64)),
            "impressions": pa.array(impressions.astype(np.int64)),
            "completion_rate": _ratio(completions, plays),
            "plays_7d": pa.array(plays7.astype(np.int64)),
            "plays_30d": pa.array(plays30.astype(np.int64)),
            "impressions_30d": pa.array(impressions30.astype(np.int64)),
            "play_through_rate": _ratio(plays30, impressions30),
            "days_since_last_play": pa.array(since_last_play.astype(np.int32), mask=last_play < 0),
            "days_since_first_event": pa.array((as_of - m.first_day[keep]).astype(np.int32)),
        })

    # -- titles ------------------------------------------------------------------------------
    def _index_titles(self, table: pa.Table) -> None:
        n_titles, n_countries = len(self.vocab.title_ids), len(self.vocab.countries)
        first = self.first_day
        self._n_days = self.last_day - first + 1
        tidx = self.vocab.title_index(table.column("title_id").to_numpy())
        dayo = table.column("day").to_numpy().astype(np.int64) - first
        country = table.column("country").to_numpy().astype(np.int64)
        country = np.where(country < 0, n_countries, country)  # last column = unknown country
        shape = (n_titles, self._n_days, n_countries + 1)
        by_country = np.zeros(shape, dtype=np.int64)
        np.add.at(by_country, (tidx, dayo, country), table.column("plays").to_numpy())
        completions = np.zeros(shape[:2], dtype=np.int64)
        np.add.at(completions, (tidx, dayo), table.column("completions").to_numpy())
        impressions = np.zeros(shape[:2], dtype=np.int64)
        np.add.at(impressions, (tidx, dayo), table.column("impressions").to_numpy())
        # cumulative over days with a leading zero: cum[:, k] = total of days first .. first+k-1
        zero = lambda a: np.zeros((a.shape[0], 1) + a.shape[2:], dtype=a.dtype)  # noqa: E731
        self._plays_daily = by_country.sum(axis=2)
        self._cum_country = np.concatenate([zero(by_country), by_country.cumsum(axis=1)], axis=1)
        self._cum_plays = np.concatenate([zero(self._plays_daily), self._plays_daily.cumsum(axis=1)], axis=1)
        self._cum_completions = np.concatenate([zero(completions), completions.cumsum(axis=1)], axis=1)
        self._cum_impressions = np.concatenate([zero(impressions), impressions.cumsum(axis=1)], axis=1)

    def _k(self, day: int) -> int:
        """Index into the cumulative arrays for 'all days before `day`'."""
        return int(np.clip(day - self.first_day, 0, self._n_days))

    def _window(self, cum: np.ndarray, as_of: int, days: int) -> np.ndarray:
        return cum[:, self._k(as_of)] - cum[:, self._k(as_of - days)]

    def title(self, as_of: int) -> pa.Table:
        """Title features at as_of: one row per catalog title (zeros for titles never seen)."""
        n_countries = len(self.vocab.countries)
        k = self._k(as_of)
        plays = self._cum_plays[:, k]
        completions = self._cum_completions[:, k]
        impressions = self._cum_impressions[:, k]
        plays_1d = self._window(self._cum_plays, as_of, 1)
        plays_7d = self._window(self._cum_plays, as_of, 7)
        # least-squares slope of daily plays over the 7 days before as_of (x = 0..6)
        x = np.arange(7) - 3.0
        idx = np.arange(as_of - 7, as_of) - self.first_day
        valid = (idx >= 0) & (idx < self._n_days)
        daily = np.zeros((len(self.vocab.title_ids), 7))
        daily[:, valid] = self._plays_daily[:, idx[valid]]
        slope = (daily * x).sum(axis=1) / (x * x).sum()
        release = self.vocab.release_day
        country_window = lambda days: self._window(self._cum_country, as_of, days)[:, :n_countries]  # noqa: E731
        return pa.table({
            "title_id": pa.array(self.vocab.title_ids, pa.int64()),
            "plays": pa.array(plays),
            "plays_1d": pa.array(plays_1d),
            "plays_7d": pa.array(plays_7d),
            "plays_30d": pa.array(self._window(self._cum_plays, as_of, 30)),
            "plays_1d_by_country": _list_column(country_window(1), np.int64),
            "plays_7d_by_country": _list_column(country_window(7), np.int64),
            "plays_30d_by_country": _list_column(country_window(30), np.int64),
            "completions": pa.array(completions),
            "completion_rate": _ratio(completions, plays),
            "impressions": pa.array(impressions),
            "play_rate": _ratio(plays, impressions),
            "trend_slope_7d": pa.array(slope.astype(np.float32)),
            "trend_ratio_1d_7d": _ratio(plays_1d * 7.0, plays_7d),
            "days_since_release": pa.array(
                np.nan_to_num(as_of - release).astype(np.int32), mask=np.isnan(release)),
        })

    # -- co-watch ----------------------------------------------------------------------------
    def _index_cowatch(self, table: pa.Table) -> None:
        self.cowatch_index = CowatchIndex.from_first_plays(
            table.column("member_id").to_numpy(), self.vocab.title_index(table.column("title_id").to_numpy()),
            table.column("first_ms").to_numpy() // MS_PER_DAY, len(self.vocab.title_ids))

    def cowatch_counts(self) -> CowatchCounts:
        """Co-watch counts at the start; `advance(as_of)` day by day, `table(title_ids)` each day."""
        return CowatchCounts(self.cowatch_index, self.spec.cowatch_k)

    def cowatch(self, as_of: int) -> pa.Table:
        """Top-K co-played titles per title from plays before as_of: count = members who played
        both, score = count / sqrt(n_i * n_j); ranked by count, then score, then title id.
        For a run of days, advance one `cowatch_counts()` instead (features.cowatch)."""
        return self.cowatch_counts().advance(as_of).table(self.vocab.title_ids)


def snapshot(builder: SnapshotBuilder, entity: str, as_of: int) -> pa.Table:
    """The one table of `entity` ('member', 'title' or 'cowatch') at day number `as_of`."""
    if entity == "member":
        return builder.member(as_of)
    if entity == "title":
        return builder.title(as_of)
    if entity == "cowatch":
        return builder.cowatch(as_of)
    raise FeatureError(f"unknown entity {entity!r}; expected member, title or cowatch")


ENTITIES = ("member", "title", "cowatch")
ENTITY_KEYS = {"member": "member_id", "title": "title_id", "cowatch": "title_id"}


def entity_defaults(entity: str, n_genres: int, n_countries: int, hour_buckets: int,
                    n_devices: int = len(DEVICES)) -> dict:
    """The row served for a key with no features (cold start): counts 0, shares all 0, rates and
    recencies unknown (None). Same values in the point-in-time join and in serving's snapshot arrays."""
    if entity == "member":
        return {
            "country": None, "genre_affinity": [0.0] * n_genres, "hour_share": [0.0] * hour_buckets,
            "device_share": [0.0] * n_devices, "events": 0, "plays": 0, "completions": 0,
            "impressions": 0, "completion_rate": None, "plays_7d": 0, "plays_30d": 0,
            "impressions_30d": 0, "play_through_rate": None, "days_since_last_play": None,
            "days_since_first_event": None,
        }
    if entity == "title":
        zeros = [0] * n_countries
        return {
            "plays": 0, "plays_1d": 0, "plays_7d": 0, "plays_30d": 0,
            "plays_1d_by_country": zeros, "plays_7d_by_country": list(zeros),
            "plays_30d_by_country": list(zeros), "completions": 0, "completion_rate": None,
            "impressions": 0, "play_rate": None, "trend_slope_7d": 0.0, "trend_ratio_1d_7d": None,
            "days_since_release": None,
        }
    if entity == "cowatch":
        return {"neighbours": []}
    raise FeatureError(f"unknown entity {entity!r}; expected member, title or cowatch")
