"""Feature job without Ray: exact values on a hand-made dataset, point-in-time correctness (no
leakage), block-split invariance of partial/combine, the offline store layout and the join."""

from __future__ import annotations

import json
import math
from datetime import date

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from feature_data import (
    events_table,
    members_table,
    ms,
    random_dataset,
    titles_table,
    write,
)

from features.definitions import (
    ENTITIES,
    FeatureError,
    FeatureSpec,
    Vocab,
    combine_partials,
    decode_partials,
    encode_partials,
    partial_aggregate,
)
from features.offline_store import FeatureStoreError, read_manifest, snapshot_path
from marquee.dataset import load_dataset
from marquee.schema import decision_event
from marquee.settings import SettingsError
from ops.cli import main as marquee_main
from training.features import (
    FeatureJobResult,
    features_as_of,
    join_point_in_time,
    run_feature_job,
)

GENRES = {1: ["Action"], 2: ["Comedy", "Drama"], 3: ["Sci-Fi"], 4: ["Drama"]}
HAND_EVENTS = [
    {"member_id": 10, "title_id": 1, "type": "impression", "timestamp": ms("2026-01-01", 10), "country": "US", "device": "tv"},
    {"member_id": 10, "title_id": 1, "type": "play", "timestamp": ms("2026-01-01", 10, 5), "country": "US", "device": "tv"},
    {"member_id": 10, "title_id": 1, "type": "completion", "timestamp": ms("2026-01-01", 11), "country": "US", "device": "tv"},
    {"member_id": 11, "title_id": 1, "type": "impression", "timestamp": ms("2026-01-02", 8), "country": "FR", "device": "web"},
    {"member_id": 11, "title_id": 1, "type": "play", "timestamp": ms("2026-01-02", 8, 1), "country": "FR", "device": "web"},
    {"member_id": 11, "title_id": 2, "type": "play", "timestamp": ms("2026-01-02", 9), "country": "FR", "device": "web"},
    {"member_id": 10, "title_id": 2, "type": "impression", "timestamp": ms("2026-01-03", 21), "country": "US", "device": "mobile"},
    {"member_id": 10, "title_id": 2, "type": "play", "timestamp": ms("2026-01-03", 21, 1), "country": "US", "device": "mobile"},
    {"member_id": 12, "title_id": None, "type": "search", "timestamp": ms("2026-01-04", 23), "country": "US", "device": "tablet"},
    {"member_id": 12, "title_id": 3, "type": "impression", "timestamp": ms("2026-01-04", 23, 30), "country": "US", "device": "tablet"},
]


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand")
    titles = titles_table(GENRES, release={4: date(2026, 1, 10)})
    dataset = write(root / "ds", titles, members_table({10: "US", 11: "FR", 12: "US"}), HAND_EVENTS)
    result = run_feature_job(dataset, root / "features", engine="arrow")
    return root / "features", result


def rows_by(table: pa.Table, key: str) -> dict:
    return {row[key]: row for row in table.to_pylist()}


def test_job_result_and_layout(hand_store):
    store, result = hand_store
    assert isinstance(result, FeatureJobResult)
    assert (result.as_of_first, result.as_of_last, result.snapshots) == ("2026-01-01", "2026-01-05", 5)
    assert result.events == len(HAND_EVENTS)
    assert (store / "LATEST").read_text().strip() == result.version
    manifest = read_manifest(store)
    assert manifest["genres"] == ["Action", "Comedy", "Drama", "Sci-Fi"]
    assert manifest["countries"] == ["FR", "US"]
    assert manifest["rows"]["title"] == 4 * 5
    for entity in ENTITIES:
        for day in ("2026-01-01", "2026-01-05"):
            assert snapshot_path(result.path, entity, date.fromisoformat(day)).exists()
    assert not [p for p in store.iterdir() if p.name.startswith(".")], "temp dirs left behind"


def test_member_features_exact(hand_store):
    store, _ = hand_store
    members = rows_by(features_as_of(store, "member", "2026-01-05"), "member_id")
    assert sorted(members) == [10, 11, 12]
    m10 = members[10]
    assert (m10["events"], m10["plays"], m10["completions"], m10["impressions"]) == (5, 2, 1, 2)
    assert m10["completion_rate"] == pytest.approx(0.5)
    assert (m10["plays_7d"], m10["plays_30d"], m10["impressions_30d"]) == (2, 2, 2)
    assert m10["play_through_rate"] == pytest.approx(1.0)
    assert (m10["days_since_last_play"], m10["days_since_first_event"]) == (2, 4)
    assert m10["hour_share"] == pytest.approx([0, 0, 0.6, 0, 0, 0.4])
    assert m10["device_share"] == pytest.approx([0.6, 0.4, 0, 0])  # DEVICES = tv, mobile, web, tablet
    a, b = 0.5 ** (4 / 14), 0.5 ** (2 / 14)  # play+completion of Action 4 days ago, Comedy+Drama 2 days ago
    assert m10["genre_affinity"] == pytest.approx([2 * a / (2 * a + 2 * b), b / (2 * a + 2 * b), b / (2 * a + 2 * b), 0], rel=1e-6)
    assert m10["country"] == "US"
    m12 = members[12]
    assert (m12["plays"], m12["completion_rate"], m12["play_through_rate"], m12["days_since_last_play"]) == (0, None, 0.0, None)
    assert m12["hour_share"] == pytest.approx([0, 0, 0, 0, 0, 1])
    assert m12["genre_affinity"] == [0, 0, 0, 0]


def _decision_rows() -> list[dict]:
    """The server's decision records of pages shown to the hand members and to a member with no
    events at all, at hours and on devices none of their own events have."""
    rows = []
    for i, (member, day) in enumerate([(10, "2026-01-01"), (11, "2026-01-02"), (12, "2026-01-03"), (13, "2026-01-02")]):
        record = decision_event(f"req-{i}", member, ms(day, 3), "tablet", "FR", "egreedy", 1,
                                [(1, "1-0", 0.5, "trending", 0), (2, "2-0", 0.25, "trending", 1)], {}, {"hour": 3})
        rows.append({k: record[k] for k in ("event_id", "member_id", "type", "timestamp", "device", "country",
                                            "request_id", "payload")})
    return rows


def test_decision_records_change_no_feature(hand_store, tmp_path):
    store, result = hand_store
    titles = titles_table(GENRES, release={4: date(2026, 1, 10)})
    members = members_table({10: "US", 11: "FR", 12: "US"})
    dataset = write(tmp_path / "ds", titles, members, HAND_EVENTS + _decision_rows())
    with_decisions = run_feature_job(dataset, tmp_path / "features", engine="arrow")
    assert with_decisions.events == result.events == len(HAND_EVENTS)  # member events aggregated
    for entity in ENTITIES:
        for day in ("2026-01-02", "2026-01-04", "2026-01-05"):
            assert features_as_of(tmp_path / "features", entity, day).equals(features_as_of(store, entity, day)), \
                (entity, day)
    load = load_dataset(dataset)
    partials = partial_aggregate(load.events(), Vocab.from_tables(load.titles, load.members), FeatureSpec())
    assert partials["stats"].to_pylist() == [{"events": len(HAND_EVENTS), "server_records": 4, "unknown_type": 0,
                                              "unknown_title": 0}]


def test_member_snapshot_only_sees_earlier_days(hand_store):
    store, _ = hand_store
    assert features_as_of(store, "member", "2026-01-01").num_rows == 0
    early = rows_by(features_as_of(store, "member", "2026-01-02"), "member_id")
    assert list(early) == [10]
    assert (early[10]["plays"], early[10]["completions"], early[10]["days_since_last_play"]) == (1, 1, 1)


def test_title_features_exact(hand_store):
    store, _ = hand_store
    titles = rows_by(features_as_of(store, "title", "2026-01-05"), "title_id")
    t1, t2, t3, t4 = titles[1], titles[2], titles[3], titles[4]
    assert (t1["plays"], t1["plays_1d"], t1["plays_7d"], t1["completions"], t1["impressions"]) == (2, 0, 2, 1, 2)
    assert t1["plays_7d_by_country"] == [1, 1]  # FR, US
    assert (t1["completion_rate"], t1["play_rate"]) == (pytest.approx(0.5), pytest.approx(1.0))
    assert t1["trend_slope_7d"] == pytest.approx(1 / 28)  # plays on x=0 and x=1 of x=-3..3
    assert t2["trend_slope_7d"] == pytest.approx(3 / 28)
    assert t2["plays_1d_by_country"] == [0, 0] and t2["plays_7d_by_country"] == [1, 1]
    assert (t3["plays"], t3["play_rate"], t3["completion_rate"]) == (0, 0.0, None)
    assert (t4["plays"], t4["play_rate"], t4["trend_ratio_1d_7d"]) == (0, None, None)
    assert t1["days_since_release"] == (date(2026, 1, 5) - date(2025, 12, 1)).days
    assert t4["days_since_release"] == -5  # announced, not yet released
    latest_day = rows_by(features_as_of(store, "title", "2026-01-04"), "title_id")
    assert latest_day[2]["plays_1d"] == 1 and latest_day[2]["trend_ratio_1d_7d"] == pytest.approx(7 / 2)


def test_cowatch_exact(hand_store):
    store, _ = hand_store
    latest = features_as_of(store, "cowatch", "2026-01-05").to_pylist()
    assert [(r["title_id"], r["other_title_id"], r["count"], r["rank"]) for r in latest] == [(1, 2, 2, 1), (2, 1, 2, 1)]
    assert latest[0]["score"] == pytest.approx(1.0)
    earlier = features_as_of(store, "cowatch", "2026-01-03").to_pylist()
    assert [(r["title_id"], r["other_title_id"], r["count"]) for r in earlier] == [(1, 2, 1), (2, 1, 1)]
    assert earlier[0]["score"] == pytest.approx(1 / math.sqrt(2))


def test_cowatch_ranks_by_count_and_keeps_top_k(tmp_path):
    # member m plays titles 1..m+1: title 1 co-occurs with 2 five times, with 6 once.
    rows = [{"member_id": m, "title_id": t, "type": "play", "timestamp": ms("2026-01-01", 1)}
            for m in range(1, 6) for t in range(1, m + 2)]
    genres = {t: ["Drama"] for t in range(1, 8)}
    dataset = write(tmp_path / "ds", titles_table(genres), members_table({m: "US" for m in range(1, 6)}), rows)
    run_feature_job(dataset, tmp_path / "f", engine="arrow", spec=FeatureSpec(cowatch_k=3))
    cw = features_as_of(tmp_path / "f", "cowatch", "2026-01-02")
    one = [r for r in cw.to_pylist() if r["title_id"] == 1]
    assert [(r["other_title_id"], r["count"], r["rank"]) for r in one] == [(2, 5, 1), (3, 4, 2), (4, 3, 3)]
    assert max(pc.value_counts(cw.column("title_id")).field("counts").to_pylist()) <= 3


def _all_snapshots(store, days):
    return {(e, d): features_as_of(store, e, d) for e in ENTITIES for d in days}


def test_point_in_time_no_leakage(tmp_path):
    """Changing or adding events on/after day D changes nothing at as_of <= D; an event before D
    changes the as_of D snapshot."""
    dataset, rows = random_dataset(tmp_path / "base", n_events=1500, days=8, seed=3)
    cut = ms("2026-01-05", 0)
    days = [f"2026-01-0{d}" for d in range(1, 6)]  # as_of 01-01 .. 01-05 (= D)
    base = run_feature_job(dataset, tmp_path / "f_base", engine="arrow")

    changed = [dict(r) for r in rows]
    for r in changed:
        if r["timestamp"] >= cut and r["type"] == "impression":
            r["type"] = "play"  # rewrite the future
    changed = [r for i, r in enumerate(changed) if r["timestamp"] < cut or i % 3]  # delete some future
    changed.append({"member_id": 999, "title_id": 1, "type": "play", "timestamp": cut, "country": "US", "device": "tv"})
    changed.append({"member_id": 0, "title_id": 2, "type": "completion", "timestamp": cut + 1000, "device": "web"})
    load = load_dataset(dataset)
    future = write(tmp_path / "future", load.titles, load.members, changed)
    other = run_feature_job(future, tmp_path / "f_future", engine="arrow")
    assert other.as_of_first == base.as_of_first
    before = _all_snapshots(tmp_path / "f_base", days)
    after = _all_snapshots(tmp_path / "f_future", days)
    for key in before:
        assert before[key].equals(after[key]), f"leak: {key} changed by events on/after 2026-01-05"
    assert not features_as_of(tmp_path / "f_base", "member", "2026-01-06").equals(
        features_as_of(tmp_path / "f_future", "member", "2026-01-06"))

    past = rows + [{"member_id": 0, "title_id": 2, "type": "play", "timestamp": cut - 1, "country": "US", "device": "tv"}]
    earlier = write(tmp_path / "past", load.titles, load.members, past)
    run_feature_job(earlier, tmp_path / "f_past", engine="arrow")
    for entity in ENTITIES:
        assert features_as_of(tmp_path / "f_base", entity, "2026-01-04").equals(
            features_as_of(tmp_path / "f_past", entity, "2026-01-04"))
        assert not features_as_of(tmp_path / "f_base", entity, "2026-01-05").equals(
            features_as_of(tmp_path / "f_past", entity, "2026-01-05")), entity


def _sorted_combined(combined):
    return (combined.member_slots.sort_by([("member_id", "ascending"), ("day", "ascending"), ("slot", "ascending")]),
            combined.title_daily.sort_by([("title_id", "ascending"), ("day", "ascending"), ("country", "ascending")]),
            combined.member_title.sort_by([("member_id", "ascending"), ("title_id", "ascending")]),
            combined.stats, combined.first_day, combined.last_day)


def test_partials_are_block_split_invariant(tmp_path):
    """Any split of the events into blocks combines to the same result (what Ray Data relies on)."""
    dataset, rows = random_dataset(tmp_path / "ds", n_events=1200, seed=5)
    load = load_dataset(dataset)
    vocab, spec = Vocab.from_tables(load.titles, load.members), FeatureSpec()
    events = events_table(rows)
    whole = combine_partials([partial_aggregate(events, vocab, spec)])
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, events.num_rows), size=7, replace=False))
    bounds = [0, *cuts.tolist(), events.num_rows]
    shuffled = events.take(rng.permutation(events.num_rows))
    blocks = [shuffled.slice(lo, hi - lo) for lo, hi in zip(bounds, bounds[1:])]
    split = combine_partials(partial_aggregate(b, vocab, spec) for b in blocks)
    for a, b in zip(_sorted_combined(whole), _sorted_combined(split)):
        assert a == b if not isinstance(a, pa.Table) else a.equals(b)


def test_encode_decode_roundtrip(tmp_path):
    dataset, rows = random_dataset(tmp_path / "ds", n_events=300, seed=1)
    load = load_dataset(dataset)
    partials = partial_aggregate(events_table(rows), Vocab.from_tables(load.titles), FeatureSpec())
    encoded = encode_partials(partials)
    decoded = decode_partials(pa.concat_tables([encoded, encoded]))
    assert len(decoded) == 2
    for kind, table in partials.items():
        assert decoded[1][kind].equals(table)


def test_join_point_in_time(hand_store):
    store, _ = hand_store
    examples = pa.table({
        "member_id": pa.array([10, 11, 10, 77, 10], pa.int64()),
        "title_id": pa.array([2, 1, 2, 3, 99], pa.int64()),
        "timestamp": pa.array([ms("2026-01-05", 9), ms("2026-01-02", 23), ms("2026-01-01", 12),
                               ms("2026-01-03"), ms("2030-01-01")], pa.timestamp("ms", tz="UTC")),
        "label": [1, 0, 1, 0, 0],
    })
    joined = join_point_in_time(examples, store)
    assert joined.column("label").to_pylist() == [1, 0, 1, 0, 0]  # input order kept
    assert joined.column("member_plays").to_pylist() == [2, 0, 0, 0, 2]
    # m11's own play on 01-02 is not visible to an example on 01-02 (as_of = that day)
    assert joined.column("member_cold_start").to_pylist() == [False, True, True, True, False]
    assert joined.column("title_cold_start").to_pylist() == [False, False, False, False, True]
    assert joined.column("title_plays").to_pylist() == [2, 1, 0, 0, 0]  # t1 played by m10 on 01-01
    a, b = 0.5 ** (4 / 14), 0.5 ** (2 / 14)
    assert joined.column("genre_match").to_pylist()[0] == pytest.approx(2 * b / (2 * a + 2 * b), rel=1e-6)
    assert joined.column("member_genre_sci_fi").to_pylist()[0] == 0.0
    assert joined.column("title_plays_7d_in_country").to_pylist()[0] == 1  # US plays of title 2
    for name in joined.column_names:  # point-in-time columns are never all-null
        assert joined.column(name).null_count < joined.num_rows or name in (
            "member_completion_rate", "member_play_through_rate", "member_days_since_last_play",
            "member_days_since_first_event", "title_trend_ratio_1d_7d"), name


def test_features_as_of_outside_range(hand_store):
    store, _ = hand_store
    assert features_as_of(store, "title", "2020-01-01").equals(features_as_of(store, "title", "2026-01-01"))
    assert features_as_of(store, "member", "2027-06-01").equals(features_as_of(store, "member", "2026-01-05"))
    with pytest.raises(FeatureStoreError, match="unknown entity"):
        features_as_of(store, "artwork", "2026-01-02")


def test_narrowed_range_refuses_days_it_cannot_answer(tmp_path):
    dataset = write(tmp_path / "ds", titles_table(GENRES), members_table({10: "US", 11: "FR", 12: "US"}), HAND_EVENTS)
    run_feature_job(dataset, tmp_path / "f", engine="arrow", as_of_first="2026-01-03", as_of_last="2026-01-04")
    assert features_as_of(tmp_path / "f", "member", "2026-01-03").num_rows == 2
    with pytest.raises(FeatureStoreError, match="starts at"):
        features_as_of(tmp_path / "f", "member", "2026-01-02")
    with pytest.raises(FeatureStoreError, match="ends at"):
        features_as_of(tmp_path / "f", "member", "2026-01-05")


def test_bad_inputs(tmp_path):
    with pytest.raises(SettingsError, match="half_life_days: expected a finite number > 0, got 0"):
        FeatureSpec(half_life_days=0)
    with pytest.raises(SettingsError, match="hour_buckets: expected a divisor of 24, got 5"):
        FeatureSpec(hour_buckets=5)
    with pytest.raises(SettingsError, match="cowatch_k: expected an integer >= 1, got '5'"):
        FeatureSpec(cowatch_k="5")
    with pytest.raises(FeatureError, match="engine"):
        run_feature_job(tmp_path, tmp_path / "f", engine="spark")
    with pytest.raises(ValueError, match="not a directory"):
        run_feature_job(tmp_path / "nope", tmp_path / "f", engine="arrow")
    with pytest.raises(FeatureStoreError, match="no feature store"):
        features_as_of(tmp_path, "member", "2026-01-01")
    with pytest.raises(FeatureStoreError, match="timestamp"):
        join_point_in_time(pa.table({"member_id": [1], "title_id": [1]}), tmp_path)


def test_cli_writes_a_version(tmp_path, capsys):
    dataset = write(tmp_path / "ds", titles_table(GENRES), members_table({10: "US", 11: "FR", 12: "US"}), HAND_EVENTS)
    code = marquee_main(["features", "--dataset", str(dataset), "--out", str(tmp_path / "f"),
                         "--engine", "arrow", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["snapshots"] == 5 and result["engine"] == "arrow"
    assert (tmp_path / "f" / "LATEST").read_text().strip() == result["version"]
    assert marquee_main(["features", "--dataset", str(tmp_path / "missing"), "--out", str(tmp_path / "g")]) == 1


@pytest.mark.parametrize("k", [3, 10, 40])
def test_sparse_and_dense_top_k_agree(k):
    """The two co-watch selection paths (dense counts for small catalogs, sparse otherwise) rank
    identically, ties at the k boundary included (both break them by the lower title id)."""
    from scipy import sparse

    from features.cowatch import _top_k_dense, _top_k_sparse

    plays = sparse.random(300, 40, density=0.1, random_state=5, format="csr")
    plays.data[:] = 1
    co = (plays.T @ plays).tocsr().astype(np.int32)  # diagonal = plays per title
    a = _top_k_sparse(co, k)
    b, _, _ = _top_k_dense(co.toarray(), k, None, None, None)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert np.bincount(a[0]).max() <= k and set(a[4].tolist()) <= set(range(1, k + 1))
