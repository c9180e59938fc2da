"""What serving knows without any model: titles, artwork, member profiles, and popular rows.

Built once per replica from the dataset directory. The popular rows (top in country, trending,
new releases, most popular) need no model and no member history, so they are both the cold-start
rows and the precomputed page that serves when every candidate source has failed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from deployments.contracts import DAY_MS, TitleInfo, catalog_from_rows
from marquee.schema import MAX_MATURITY

POPULAR_DEPTH = 60  # titles kept per popular list: enough for a row after rules and dedupe


@dataclass(frozen=True)
class MemberProfile:
    country: str
    maturity: int


@dataclass
class ServingCatalog:
    titles: dict[int, TitleInfo]
    artwork: dict[int, tuple[str, ...]]  # title_id -> artwork ids (the bandit's arms)
    members: dict[int, MemberProfile]
    top_in_country: dict[str, list[tuple[int, float]]]
    popular: list[tuple[int, float]]  # all countries: the fallback for an unknown country
    trending: list[tuple[int, float]]
    new_releases: list[tuple[int, float]]
    as_of_ms: int
    genres: tuple[str, ...] = ()
    default_country: str = "US"  # for a member with no profile and no country in the request
    plays_all: dict[int, float] = field(default_factory=dict)  # all-time plays of every played title
    artwork_theme: dict[str, str] = field(default_factory=dict)  # artwork id -> its theme (the bandit's arm class)

    def profile(self, member_id: int) -> MemberProfile | None:
        return self.members.get(member_id)

    def top_for(self, country: str) -> list[tuple[int, float]]:
        return self.top_in_country.get(country) or self.popular

    def by_genre(self, genres: tuple[str, ...], limit: int = POPULAR_DEPTH) -> list[tuple[int, float]]:
        """Popular titles of the given genres (onboarding tastes of a member with no history)."""
        wanted = set(genres)
        hits = [(tid, self.plays_all.get(tid, 0.0)) for tid, info in self.titles.items() if wanted & info.genre_set]
        hits.sort(key=lambda item: (-item[1], item[0]))
        return hits[:limit]


def _top(counter: Counter, limit: int) -> list[tuple[int, float]]:
    return [(int(t), float(c)) for t, c in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def load_catalog(dataset_dir: str | Path, *, trending_days: int = 7, country_days: int = 30,
                 new_release_days: int = 180) -> ServingCatalog:
    """Read the dataset once and precompute the popular lists as of its last event."""
    from marquee.dataset import load_dataset

    dataset = load_dataset(dataset_dir)
    titles = catalog_from_rows(dataset.titles.to_pylist())
    artwork: dict[int, list[str]] = {}
    art_ids = dataset.artwork.column("artwork_id").to_pylist()
    for art, tid in zip(art_ids, dataset.artwork.column("title_id").to_pylist()):
        artwork.setdefault(int(tid), []).append(art)
    artwork_theme = dict(zip(art_ids, dataset.artwork.column("theme").to_pylist()))
    members = {
        int(m): MemberProfile(country, min(int(maturity), MAX_MATURITY))
        for m, country, maturity in zip(dataset.members.column("member_id").to_pylist(),
                                        dataset.members.column("country").to_pylist(),
                                        dataset.members.column("maturity").to_pylist())
    }
    events = dataset.events(columns=["member_id", "title_id", "type", "timestamp"])
    plays = events.filter(pc.equal(events.column("type"), "play"))
    ms = plays.column("timestamp").cast("int64").to_numpy() if plays.num_rows else np.zeros(0, np.int64)
    as_of = int(ms.max()) if len(ms) else int(datetime.now(timezone.utc).timestamp() * 1000)
    member_ids = plays.column("member_id").to_numpy()
    title_ids = plays.column("title_id").to_numpy()

    def counts(days: int, mask: np.ndarray | None = None) -> Counter:
        keep = ms > as_of - days * DAY_MS
        if mask is not None:
            keep &= mask
        return Counter(title_ids[keep].tolist())

    country_of = np.array([members[m].country if m in members else "" for m in member_ids.tolist()], dtype=object)
    by_country = {c: _top(counts(country_days, country_of == c), POPULAR_DEPTH)
                  for c in sorted({p.country for p in members.values()})}
    released = []
    for tid, info in titles.items():
        if info.release_date_ms is None:
            continue
        age_days = (as_of - info.release_date_ms) / DAY_MS
        if 0 <= age_days <= new_release_days:
            released.append((tid, float(new_release_days - age_days)))
    released.sort(key=lambda item: (-item[1], item[0]))
    all_time = Counter(title_ids.tolist())
    genres = tuple(sorted({g for info in titles.values() for g in info.genres}))
    return ServingCatalog(
        titles=titles,
        artwork={tid: tuple(arts) for tid, arts in artwork.items()},
        artwork_theme=artwork_theme,
        members=members,
        top_in_country=by_country,
        popular=_top(counts(country_days), POPULAR_DEPTH),
        trending=_top(counts(trending_days), POPULAR_DEPTH),
        new_releases=released[:POPULAR_DEPTH],
        as_of_ms=as_of,
        genres=genres,
        plays_all={int(t): float(c) for t, c in all_time.items()},
    )
