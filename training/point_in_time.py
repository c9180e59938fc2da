"""What an offline evaluation may know: the training events of a split, and labels as of each
member's point in time (DESIGN.md section 6: a feature, label or candidate may use only events
before the member's point in time and never the held-out events of anyone).

A member's point in time is their last training interaction (`Split.train_last_ts`, seconds).
The feature store the retrain gate (and `marquee eval --features`) reads is built from
`training_events(events, split)`: every member's events up to their point in time, without the
held-out interactions of anyone. Its snapshots then add the usual point-in-time cut (a snapshot at
day D reads only events before D), so no feature can see a held-out row or anything after the
member it describes was scored. Built from the whole log instead, the median evaluated member's
ml-100k snapshot held 4,218 of the 9,110 held-out rows (other members' held-out plays).

"Strong" (the completion objective's label, and the ranker's strong-play features) must be
known at the point in time too: on the world a play is strong if the member completed the title
by their point in time, not if they ever did (`strong_as_of_point_in_time`). MovieLens' strong
(rated 4+) is part of the interaction itself, so it is already point in time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.protocol import Split, temporal_split

_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Whole seconds of a timestamp (any unit) or integer-seconds column, as the split counts them."""
    if pa.types.is_timestamp(column.type):
        return column.cast(pa.int64()).to_numpy() // _PER_SECOND[column.type.unit]
    return column.cast(pa.int64()).to_numpy()


def _index(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each id in `sorted_ids`; -1 where absent."""
    if len(sorted_ids) == 0:
        return np.full(len(ids), -1, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.where(sorted_ids[pos] == ids, pos, -1)


@dataclass(frozen=True)
class TrainingEvents:
    """The events a split may learn from, and what was left out (for the store's manifest)."""

    events: pa.Table
    removed_held_out: int  # events on a member's held-out titles at or after their point in time
    removed_after_point_in_time: int  # other events after their member's point in time
    split_fingerprint: str

    def describe(self) -> dict:
        return {"kind": "training_only", "split": self.split_fingerprint, "events": self.events.num_rows,
                "removed_held_out": self.removed_held_out,
                "removed_after_point_in_time": self.removed_after_point_in_time}


def split_fingerprint(split: Split) -> str:
    """Identifies a split's points in time and held-out rows: a store built for one split is
    reusable (`--skip-features`) only by a retrain on the same split."""
    digest = hashlib.sha256()
    for array in (split.member_ids, split.title_ids, split.train_last_ts, split.test_members,
                  *split.test_items):
        digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"|")
    return digest.hexdigest()[:24]


def training_events(events: pa.Table, split: Split) -> TrainingEvents:
    """The rows of `events` (member_id, title_id, timestamp, ...) a feature may use under
    `split`: for each member of the split, events up to their point in time (same second
    included, as the split counts time), except events on their held-out titles from that
    second on (a held-out play tied in time with the last training one). Members outside the
    split (no interactions at all) hold no held-out rows and keep their events."""
    for name in ("member_id", "title_id", "timestamp"):
        if name not in events.column_names:
            raise ValueError(f"events: missing column {name!r} (need member_id, title_id, timestamp)")
    seconds = _seconds(events.column("timestamp"))
    member = _index(split.member_ids, pc.fill_null(events.column("member_id").cast(pa.int64()), -1).to_numpy())
    title = _index(split.title_ids, pc.fill_null(events.column("title_id").cast(pa.int64()), -1).to_numpy())
    in_split = member >= 0
    cut = np.where(in_split, split.train_last_ts[np.maximum(member, 0)], np.iinfo(np.int64).max)
    held = np.zeros(len(seconds), dtype=bool)
    if len(split.test_members):
        n_titles = len(split.title_ids)
        held_keys = np.sort(np.concatenate([m * n_titles + items.astype(np.int64)
                                            for m, items in zip(split.test_members, split.test_items)]))
        keys = member * n_titles + title
        candidate = in_split & (title >= 0)
        held[candidate] = _index(held_keys, keys[candidate]) >= 0
    keep = (seconds < cut) | ((seconds == cut) & ~held)
    removed_held = int((~keep & held).sum())
    return TrainingEvents(events.filter(pa.array(keep)), removed_held, int((~keep).sum()) - removed_held,
                          split_fingerprint(split))


def strong_as_of_point_in_time(interactions: pa.Table, completions: pa.Table) -> pa.Table:
    """`interactions` (member_id, title_id, timestamp: the plays) with `strong` = the member
    completed the title at or before their point in time (their last training play under the
    protocol's split). The split does not depend on `strong`, so it is computed from the plays
    first; a completion after the point in time is not known then, so it does not count."""
    plays = interactions.select(["member_id", "title_id", "timestamp"])
    split = temporal_split(plays)
    member = _index(split.member_ids, completions.column("member_id").cast(pa.int64()).to_numpy())
    known = member >= 0
    done_at = _seconds(completions.column("timestamp"))
    by_then = known & (done_at <= split.train_last_ts[np.maximum(member, 0)])
    done = completions.filter(pa.array(by_then))
    done_keys = np.unique(done.column("member_id").cast(pa.int64()).to_numpy() * (1 << 32)
                          + done.column("title_id").cast(pa.int64()).to_numpy())
    play_keys = (plays.column("member_id").cast(pa.int64()).to_numpy() * (1 << 32)
                 + plays.column("title_id").cast(pa.int64()).to_numpy())
    strong = _index(done_keys, play_keys) >= 0
    kept = [c for c in interactions.column_names if c != "strong"]
    return interactions.select(kept).append_column("strong", pa.array(strong))


def completions(events: pa.Table) -> pa.Table:
    """(member_id, title_id, timestamp) of every completion event among `events` (a Marquee
    event table with at least those columns and `type`)."""
    done = events.filter(pc.and_(pc.equal(events.column("type"), "completion"),
                                 pc.is_valid(events.column("title_id"))))
    return done.select(["member_id", "title_id", "timestamp"])


def held_out_rows_seen(events: pa.Table, split: Split) -> list[int]:
    """Per evaluated member, how many held-out rows (of anyone) the store snapshot of their point
    in time would contain if built from `events`: the leak `training_events` closes. A held-out
    row is an event on a member's held-out title from their point in time on (the held-out
    interaction and what followed it on that title; an earlier impression of it is training)."""
    from marquee.names import DAY_S

    seconds = _seconds(events.column("timestamp"))
    member = _index(split.member_ids, pc.fill_null(events.column("member_id").cast(pa.int64()), -1).to_numpy())
    title = _index(split.title_ids, pc.fill_null(events.column("title_id").cast(pa.int64()), -1).to_numpy())
    n_titles = len(split.title_ids)
    held_keys = np.sort(np.concatenate([m * n_titles + items.astype(np.int64)
                                        for m, items in zip(split.test_members, split.test_items)]))
    ok = (member >= 0) & (title >= 0)
    is_held = np.zeros(len(seconds), dtype=bool)
    is_held[ok] = _index(held_keys, (member * n_titles + title)[ok]) >= 0
    is_held &= seconds >= split.train_last_ts[np.maximum(member, 0)]
    held_days = np.sort(seconds[is_held] // DAY_S)
    snapshot_days = split.train_last_ts[split.test_members] // DAY_S  # a snapshot reads days before
    return np.searchsorted(held_days, snapshot_days, side="left").tolist()


def build_training_store(source: Path | str, split: Split, store_dir: Path | str, engine: str = "arrow"):
    """The feature job over `split`'s training events only (no held-out row of anyone, nothing
    after a member's point in time), into a new version under `store_dir`: what the retrain
    gate's candidates and `marquee eval --features` read. `source` is the Marquee dataset
    directory of the split's data. Only the entities the ranker's point-in-time join reads are
    written (co-watch would feed nothing here)."""
    from features.offline_store import JOINED_ENTITIES
    from marquee.dataset import load_dataset
    from training.features import run_feature_job

    kept = training_events(load_dataset(source).events(), split)
    return run_feature_job(source, store_dir, engine=engine, events=kept.events,
                           manifest_extra=kept.describe(), entities=JOINED_ENTITIES)
