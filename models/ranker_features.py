"""Features for the ranker, per (member, title) candidate, all point in time: nothing later than
the member's now (their last training interaction) is read. Candidate sources contribute their
score and rank; the rest describe the title's popularity and trend before now, its age in the
catalog, the member's activity, and content match."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.histories import Histories
from features import offline_store
from features.offline_store import join_point_in_time
from models.protocol import TrainData
from models.retrieval import DAY_S

WINDOWS_DAYS = (1, 7, 30, 365)


@dataclass
class StoreLink:
    """Where the offline feature store is, and how this data's indices map to its ids: the ranker
    then also reads the store's member and title features as of each member's now."""

    store_dir: str
    member_ids: np.ndarray  # member index -> external member_id
    title_ids: np.ndarray  # title index -> external title_id
    version: str | None = None


def store_features(link: StoreLink, member_ids: np.ndarray, titles: np.ndarray, now_s: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
    """Numeric member/title features from the offline store's snapshot for the UTC day of each
    member's now: computed only from events strictly before that day (no leakage). Members are
    external ids (a live member may be newer than the fit); titles are indices."""
    examples = pa.table({
        "member_id": pa.array(np.asarray(member_ids), pa.int64()),
        "title_id": pa.array(link.title_ids[titles], pa.int64()),
        "timestamp": pa.array(np.asarray(now_s, dtype=np.int64) * 1000, pa.timestamp("ms", tz="UTC")),
    })
    joined = join_point_in_time(examples, link.store_dir, link.version)
    names, columns = [], []
    for name in joined.column_names[3:]:
        column = joined.column(name)
        kind = column.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            continue
        values = pc.fill_null(column.cast(pa.float64()), float("nan")).to_numpy()
        names.append(f"store_{name}")
        columns.append(values)
    return names, columns


class SnapshotFeatures:
    """`store_features` at one fixed point in time (serving: the model's as-of), precomputed into
    arrays at load so a request costs lookups instead of an Arrow join. Same names and values as
    store_features for any member and title at that time (a test checks it)."""

    def __init__(self, link: StoreLink, now_s: int):
        self.link, self.now_s = link, int(now_s)
        store, version = link.store_dir, link.version
        manifest = offline_store.read_manifest(store, version)
        ms = self.now_s * 1000
        day = offline_store.snapshot_day(manifest, int(ms // offline_store.MS_PER_DAY))
        member_table = offline_store.features_as_of(store, "member", day, version)
        self.member_ids = member_table.column("member_id").to_numpy()
        self._member_row = {int(m): i for i, m in enumerate(self.member_ids)}
        n_titles = len(link.title_ids)
        title0 = np.zeros(1, dtype=np.int64)
        self.names, _ = store_features(link, np.array([-1]), title0, np.array([self.now_s]))
        # member block: every snapshot member plus one unknown member (the cold defaults, last row)
        members = np.append(self.member_ids, -1)
        names, cols = store_features(link, members, np.zeros(len(members), np.int64), np.full(len(members), self.now_s))
        self._member_cols = {n: c for n, c in zip(names, cols) if n.startswith("store_member_")}
        # title block: every title, seen by a cold member (title features do not depend on who asks)
        names, cols = store_features(link, np.full(n_titles, -1), np.arange(n_titles), np.full(n_titles, self.now_s))
        self._title_cols = {n: c for n, c in zip(names, cols) if n.startswith("store_title_")}
        # pair features: genre affinity . title genres, and the title's plays in the member's country
        genres, countries = manifest["genres"], manifest["countries"]
        affinity = np.zeros((len(members), len(genres)))
        present = ~pc.is_null(member_table.column("genre_affinity")).to_numpy(zero_copy_only=False)
        if present.any():
            affinity[:-1][present] = offline_store._matrix(
                member_table.column("genre_affinity").filter(pa.array(present)), len(genres))
        self._affinity = affinity
        version_dir = offline_store.resolve_version_dir(store, version)
        self._title_genres = offline_store._title_genre_matrix(
            manifest, version_dir, pa.chunked_array([pa.array(link.title_ids, pa.int64())]))
        code = pc.fill_null(pc.index_in(member_table.column("country"), value_set=pa.array(countries, pa.string())), -1)
        self._member_country = np.append(code.to_numpy(zero_copy_only=False), -1)
        in_country = np.zeros((n_titles, len(countries) + 1))
        for c, country in enumerate(countries):
            examples = pa.table({
                "member_id": pa.array(np.full(n_titles, -1), pa.int64()),
                "title_id": pa.array(link.title_ids, pa.int64()),
                "timestamp": pa.array(np.full(n_titles, ms), pa.timestamp("ms", tz="UTC")),
                "country": pa.array([country] * n_titles, pa.string()),
            })
            joined = join_point_in_time(examples, store, version)
            in_country[:, c] = joined.column("title_plays_7d_in_country").to_numpy()
        self._in_country = in_country  # last column: unknown country -> 0

    def to_arrays(self) -> tuple[dict, dict[str, np.ndarray]]:
        """Settings (JSON-able) and arrays: what a model bundle stores so a served model reads
        the features it was trained with, not whatever the store holds when a replica starts."""
        params = {"now_s": self.now_s, "names": list(self.names), "member_columns": list(self._member_cols),
                  "title_columns": list(self._title_cols)}
        arrays = {"member_ids": self.member_ids, "affinity": self._affinity, "title_genres": self._title_genres,
                  "member_country": self._member_country, "in_country": self._in_country,
                  **{f"member.{name}": column for name, column in self._member_cols.items()},
                  **{f"title.{name}": column for name, column in self._title_cols.items()}}
        return params, arrays

    @classmethod
    def from_arrays(cls, params: dict, arrays: dict[str, np.ndarray]) -> "SnapshotFeatures":
        snapshot = cls.__new__(cls)  # the computed state as stored: no offline store is read
        snapshot.link, snapshot.now_s, snapshot.names = None, int(params["now_s"]), list(params["names"])
        snapshot.member_ids = arrays["member_ids"]
        snapshot._member_row = {int(m): i for i, m in enumerate(snapshot.member_ids)}
        snapshot._member_cols = {name: arrays[f"member.{name}"] for name in params["member_columns"]}
        snapshot._title_cols = {name: arrays[f"title.{name}"] for name in params["title_columns"]}
        snapshot._affinity, snapshot._title_genres = arrays["affinity"], arrays["title_genres"]
        snapshot._member_country, snapshot._in_country = arrays["member_country"], arrays["in_country"]
        return snapshot

    def features(self, member_ids: np.ndarray, titles: np.ndarray, now_s: np.ndarray) -> tuple[list[str], list[np.ndarray]]:
        rows = np.fromiter((self._member_row.get(int(m), -1) for m in member_ids), dtype=np.int64,
                           count=len(member_ids))
        rows[rows < 0] = len(self.member_ids)  # the cold-defaults row
        titles = np.asarray(titles, dtype=np.int64)
        columns = []
        for name in self.names:
            if name == "store_genre_match":
                columns.append((self._affinity[rows] * self._title_genres[titles]).sum(axis=1).astype(np.float32)
                               .astype(np.float64))
            elif name == "store_title_plays_7d_in_country":
                columns.append(self._in_country[titles, self._member_country[rows]])
            elif name in self._member_cols:
                columns.append(self._member_cols[name][rows])
            else:
                columns.append(self._title_cols[name][titles])
        return list(self.names), columns


@dataclass
class Candidates:
    """Candidate pairs, grouped by member (rows of one member contiguous), with their features."""

    members: np.ndarray
    titles: np.ndarray
    features: np.ndarray  # float32, len(members) x len(names)
    names: list[str]

    def __post_init__(self) -> None:
        if not (len(self.members) == len(self.titles) == len(self.features)):
            raise ValueError("candidates: members, titles and features must have the same length")
        if self.features.shape[1] != len(self.names):
            raise ValueError(f"candidates: {self.features.shape[1]} feature columns for {len(self.names)} names")

    def group_sizes(self) -> np.ndarray:
        _, sizes = np.unique(self.members, return_counts=True)
        return sizes


def ranks_of(scores: np.ndarray) -> np.ndarray:
    """0-based rank of every column within its row (0 = best)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return ranks


@dataclass
class MemberBatch:
    """The members one build covers: their histories (with now), how long and how much they have
    watched, and their keys. `keys` identify rows in the output (member indices offline, request
    rows online); `ids` are external member ids for the feature store."""

    histories: Histories
    keys: np.ndarray
    ids: np.ndarray
    rows: np.ndarray  # interactions so far
    first: np.ndarray  # time (s) of the first interaction; int64 max when none

    @classmethod
    def from_data(cls, data: TrainData, members: np.ndarray, member_ids: np.ndarray | None = None) -> "MemberBatch":
        members = np.asarray(members, dtype=np.int64)
        counts = np.bincount(data.members, minlength=data.shape[0])
        first = np.full(data.shape[0], np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, data.members, data.timestamps)
        ids = members if member_ids is None else np.asarray(member_ids)[members]
        return cls(Histories.from_data(data, members), members, ids, counts[members], first[members])


class FeatureBuilder:
    """Turns fitted candidate sources into ranker rows for a batch of members."""

    def __init__(self, data: TrainData, sources: dict, depth: dict[str, int],
                 title_genres=None, strong: np.ndarray | None = None, store: StoreLink | None = None,
                 snapshot: "SnapshotFeatures | None" = None):
        self.data, self.sources, self.depth, self.store = data, sources, depth, store
        # the store's features precomputed at one time (a served model's as-of): read instead of
        # joining the store per request
        self.snapshot = snapshot
        order = np.lexsort((data.timestamps, data.titles))
        self._title_time_key = data.titles[order].astype(np.int64) * (1 << 40) + data.timestamps[order]
        first = np.full(data.shape[1], np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first, data.titles, data.timestamps)
        self._first_seen = first
        self._strong_key = None  # per title, times of strong rows (completed / liked)
        if strong is not None:
            keep = np.asarray(strong, dtype=bool)[order]
            self._strong_key = self._title_time_key[keep]

    @staticmethod
    def _window_counts(key: np.ndarray, titles: np.ndarray, now: np.ndarray, days: float) -> np.ndarray:
        base = titles.astype(np.int64) * (1 << 40)
        hi = np.searchsorted(key, base + now, side="right")
        lo = np.searchsorted(key, base + now - int(days * DAY_S), side="right")
        return (hi - lo).astype(np.float32)

    def _title_age_days(self, titles: np.ndarray, now: np.ndarray) -> np.ndarray:
        """Days since the title's first play, or -1 when it had none by `now`. (A clipped
        `now - first_seen` leaked: a first play less than a day after now gave -0.x.)"""
        first = self._first_seen[titles]
        return np.where(first <= now, np.minimum((now - first) / DAY_S, 1e5), -1.0)

    def build(self, members: np.ndarray) -> Candidates:
        """Offline: candidates and features for member indices of the fitted data."""
        ids = None if self.store is None else self.store.member_ids
        return self.build_batch(MemberBatch.from_data(self.data, members, ids))

    def source_scores(self, histories: Histories) -> dict[str, np.ndarray]:
        return {name: source.score_histories(histories) for name, source in self.sources.items()}

    def build_batch(self, batch: MemberBatch, scores: dict[str, np.ndarray | None] | None = None,
                    include: np.ndarray | None = None) -> Candidates:
        """Candidates (each source's top `depth` unseen titles, plus unseen titles in `include`,
        a rows x titles mask: features for given pairs) with every feature of the ranker.

        `scores` may bring precomputed source scores (serving runs sources under timeouts); a
        source given as None failed: it proposes nothing and its features are missing (NaN),
        which the booster handles as it does any missing value."""
        histories = batch.histories
        scores = self.source_scores(histories) if scores is None else dict(scores)
        seen = histories.seen()
        ranks = {}
        chosen = np.zeros(seen.shape, dtype=bool)
        for name in self.sources:
            if scores.get(name) is None:
                continue
            s = np.where(seen, -np.inf, scores[name])
            scores[name], ranks[name] = s, ranks_of(s)
            chosen |= ranks[name] < self.depth.get(name, 0)
        if include is not None:
            chosen |= include
        chosen &= ~seen
        rows, titles = np.nonzero(chosen)  # row-major: grouped by member
        who = batch.keys[rows]
        now = histories.now[rows]
        names, columns = [], []
        for name in self.sources:
            names += [f"{name}_score", f"{name}_rank"]
            if name not in ranks:
                columns += [np.full(len(rows), np.nan), np.full(len(rows), np.nan)]
                continue
            value = scores[name][rows, titles]
            columns += [np.where(np.isfinite(value), value, 0.0), ranks[name][rows, titles]]
        for days in WINDOWS_DAYS:
            names.append(f"plays_{days}d")
            columns.append(self._window_counts(self._title_time_key, titles, now, days))
        names += ["plays_7d_over_30d", "title_age_days", "member_rows", "member_tenure_days"]
        columns += [
            (columns[names.index("plays_7d")] + 1) / (columns[names.index("plays_30d")] + 4),
            self._title_age_days(titles, now),
            batch.rows[rows],
            (now - batch.first[rows]) / DAY_S,
        ]
        if self._strong_key is not None:
            ever = self._window_counts(self._title_time_key, titles, now, 1e5)
            strong = self._window_counts(self._strong_key, titles, now, 1e5)
            names.append("title_strong_rate")
            columns.append((strong + 1) / (ever + 2))
        if self.snapshot is not None:
            store_names, store_columns = self.snapshot.features(batch.ids[rows], titles, now)
            names += store_names
            columns += store_columns
        elif self.store is not None:
            store_names, store_columns = store_features(self.store, batch.ids[rows], titles, now)
            names += store_names
            columns += store_columns
        features = np.column_stack(columns).astype(np.float32) if columns else np.zeros((0, 0), np.float32)
        return Candidates(who, titles, features, names)
