"""The dataset directory: atomic writes, day partitions, clear errors for what is missing."""

from __future__ import annotations

import pyarrow as pa
import pytest

from marquee.dataset import DatasetError, conform, load_dataset, write_dataset
from marquee.schema import TITLE_SCHEMA, Event, events_to_table

DAY_MS = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z


def tables():
    titles = pa.table({
        "title_id": [1, 2], "name": ["A", "B"], "genres": [["Drama"], ["Comedy", "Drama"]],
        "release_year": [2020, 2026], "release_date": [None, None], "maturity": [1, 3],
        "runtime_min": [90, 45], "countries": [["US"], ["US", "BR"]], "kind": ["movie", "series"],
        "series_id": [None, 9], "season": [None, 1], "episodes": [1, 8],
    })
    artwork = pa.table({"artwork_id": ["1-0", "2-0"], "title_id": [1, 2], "theme": ["dark", "comedy"]})
    members = pa.table({
        "member_id": [5], "country": ["US"], "maturity": [3], "language": ["en"],
        "devices": [["tv"]], "taste": [[0.1, 0.2]], "activity": [1.5], "join_date": [None],
    })
    events = [
        Event.parse({"event_id": f"e{i}", "member_id": 5, "title_id": 1 + i % 2, "type": "play",
                     "timestamp": T0 + i * DAY_MS // 2})
        for i in range(6)
    ]
    return titles, artwork, members, events_to_table(events, list(range(6)))


def test_write_then_load_round_trip(tmp_path):
    titles, artwork, members, events = tables()
    out = write_dataset(tmp_path / "w", titles=titles, artwork=artwork, members=members,
                        events=[events.slice(0, 3), events.slice(3)], manifest={"source": "test"})
    loaded = load_dataset(out)
    assert loaded.manifest["events"] == 6
    assert loaded.titles.column("title_id").to_pylist() == [1, 2]
    got = loaded.events().sort_by("seq")
    assert got.column("event_id").to_pylist() == [f"e{i}" for i in range(6)]
    assert sorted(set(got.column("day").to_pylist())) == ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert [p.name for p in sorted((out / "events").iterdir())] == [
        "day=2026-01-01", "day=2026-01-02", "day=2026-01-03"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_failed_write_leaves_previous_dataset(tmp_path):
    titles, artwork, members, events = tables()
    write_dataset(tmp_path / "w", titles=titles, artwork=artwork, members=members, events=events,
                  manifest={"source": "first"})
    with pytest.raises(DatasetError, match="titles: missing column"):
        write_dataset(tmp_path / "w", titles=titles.drop(["name"]), artwork=artwork,
                      members=members, events=events, manifest={"source": "second"})
    assert load_dataset(tmp_path / "w").manifest["source"] == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["w"]


def test_load_names_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "titles.parquet").write_bytes(b"")
    with pytest.raises(DatasetError, match="missing artwork.parquet, members.parquet, manifest.json, events"):
        load_dataset(tmp_path / "half")


def test_conform_names_bad_column():
    titles, *_ = tables()
    with pytest.raises(DatasetError, match=r"titles.title_id: cannot be read as int64"):
        conform(titles.set_column(0, "title_id", pa.array(["x", "y"])), TITLE_SCHEMA, "titles")
    with pytest.raises(DatasetError, match="titles.name: 1 null value"):
        conform(titles.set_column(1, "name", pa.array(["x", None])), TITLE_SCHEMA, "titles")
