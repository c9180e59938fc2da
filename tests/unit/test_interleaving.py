"""Team-draft interleaving: the draft keeps each ranker's order, balances the teams, never repeats a
title, is a pure function of the seed, collapses to the ranking when both rankers agree, and its
coin is fair (binomial test); the page seed is stable across processes; credit, the extraction
from stored events and the preference score (checked against scipy's one-sample t test)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from experiments.interleaving import (
    interleaving_report,
    Interleaved,
    Page,
    Play,
    Wins,
    credit,
    interleaving_payload,
    member_scores,
    pages_and_plays,
    preference,
    seed_of,
    team_draft,
)
from marquee.schema import STORED_EVENT_SCHEMA


def random_rankings(rng: np.random.Generator, pool: int = 30, length: int = 15):
    """Two rankings drawn from one pool (overlapping, each without repeats)."""
    a = rng.permutation(pool)[:length].tolist()
    b = rng.permutation(pool)[:length].tolist()
    return a, b


# --- seed_of -------------------------------------------------------------------------------------


def test_seed_of_is_stable_across_processes_and_distinct_per_request():
    # golden values: a salted hash() would differ per process, blake2b gives these everywhere
    assert [seed_of(f"req-{i}") for i in range(3)] == [
        8802732907801736946, 7112595421566451565, 1210804881806440970]
    seeds = [seed_of(f"req-{i}") for i in range(1000)]
    assert len(set(seeds)) == 1000
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_the_draft_of_a_request_is_pinned():
    row = team_draft(list(range(10)), list(range(9, -1, -1)), 10, seed_of("req-0"))
    assert row.titles == (0, 9, 8, 1, 7, 2, 6, 3, 4, 5)
    assert "".join(row.teams) == "ABBABABAAB"


def test_seed_of_refuses_a_non_string():
    with pytest.raises(ValueError, match="request_id"):
        seed_of(42)
    with pytest.raises(ValueError, match="request_id"):
        seed_of("")


# --- team_draft ----------------------------------------------------------------------------------


def test_each_team_keeps_its_own_ranking_order_and_teams_stay_balanced():
    rng = np.random.default_rng(7)
    for trial in range(300):
        a, b = random_rankings(rng)
        k = int(rng.integers(1, 25))
        row = team_draft(a, b, k, seed=trial)
        assert len(row.titles) == len(row.teams) <= k
        assert len(set(row.titles)) == len(row.titles), "a title appears twice"
        for team, ranking in (("A", a), ("B", b)):
            mine = [t for t, who in zip(row.titles, row.teams) if who == team]
            positions = [ranking.index(t) for t in mine]
            assert positions == sorted(positions), f"team {team} out of its ranking's order"
        # both rankings hold 15 titles, so neither runs out before the row is full or the union used
        n_a = np.cumsum([t == "A" for t in row.teams])
        n_b = np.cumsum([t == "B" for t in row.teams])
        if len(set(a) | set(b)) >= k and len(row.titles) <= min(len(a), len(b)):
            assert np.all(np.abs(n_a - n_b) <= 1)


def test_each_team_drafts_its_highest_unused_title():
    rng = np.random.default_rng(11)
    for trial in range(100):
        a, b = random_rankings(rng)
        row = team_draft(a, b, 12, seed=trial)
        for slot, (title, team) in enumerate(zip(row.titles, row.teams)):
            ranking = a if team == "A" else b
            before = set(row.titles[:slot])
            assert title == next(t for t in ranking if t not in before)


def test_deterministic_per_seed_and_the_seed_matters():
    a, b = list(range(20)), list(range(19, -1, -1))
    rows = {team_draft(a, b, 10, seed=s) for s in range(40)}
    assert team_draft(a, b, 10, seed=5) == team_draft(a, b, 10, seed=5)
    assert len(rows) > 10


def test_identical_rankings_give_that_ranking():
    ranking = [9, 3, 7, 1, 12, 5, 4]
    for seed in range(50):
        row = team_draft(ranking, list(ranking), 5, seed=seed)
        assert row.titles == tuple(ranking[:5])
        assert abs(row.count("A") - row.count("B")) <= 1


def test_duplicates_inside_a_ranking_are_taken_once():
    row = team_draft([1, 1, 2, 2, 3], [2, 1, 4, 4], 10, seed=3)
    assert sorted(row.titles) == [1, 2, 3, 4]


def test_stops_when_both_rankings_are_exhausted_and_one_team_fills_the_rest():
    row = team_draft([1, 2], [3, 4, 5, 6, 7], 10, seed=0)
    assert sorted(row.titles) == [1, 2, 3, 4, 5, 6, 7]
    assert row.count("A") == 2 and row.count("B") == 5
    assert row.titles[-3:] == (5, 6, 7)
    only_b = team_draft([], [4, 5, 6], 2, seed=1)
    assert only_b == Interleaved((4, 5), ("B", "B"))
    assert team_draft([], [], 3, seed=1) == Interleaved((), ())


def test_numpy_rankings_are_accepted_and_the_payload_map_has_string_keys():
    a, b = np.array([5, 6, 7]), np.array([7, 8, 9], dtype=np.int32)
    row = team_draft(a, b, 4, seed=2)
    assert row == team_draft([5, 6, 7], [7, 8, 9], 4, seed=2)
    assert all(type(t) is int for t in row.titles)
    payload = row.team_of()
    assert set(payload) == {str(t) for t in row.titles}
    assert json.loads(json.dumps(payload)) == payload


def test_the_coin_is_fair_over_seeds():
    # which team drafts the first slot is the first coin of the page: Binomial(n, 1/2)
    a, b = list(range(10)), list(range(10, 20))
    n = 2000
    first_a = sum(team_draft(a, b, 10, seed=seed_of(f"r{i}")).teams[0] == "A" for i in range(n))
    assert stats.binomtest(first_a, n, 0.5).pvalue > 0.001
    # and every later round's coin too: slot 3 (round 2's first pick) is A half the time
    third_a = sum(team_draft(a, b, 10, seed=s).teams[2] == "A" for s in range(n))
    assert stats.binomtest(third_a, n, 0.5).pvalue > 0.001


def test_long_rows_draw_coins_beyond_the_first_block():
    a, b = list(range(3000)), list(range(3000, 6000))
    row = team_draft(a, b, 2400, seed=9)  # 1200 rounds: more than one 512-flip block
    late = row.teams[1100:2400:2]
    assert 0.3 < sum(t == "A" for t in late) / len(late) < 0.7
    assert row.count("A") == row.count("B") == 1200


@pytest.mark.parametrize("kwargs, field", [
    ({"k": 0}, "k"), ({"k": 2.5}, "k"), ({"seed": -1}, "seed"), ({"seed": "x"}, "seed"),
    ({"a": "abc"}, "a"), ({"a": [1, "2"]}, "a"), ({"b": [1.5]}, "b"), ({"b": None}, "b"),
    ({"a": [True, 2]}, "a"), ({"b": np.array([1.0, 2.0])}, "b"),
])
def test_team_draft_refuses_bad_input_by_name(kwargs, field):
    args = {"a": [1, 2], "b": [2, 3], "k": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=rf"^{field}:"):
        team_draft(**args)


# --- credit --------------------------------------------------------------------------------------


def test_credit_counts_one_win_per_request_and_title():
    pages = [Page(1, "r1", {10: "A", 11: "B", 12: "A"}),
             Page(1, "r2", {10: "B", 13: "A"}),
             Page(2, "r3", {"20": "B", "21": "A"}),   # payload keys are JSON strings
             Page(3, "r4", {30: "A", 31: "B"})]       # exposed, never plays
    plays = [Play(1, "r1", 11), Play(1, "r1", 11),     # a replay: one credit
             Play(1, "r1", 12),
             Play(1, "r1", 99),                        # another row of the page: no credit
             Play(1, "r2", 10),                        # same title, another page: its own team
             Play(2, "r3", 20), Play(2, "r3", 21), Play(2, "r3", 20),
             Play(2, "r1", 10),                        # someone else's request: no credit
             Play(1, "rX", 10)]                        # not an interleaved page
    wins = credit(pages, plays)
    assert wins.members.tolist() == [1, 2, 3]
    assert wins.wins_a.tolist() == [1, 1, 0]
    assert wins.wins_b.tolist() == [2, 1, 0]
    assert wins.credited.tolist() == [True, True, False]
    assert member_scores(wins).tolist() == [pytest.approx(1 / 3), 0.0]


def test_credit_accepts_plain_tuples_and_refuses_bad_teams():
    wins = credit([(5, "q", {1: "A"})], [(5, "q", 1)])
    assert (wins.wins_a.tolist(), wins.wins_b.tolist()) == ([1], [0])
    with pytest.raises(ValueError, match=r"pages\[0\]\.teams"):
        credit([(5, "q", {1: "C"})], [])
    with pytest.raises(ValueError, match=r"pages\[0\]\.request_id"):
        credit([(5, None, {1: "A"})], [])
    with pytest.raises(ValueError, match=r"pages\[0\]\.member_id"):
        credit([("m", "q", {1: "A"})], [])


def stored_events(rows: list[dict]) -> pa.Table:
    """A table in STORED_EVENT_SCHEMA from a few hand-written rows (missing columns null)."""
    base = {f.name: None for f in STORED_EVENT_SCHEMA}
    full = []
    for seq, row in enumerate(rows):
        full.append(base | {"event_id": f"e{seq}", "timestamp": datetime(2025, 1, 15, tzinfo=UTC),
                            "seq": seq} | row)
    return pa.Table.from_pylist(full, schema=STORED_EVENT_SCHEMA)


def decision(member: int, request: str, teams: dict | None, experiment: str = "tdi") -> dict:
    payload = {"policy": "p", "policy_version": "1", "items": [], "context": {},
               "latency_ms": 3.0, "degraded": []}
    if teams is not None:
        payload["interleaving"] = {"experiment": experiment, "rankers": {"A": "pop", "B": "xgb"},
                                   "teams": {str(t): team for t, team in teams.items()}}
    return {"member_id": member, "type": "decision", "request_id": request,
            "experiments": json.dumps({experiment: "on"}), "payload": json.dumps(payload)}


def event(kind: str, member: int, title: int, request: str | None) -> dict:
    return {"member_id": member, "type": kind, "title_id": title, "request_id": request,
            "row": "interleaved", "position": 0}


def test_pages_and_plays_reads_decisions_and_homepage_plays():
    table = stored_events([
        decision(1, "r1", {10: "A", 11: "B"}),
        decision(1, "r0", None),                     # a page that was not interleaved
        decision(2, "r2", {20: "B", 21: "A"}),
        {"member_id": 2, "type": "exposure", "request_id": "r2",
         "experiments": json.dumps({"tdi": "on"})},
        event("impression", 1, 10, "r1"),
        event("play", 1, 11, "r1"),
        event("play", 1, 10, None),                  # not from the homepage
        event("play", 2, 21, "r2"),
        event("completion", 2, 20, "r2"),            # not a play
    ])
    log = pages_and_plays(table)
    assert log.experiment == "tdi" and log.rankers == {"A": "pop", "B": "xgb"}
    assert [p.request_id for p in log.pages] == ["r1", "r2"]
    assert log.pages[0].teams == {10: "A", 11: "B"}
    assert sorted(log.plays) == [Play(1, "r1", 11), Play(2, "r2", 21)]
    wins = credit(log.pages, log.plays)
    assert wins.wins_a.tolist() == [0, 1] and wins.wins_b.tolist() == [1, 0]
    report = interleaving_report(table, "tdi")  # the report's section: the same numbers, JSON-ready
    assert (report["pages"], report["credited_plays"], report["rankers"]) == (2, 2, {"A": "pop", "B": "xgb"})
    assert report["preference"]["mean"] == preference(wins).mean == 0.0
    json.dumps(report, allow_nan=False)


def test_the_payload_serving_writes_reads_back():
    row = team_draft([1, 2, 3], [3, 4, 5], 4, seed=seed_of("page-9"))
    block = interleaving_payload("tdi", "pop", "xgb", [row])
    payload = {"policy": "p", "items": [], "interleaving": block}
    table = stored_events([{"member_id": 9, "type": "decision", "request_id": "page-9",
                            "payload": json.dumps(payload)},
                           event("play", 9, row.titles[0], "page-9")])
    log = pages_and_plays(table)
    assert log.rankers == {"A": "pop", "B": "xgb"}
    assert log.pages[0].teams == dict(zip(row.titles, row.teams))
    wins = credit(log.pages, log.plays)
    assert (wins.wins_a[0], wins.wins_b[0]) == ((1, 0) if row.teams[0] == "A" else (0, 1))
    with pytest.raises(ValueError, match="^ranker_b:"):
        interleaving_payload("tdi", "pop", "", [row])
    with pytest.raises(ValueError, match="^rows:"):
        interleaving_payload("tdi", "pop", "xgb", [row.titles])


def test_pages_and_plays_needs_one_experiment_when_the_log_holds_several():
    table = stored_events([decision(1, "r1", {10: "A"}, "one"), decision(2, "r2", {20: "B"}, "two"),
                           event("play", 2, 20, "r2")])
    with pytest.raises(ValueError, match="^experiment:"):
        pages_and_plays(table)
    log = pages_and_plays(table, experiment="two")
    assert [p.member_id for p in log.pages] == [2]
    assert credit(log.pages, log.plays).wins_b.tolist() == [1]
    with pytest.raises(ValueError, match="^table:"):
        pages_and_plays(table.drop_columns(["payload"]))


# --- preference ----------------------------------------------------------------------------------


def test_preference_matches_scipys_one_sample_t_test():
    rng = np.random.default_rng(3)
    n = 400
    wins_a = rng.poisson(1.0, n)
    wins_b = rng.poisson(1.3, n)
    wins = Wins(np.arange(n), wins_a, wins_b)
    result = preference(wins)
    active = (wins_a + wins_b) > 0
    scores = (wins_b - wins_a)[active] / (wins_a + wins_b)[active]
    reference = stats.ttest_1samp(scores, 0.0)
    interval = reference.confidence_interval(0.95)
    assert result.mean == pytest.approx(scores.mean())
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-9)
    assert (result.low, result.high) == (pytest.approx(interval.low), pytest.approx(interval.high))
    assert result.n_members == active.sum() and result.n_exposed == n
    assert result.prefer_b + result.prefer_a + result.ties == pytest.approx(1.0)
    assert result.delta_ab == pytest.approx((result.prefer_b - result.prefer_a) / 2)
    assert result.mean > 0 and result.significant


def test_preference_of_a_point_mass_and_bad_input():
    all_b = preference(Wins(np.arange(3), [0, 0, 0], [1, 2, 1]))
    assert (all_b.mean, all_b.low, all_b.high, all_b.p_value) == (1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="^wins:"):
        preference(Wins(np.arange(3), [0, 0, 1], [0, 0, 0]))   # one member with a credit
    with pytest.raises(ValueError, match="^wins:"):
        preference({"a": 1})
    with pytest.raises(ValueError, match="^alpha:"):
        preference(Wins(np.arange(3), [1, 0, 1], [0, 1, 1]), alpha=1.5)
    with pytest.raises(ValueError, match="^wins_b:"):
        Wins(np.arange(3), [1, 0, 1], [0, 1])


def _section(b_members: int, a_members: int) -> dict:
    """An interleaving report over members who each played one title: B's for the first
    b_members, A's for the rest."""
    rows = []
    for m in range(b_members + a_members):
        rows += [decision(m, f"r{m}", {10: "A", 11: "B"}), event("play", m, 11 if m < b_members else 10, f"r{m}")]
    return interleaving_report(stored_events(rows), "tdi")


def test_the_interleaving_verdict_names_the_preferred_ranker_or_keeps_running():
    from experiments.interleaving import interleaving_verdict
    from experiments.report import render_interleaving_html, render_interleaving_text

    clear = interleaving_verdict(_section(40, 10))
    assert clear["decision"] == "prefer xgb" and clear["winner"] == "xgb"
    assert "+0.600" in clear["reasons"][0] and "50 members" in clear["reasons"][0]
    assert interleaving_verdict(_section(5, 50))["winner"] == "pop"
    unsure = interleaving_verdict(_section(11, 10))
    assert unsure["decision"] == "keep running" and unsure["winner"] is None
    report = {"experiment": "tdi", "interleaving": _section(40, 10), "verdict": clear}
    assert render_interleaving_text(report).startswith("experiment tdi (interleaving): PREFER XGB")
    page = render_interleaving_html(report)
    assert "<h1>tdi: prefer xgb</h1>" in page and "<th>n_members</th><td>50</td>" in page
