"""Small hand-made datasets for the feature tests (unit and integration): exact, fast, no world
generator needed. Imported by test modules (tests/ is on sys.path through the root conftest)."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from marquee.dataset import write_dataset
from marquee.schema import DEVICES, STORED_EVENT_SCHEMA

GENRES = ("Action", "Comedy", "Drama", "Sci-Fi")
COUNTRIES = ("FR", "US")


def ms(day: str, hour: int = 12, minute: int = 0) -> int:
    """Epoch milliseconds of `day` (YYYY-MM-DD) at hour:minute UTC."""
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, hour, minute, tzinfo=timezone.utc).timestamp() * 1000)


def titles_table(genres_by_title: dict[int, list[str]], release: dict[int, date | None] | None = None) -> pa.Table:
    ids = sorted(genres_by_title)
    release = release or {}
    n = len(ids)
    return pa.table({
        "title_id": pa.array(ids, pa.int64()),
        "name": [f"Title {i}" for i in ids],
        "genres": [genres_by_title[i] for i in ids],
        "release_year": pa.array([2020] * n, pa.int32()),
        "release_date": pa.array([release.get(i, date(2025, 12, 1)) for i in ids], pa.date32()),
        "maturity": pa.array([3] * n, pa.int8()),
        "runtime_min": pa.array([90] * n, pa.int32()),
        "countries": [list(COUNTRIES)] * n,
        "kind": ["movie"] * n,
        "series_id": pa.nulls(n, pa.int64()),
        "season": pa.nulls(n, pa.int32()),
        "episodes": pa.array([1] * n, pa.int32()),
    })


def members_table(countries: dict[int, str]) -> pa.Table:
    ids = sorted(countries)
    n = len(ids)
    return pa.table({
        "member_id": pa.array(ids, pa.int64()),
        "country": [countries[i] for i in ids],
        "maturity": pa.array([3] * n, pa.int8()),
        "language": ["en"] * n,
        "devices": [["tv"]] * n,
        "taste": pa.nulls(n, pa.list_(pa.float32())),
        "activity": pa.array([1.0] * n, pa.float32()),
        "join_date": pa.array([date(2025, 1, 1)] * n, pa.date32()),
    })


def events_table(rows: list[dict]) -> pa.Table:
    """Rows with member_id, title_id, type, timestamp (ms) and optional country/device."""
    n = len(rows)
    columns = {f.name: [None] * n for f in STORED_EVENT_SCHEMA}
    for i, row in enumerate(rows):
        for key, value in row.items():
            columns[key][i] = value
        columns["event_id"][i] = row.get("event_id", f"e{i}")
        columns["seq"][i] = i
    return pa.table({f.name: pa.array(columns[f.name], f.type) for f in STORED_EVENT_SCHEMA})


def write(out: Path, titles: pa.Table, members: pa.Table, events: list[dict] | pa.Table) -> Path:
    table = events if isinstance(events, pa.Table) else events_table(events)
    artwork = pa.table({"artwork_id": ["1-0"], "title_id": pa.array([1], pa.int64()), "theme": ["action"]})
    return write_dataset(out, titles=titles, artwork=artwork, members=members, events=table,
                         manifest={"source": "test"})


def random_events(n_events: int, n_members: int, n_titles: int, days: int, seed: int,
                  start: str = "2026-01-01") -> list[dict]:
    """Seeded random events (impressions, plays, completions, thumbs, searches) over `days` days."""
    rng = np.random.default_rng(seed)
    t0 = ms(start, 0)
    stamps = np.sort(t0 + rng.integers(0, days * 86_400_000, n_events))
    kinds = rng.choice(["impression", "play", "completion", "thumb", "search"], n_events,
                       p=[0.6, 0.2, 0.1, 0.05, 0.05])
    rows = []
    for i in range(n_events):
        kind = str(kinds[i])
        rows.append({
            "member_id": int(rng.integers(0, n_members)),
            "title_id": None if kind == "search" else int(rng.integers(1, n_titles + 1)),
            "type": kind,
            "timestamp": int(stamps[i]),
            "country": str(rng.choice(COUNTRIES)),
            "device": str(rng.choice(DEVICES)),
            "value": -1.0 if kind == "thumb" else None,
        })
    return rows


def random_dataset(out: Path, n_events: int = 2000, n_members: int = 40, n_titles: int = 25,
                   days: int = 10, seed: int = 0) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(seed + 1)
    genres = {t: sorted({str(g) for g in rng.choice(GENRES, size=int(rng.integers(1, 3)), replace=False)})
              for t in range(1, n_titles + 1)}
    countries = {m: str(rng.choice(COUNTRIES)) for m in range(n_members)}
    rows = random_events(n_events, n_members, n_titles, days, seed)
    return write(out, titles_table(genres), members_table(countries), rows), rows
