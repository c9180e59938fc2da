"""The synthetic world: deterministic, schema-conformant, and realistic where recommendation
depends on it (learnable taste signal, long tail, diurnal load, logged propensities, series,
cold start, availability and maturity)."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest

from marquee.dataset import load_dataset
from marquee.schema import CLIENT_EVENT_TYPES, EVENT_TYPES, STORED_EVENT_SCHEMA, Event
from marquee.settings import SettingsError
from ops.cli import main as marquee_main
from producers.world.generate import (
    GENRES,
    WorldSettings,
    generate_world,
    generate_world_from,
)

SMALL = dict(members=200, titles=150, days=7, seed=11)
START = date(2026, 1, 1)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(**SMALL, out=out)
    return out


@pytest.fixture(scope="module")
def world(world_dir):
    return load_dataset(world_dir)


@pytest.fixture(scope="module")
def events(world):
    return world.events().sort_by("seq").to_pandas()


def _match(world, member_ids, title_ids) -> np.ndarray:
    import pyarrow.parquet as pq

    taste = np.array(world.members.column("taste").to_pylist(), dtype=np.float64)
    latent = pq.read_table(world.root / "latent_titles.parquet")
    assert latent.column("title_id").to_pylist() == world.titles.column("title_id").to_pylist()
    vectors = np.array(latent.column("vector").to_pylist(), dtype=np.float64)
    return (taste[np.asarray(member_ids) - 1] * vectors[np.asarray(title_ids) - 1]).sum(axis=1)


# -- determinism and shape -----------------------------------------------------------------------


def test_same_seed_gives_byte_identical_files(tmp_path):
    args = dict(members=60, titles=40, days=3, seed=5)
    a = generate_world(**args, out=tmp_path / "a").path
    b = generate_world(**args, out=tmp_path / "b").path
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) > 5
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_different_seed_gives_a_different_world():
    a = generate_world(members=60, titles=40, days=3, seed=5)
    b = generate_world(members=60, titles=40, days=3, seed=6)
    assert not a.titles.equals(b.titles)
    assert not a.events.to_table().equals(b.events.to_table())


def test_events_are_re_iterable_and_identical_each_pass():
    w = generate_world(members=40, titles=30, days=2, seed=1)
    assert w.events.to_table().equals(w.events.to_table())


def test_written_dataset_loads_and_matches_the_manifest(world, events):
    m = world.manifest
    assert m["source"] == "world" and m["seed"] == SMALL["seed"]
    assert (m["members"], m["titles"], m["days"]) == (200, 150, 7)
    assert m["events"] == len(events) > 5000
    assert world.titles.num_rows == 150 and world.members.num_rows == 200
    assert m["artwork"] == world.artwork.num_rows
    assert m["genres"] == list(GENRES) and 15 <= len(GENRES) <= 20
    assert world.events_dataset().schema.names[: len(STORED_EVENT_SCHEMA)] == STORED_EVENT_SCHEMA.names


def test_seq_is_dense_and_in_timestamp_order_with_unique_ids(events, world):
    assert events["seq"].tolist() == list(range(len(events)))
    assert events["timestamp"].is_monotonic_increasing
    assert events["event_id"].is_unique
    assert events["event_id"].iloc[0] == f"w{SMALL['seed']}-0"
    assert events["timestamp"].min() >= pd.Timestamp("2026-01-01", tz="UTC")
    assert events["timestamp"].max() < pd.Timestamp("2026-01-08", tz="UTC")  # cut at the window's end
    assert set(events["type"]) == set(CLIENT_EVENT_TYPES) - {"preference"}  # the world simulates no onboarding
    # Partitions hold their own UTC day.
    day = world.events(columns=["timestamp", "day"]).to_pandas()
    assert (day["timestamp"].dt.strftime("%Y-%m-%d") == day["day"]).all()


def test_every_event_passes_validation(events):
    sample = events.sample(n=3000, random_state=0)
    for row in sample.to_dict("records"):
        raw = {k: (None if _is_null(v) else v) for k, v in row.items() if k not in ("seq", "day")}
        raw["timestamp"] = int(row["timestamp"].timestamp() * 1000)
        for name in ("member_id", "title_id", "position"):
            if raw[name] is not None:
                raw[name] = int(raw[name])
        Event.parse(raw)


def _is_null(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


# -- catalog and members -------------------------------------------------------------------------


def test_titles_are_readable_and_varied(world):
    t = world.titles.to_pandas()
    assert t["name"].is_unique
    assert all(len(n) > 3 and n[0].isupper() for n in t["name"])
    assert t["genres"].map(len).between(1, 3).all()
    assert set(g for gs in t["genres"] for g in gs) <= set(GENRES)
    assert set(t["maturity"]) == {0, 1, 2, 3}
    assert t["countries"].map(len).between(1, 8).all()
    assert (t["countries"].map(len) == 1).any()  # some exclusives
    assert (t["countries"].map(len) >= 6).mean() > 0.6  # most titles travel


def test_series_seasons_share_a_show_and_movies_are_single(world):
    t = world.titles.to_pandas()
    movies, seasons = t[t["kind"] == "movie"], t[t["kind"] == "series"]
    assert len(movies) and len(seasons)
    assert (movies["episodes"] == 1).all() and movies["series_id"].isna().all()
    assert seasons["episodes"].between(6, 12).all()
    for _, show in seasons.groupby("series_id"):
        assert sorted(show["season"]) == list(range(1, len(show) + 1))
        assert show["genres"].map(tuple).nunique() == 1
        assert show["maturity"].nunique() == 1
        ordered = show.sort_values("season")
        assert ordered["release_date"].is_monotonic_increasing
    assert seasons.groupby("series_id").size().max() > 1


def test_series_progress_names_the_episode(world, events):
    t = world.titles.to_pandas().set_index("title_id")
    progress = events[events["type"].isin(["progress", "completion"])]
    kinds = t.loc[progress["title_id"].astype(int), "kind"].to_numpy()
    series_rows = progress[kinds == "series"]
    assert len(series_rows) and progress[kinds == "movie"]["payload"].isna().all()
    episode = series_rows["payload"].map(lambda p: json.loads(p)["episode"])
    limit = t.loc[series_rows["title_id"].astype(int), "episodes"].to_numpy()
    assert (episode >= 1).all() and (episode.to_numpy() <= limit).all()
    assert (episode > 1).any()  # binges and returns move through a season
    assert progress["value"].between(0, 1).all()


def test_artwork_variants_follow_the_title(world):
    a = world.artwork.to_pandas()
    per_title = a.groupby("title_id").size()
    assert per_title.between(3, 6).all() and len(per_title) == world.titles.num_rows
    assert all(aid == f"{tid}-{aid.split('-')[1]}" for aid, tid in zip(a["artwork_id"], a["title_id"]))
    assert not a.duplicated(["title_id", "theme"]).any()


def test_members_have_tastes_devices_and_kids_profiles(world):
    m = world.members.to_pandas()
    assert m["taste"].map(len).nunique() == 1
    assert m["devices"].map(len).between(1, 3).all()
    assert (m["maturity"] <= 1).any() and (m["maturity"] == 3).mean() > 0.7
    assert m["country"].value_counts().iloc[0] > len(m) / 8  # skewed, not uniform
    assert (m["activity"] > 0).all()
    assert set(m.loc[m["country"] == "BR", "language"]) == {"pt"}


# -- the world happens in time -------------------------------------------------------------------


def test_new_releases_exist_and_are_never_shown_early(world, events):
    t = world.titles.to_pandas().set_index("title_id")
    new = t[t["release_date"] >= START]
    assert len(new) >= 1
    shown = events[events["type"] == "impression"]
    released = t.loc[shown["title_id"].astype(int), "release_date"].to_numpy()
    assert (shown["timestamp"].dt.date.to_numpy() >= released).all()
    assert shown["title_id"].isin(new.index).any()  # cold-start titles do get impressions


def test_cold_start_members_join_during_the_window_and_act_after(world, events):
    m = world.members.to_pandas().set_index("member_id")
    joined = m[m["join_date"] >= START]
    assert len(joined) >= 5
    first = events.groupby("member_id")["timestamp"].min().dt.date
    active_new = first.index.intersection(joined.index)
    assert len(active_new) >= 1
    assert (first.loc[active_new] >= m.loc[active_new, "join_date"]).all()


def test_impressions_respect_availability_and_maturity(world, events):
    t = world.titles.to_pandas().set_index("title_id")
    m = world.members.to_pandas().set_index("member_id")
    shown = events[events["type"] == "impression"]
    titles = t.loc[shown["title_id"].astype(int)]
    members = m.loc[shown["member_id"]]
    assert (titles["maturity"].to_numpy() <= members["maturity"].to_numpy()).all()
    assert all(c in cs for c, cs in zip(members["country"], titles["countries"]))
    assert (shown["country"].to_numpy() == members["country"].to_numpy()).all()
    assert all(d in ds for d, ds in zip(shown["device"], members["devices"]))
    kids = shown[members["maturity"].to_numpy() <= 1]
    assert len(kids)  # kids profiles browse too


def test_impressions_log_uniform_artwork_propensities(world, events):
    shown = events[events["type"] == "impression"]
    per_title = world.artwork.to_pandas().groupby("title_id").size()
    expected = 1.0 / per_title.loc[shown["title_id"].astype(int)].to_numpy()
    assert np.allclose(shown["propensity"].to_numpy(), expected)
    assert (shown["artwork"].str.split("-").str[0].astype(int) == shown["title_id"]).all()
    assert shown["row"].notna().all() and (shown["position"] >= 0).all()
    # Each title appears at most once on a page: one impression per (member, title, second).
    assert not events[events["type"] != "impression"]["propensity"].notna().any()


# -- the signal is learnable ---------------------------------------------------------------------


def test_played_titles_match_taste_better_than_ignored_ones(world, events):
    shown = events[events["type"] == "impression"]
    plays = events[events["type"] == "play"]
    played_pairs = set(zip(plays["member_id"], plays["title_id"].astype(int)))
    was_played = np.array([(m, t) in played_pairs for m, t in zip(shown["member_id"], shown["title_id"].astype(int))])
    match = _match(world, shown["member_id"], shown["title_id"].astype(int))
    assert 0.05 < was_played.mean() < 0.5
    assert match[was_played].mean() > match[~was_played].mean() + 0.08


def test_thumbs_follow_taste(world, events):
    thumbs = events[events["type"] == "thumb"]
    assert set(thumbs["value"]) == {-1.0, 1.0}
    match = _match(world, thumbs["member_id"], thumbs["title_id"].astype(int))
    assert match[thumbs["value"].to_numpy() > 0].mean() > match[thumbs["value"].to_numpy() < 0].mean()


def test_popularity_is_long_tailed(world, events):
    plays = events[events["type"] == "play"]["title_id"].value_counts()
    top = plays.iloc[: max(1, world.titles.num_rows // 10)].sum()
    assert top / plays.sum() > 0.25


def test_evenings_are_busier_than_early_mornings(events):
    hours = events["timestamp"].dt.hour
    evening = hours.between(18, 22).sum() / 5
    early = hours.between(3, 7).sum() / 5
    assert evening > 3 * early


def test_members_rarely_rewatch_what_they_completed(world, events):
    t = world.titles.to_pandas().set_index("title_id")
    movies = set(t.index[t["kind"] == "movie"])
    done_at = {}
    for row in events[(events["type"] == "completion")].itertuples():
        if int(row.title_id) in movies:
            done_at.setdefault((row.member_id, int(row.title_id)), row.timestamp)
    plays = events[events["type"] == "play"]
    rewatch = sum(
        1 for row in plays.itertuples()
        if (row.member_id, int(row.title_id)) in done_at and row.timestamp > done_at[(row.member_id, int(row.title_id))]
    )
    assert rewatch / len(plays) < 0.03


def test_searches_carry_a_query_and_sometimes_no_title(events):
    searches = events[events["type"] == "search"]
    assert len(searches)
    assert searches["payload"].map(lambda p: bool(json.loads(p)["query"])).all()
    assert searches["title_id"].isna().any() and searches["title_id"].notna().any()


def test_my_list_removals_follow_adds(events):
    adds = events[events["type"] == "my_list_add"]
    removes = events[events["type"] == "my_list_remove"]
    assert len(adds) and len(removes)
    first_add = adds.groupby(["member_id", "title_id"])["seq"].min()
    for row in removes.itertuples():
        assert first_add.loc[(row.member_id, row.title_id)] < row.seq


# -- scale knobs and bad input -------------------------------------------------------------------


def test_events_target_scales_the_volume():
    w = generate_world(members=300, titles=120, days=5, seed=2, events_target=20_000)
    n = w.events.to_table().num_rows
    assert 15_000 <= n <= 25_000
    assert w.manifest["events_target"] == 20_000


@pytest.mark.parametrize("name", ["members", "titles", "days"])
@pytest.mark.parametrize("bad", [0, -3])
def test_non_positive_sizes_are_rejected_by_name(name, bad):
    with pytest.raises(ValueError, match=name):
        generate_world(**{**SMALL, name: bad})


def test_bad_start_is_rejected():
    with pytest.raises(ValueError, match="start"):
        generate_world(**SMALL, start="January")


@pytest.mark.parametrize("field, bad, message", [
    ("members", 0, r"members: expected an integer >= 1, got 0"),
    ("days", 2.0, r"days: expected an integer >= 1, got 2.0"),
    ("titles", True, r"titles: expected an integer >= 1, got True"),
    ("seed", -1, r"seed: expected an integer >= 0, got -1"),
    ("events_target", 0, r"events_target: expected an integer >= 1, got 0"),
    ("start", "2026-13-01", r"start: expected an ISO date like 2026-01-01, got '2026-13-01'"),
])
def test_world_settings_name_the_bad_field(field, bad, message):
    with pytest.raises(SettingsError, match=message):
        WorldSettings(**{**SMALL, field: bad})


def test_world_settings_normalize_what_they_accept():
    settings = WorldSettings(members=np.int64(5), start="2026-02-03")
    assert settings.members == 5 and type(settings.members) is int
    assert settings.start == date(2026, 2, 3)
    with pytest.raises(AttributeError):
        settings.members = 6  # frozen: validated once, never changed after


def test_generate_world_from_settings_is_generate_world(tmp_path):
    small = dict(members=60, titles=40, days=2, seed=4)
    by_kwargs = generate_world(**small)
    by_settings = generate_world_from(WorldSettings(**small))
    assert by_kwargs.manifest == by_settings.manifest
    assert by_kwargs.titles.equals(by_settings.titles) and by_kwargs.members.equals(by_settings.members)
    assert by_kwargs.events.to_table().equals(by_settings.events.to_table())


def test_cli_writes_a_loadable_world(tmp_path, capsys):
    out = tmp_path / "cli"
    code = marquee_main(["world", "--members", "50", "--titles", "40", "--days", "2", "--seed", "3",
                         "--out", str(out), "--quiet"])
    assert code == 0
    loaded = load_dataset(out)
    assert loaded.members.num_rows == 50 and loaded.titles.num_rows == 40
    assert loaded.manifest["events"] == loaded.events().num_rows > 0
    assert str(out) in capsys.readouterr().out


def test_cli_rejects_zero_members(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        marquee_main(["world", "--members", "0", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    assert "--members" in capsys.readouterr().err
