"""experiments/analysis.py on the arrow engine: hand-computed metrics, exposure rules, SRM, lifts
against statsmodels, CUPED, the sequential path, guardrails, the verdict and bad input."""

from __future__ import annotations

import copy
import functools
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy import stats as scipy_stats

from experiments.analysis import METRICS, analyze, member_metrics, verdict
from experiments.sequential import msprt
from experiments.stats import GuardrailLimits
from marquee.schema import exposure_event
from tests.experiment_fixtures import (
    LIE,
    NAME,
    decision,
    experiment,
    exposure,
    exposures,
    make_fixture,
    ship_case,
    table,
)

statsmodels = pytest.importorskip("statsmodels", reason="statsmodels is in the test extra")
from statsmodels.regression.linear_model import OLS
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

DAY = 1000
RUNTIMES = {1: 100, 2: 80, 5: 50, 21: 30}
LOOSE = GuardrailLimits(max_error_rate=0.5)  # the hand table's control has 1 degraded page of 3


def ev(member, kind, ts, title=None, value=None, request=None, payload=None, experiments=LIE):
    return {"member_id": member, "type": kind, "timestamp": ts, "title_id": title, "value": value,
            "request_id": request, "payload": payload, "experiments": experiments}


def hand_rows() -> list[dict]:
    """Four exposed members (control 1, 2; treatment 3, 4), one unexposed liar, one member of
    another experiment; the values each metric should take are in the tests below."""
    ep = lambda n: json.dumps({"episode": n})
    return [
        # member 1, control: a play long before exposure, a pre-period play, then the experiment
        ev(1, "play", 5_000, 1), ev(1, "play", 9_500, 1), ev(1, "progress", 9_600, 1, 0.5),
        exposure(1, "control", 10_000, "r1"),
        ev(1, "impression", 10_010, 1, request="r1"), ev(1, "play", 10_020, 1, request="r1"),
        ev(1, "progress", 10_030, 1, 0.5), ev(1, "progress", 10_040, 1, 0.8),
        ev(1, "completion", 10_050, 1, 1.0),
        ev(1, "play", 11_500, 2), ev(1, "progress", 11_600, 2, 0.25),
        # member 2, control: two impressions, then two episodes of a series on day 2
        exposure(2, "control", 10_500, "r2"),
        ev(2, "impression", 10_600, 3, request="r2"), ev(2, "impression", 10_601, 4, request="r2"),
        ev(2, "play", 12_600, 21, payload=ep(1)), ev(2, "progress", 12_700, 21, 0.5, payload=ep(1)),
        ev(2, "progress", 12_800, 21, 0.5, payload=ep(2)),
        # member 3, treatment, later also exposed to control (a crossover)
        ev(3, "play", 9_300, 5),
        exposure(3, "treatment", 10_200, "r3"), exposure(3, "control", 11_000, "r3b"),
        ev(3, "play", 10_300, 1, request="r3"), ev(3, "completion", 10_400, 1, 1.0),
        # member 4, treatment: progress that goes back down, a second play on day 3
        exposure(4, "treatment", 10_100, "r4"),
        ev(4, "impression", 10_150, 5, request="r4"), ev(4, "play", 10_160, 5, request="r4"),
        ev(4, "progress", 10_170, 5, 0.3), ev(4, "progress", 10_180, 5, 0.2),
        ev(4, "play", 13_160, 5), ev(4, "progress", 13_170, 5, 0.6),
        # member 5 claims the treatment in its client events but was never exposed
        ev(5, "play", 10_500, 1, request="r5"), ev(5, "completion", 10_600, 1, 1.0),
        # member 6 is in another experiment
        exposure_event("other", "control", 6, "r6", 10_000), ev(6, "play", 10_100, 1, request="r6"),
        # decision records: control 10, 20, 30 ms (one degraded), treatment 40, 60 ms
        decision(1, 10_000, "r1", {NAME: "control"}, latency_ms=10.0),
        decision(1, 11_500, "r1b", {NAME: "control"}, latency_ms=20.0),
        decision(2, 10_500, "r2", {NAME: "control"}, latency_ms=30.0, degraded=("ranker",)),
        decision(3, 10_200, "r3", {NAME: "treatment"}, latency_ms=40.0),
        decision(4, 10_100, "r4", {NAME: "treatment"}, latency_ms=60.0),
        decision(5, 10_500, "r5", {}, latency_ms=1000.0, degraded=("all",)),
        decision(6, 10_000, "r6", {"other": "control"}, latency_ms=1000.0),
    ]


@functools.cache
def hand_table() -> pa.Table:
    return table(hand_rows())


def hand(**kw) -> dict:
    return analyze(hand_table(), experiment(), runtimes=RUNTIMES, day_ms=DAY,
                   **({"pre_days": 1, "guardrails": LOOSE} | kw))


@functools.cache
def lifted():
    return ship_case()


@functools.cache
def lifted_report(use_cuped: bool = True) -> dict:
    fx = lifted()
    return analyze(fx.events, fx.experiment, runtimes=fx.titles, day_ms=fx.day_ms, pre_days=4, use_cuped=use_cuped)


@functools.cache
def lifted_members() -> pa.Table:
    fx = lifted()
    return member_metrics(fx.events, fx.experiment, runtimes=fx.titles, day_ms=fx.day_ms, pre_days=4)


def arms(members: pa.Table, column: str) -> tuple[np.ndarray, np.ndarray]:
    variant = np.array(members.column("variant").to_pylist())
    values = members.column(column).to_numpy().astype(float)
    return values[variant == "control"], values[variant == "treatment"]


# -- every metric by hand ------------------------------------------------------------------------


def test_every_metric_matches_the_hand_computed_values():
    report = hand()
    value = {m: {v: report["metrics"][m]["by_variant"][v]["value"] for v in ("control", "treatment")}
             for m in METRICS}
    assert value["plays_per_member"] == {"control": 1.5, "treatment": 1.5}
    assert value["minutes_watched"] == {"control": (120 + 30) / 2, "treatment": (100 + 30) / 2}
    assert value["active_days"] == {"control": 2.0, "treatment": 1.5}
    assert value["completion_rate"] == pytest.approx({"control": 1 / 3, "treatment": 1 / 3})
    assert value["homepage_ctr"] == pytest.approx({"control": 1 / 3, "treatment": 2.0})
    assert report["members"] == {"control": 2, "treatment": 2}
    assert report["schema"] == 1


def test_member_table_by_hand_including_the_pre_period():
    rows = {r["member_id"]: r for r in member_metrics(hand_table(), experiment(), runtimes=RUNTIMES,
                                                      day_ms=DAY, pre_days=1).to_pylist()}
    assert sorted(rows) == [1, 2, 3, 4]
    picked = {m: (r["variant"], r["plays"], r["completions"], r["home_plays"], r["home_impressions"],
                  r["active_days"], r["minutes"], r["pre_plays"], r["pre_minutes"]) for m, r in rows.items()}
    assert picked == {1: ("control", 2, 1, 1, 1, 2, 120.0, 1, 50.0),
                      2: ("control", 1, 0, 0, 2, 2, 30.0, 0, 0.0),
                      3: ("treatment", 1, 1, 1, 0, 1, 100.0, 1, 0.0),
                      4: ("treatment", 2, 0, 1, 1, 2, 30.0, 0, 0.0)}
    assert [rows[m]["first_exposure_ms"] for m in (1, 2, 3, 4)] == [10_000, 10_500, 10_200, 10_100]


def test_daily_series_are_cumulative_from_each_look():
    report = hand()
    assert report["window"]["days"] == 4  # first exposure 10 000, last event 13 170
    daily = report["daily"]
    values = lambda m, v: [p["value"] for p in daily[m][v]]
    assert values("plays_per_member", "control") == [0.5, 1.0, 1.5, 1.5]
    assert values("plays_per_member", "treatment") == [1.0, 1.0, 1.0, 1.5]
    assert values("minutes_watched", "control") == [50.0, 60.0, 75.0, 75.0]
    assert values("minutes_watched", "treatment") == [57.5, 57.5, 57.5, 65.0]
    assert values("active_days", "control") == [1.0, 1.5, 2.0, 2.0]
    point = daily["plays_per_member"]["control"][1]  # members 1 and 2 with 2 and 0 plays
    half = scipy_stats.t.ppf(0.975, 1) * np.std([2, 0], ddof=1) / np.sqrt(2)
    assert (point["ci_low"], point["ci_high"]) == pytest.approx((1.0 - half, 1.0 + half))
    assert [p["time_ms"] for p in daily["plays_per_member"]["control"]] == [11_000, 12_000, 13_000, 13_171]


def test_exposure_rules_first_variant_crossovers_and_untrusted_client_assignments():
    report = hand()
    assert report["crossovers"] == {"count": 1, "by_variant": {"control": 0, "treatment": 1}}
    # member 5's client events claim the treatment, member 6 is in another experiment: neither counts
    assert report["metrics"]["plays_per_member"]["by_variant"]["treatment"]["n"] == 2
    assert report["metrics"]["plays_per_member"]["by_variant"]["control"]["n"] == 2


def test_now_ms_cuts_events_and_looks():
    report = hand(now_ms=12_000)
    plays = report["metrics"]["plays_per_member"]["by_variant"]
    minutes = report["metrics"]["minutes_watched"]["by_variant"]
    assert (plays["control"]["value"], plays["treatment"]["value"]) == (1.0, 1.0)
    assert (minutes["control"]["value"], minutes["treatment"]["value"]) == (60.0, 57.5)
    assert report["window"]["days"] == 2
    assert report["crossovers"]["count"] == 1  # the second exposure at 11 000 is before now


def test_an_event_dated_in_the_future_is_not_read_and_the_looks_end_at_the_data():
    # a client may post a timestamp up to 2100; the analysis reads up to the wall clock at the call
    future = 4_000_000_000_000  # 2096
    report = analyze(table(hand_rows() + [ev(1, "play", future, 7)]), experiment(), runtimes=RUNTIMES,
                     day_ms=DAY, pre_days=1, guardrails=LOOSE)
    assert report == hand() | {"window": report["window"]}
    assert report["window"]["days"] == hand()["window"]["days"] and report["window"]["cutoff_ms"] < future


def test_a_day_too_short_for_the_window_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^day_ms: \d+ ms days .* looks \(at most"):
        hand(now_ms=4_000_000_000_000)


def test_guardrails_from_decision_records():
    g = hand()["guardrails"]
    assert g["by_variant"]["control"]["pages"] == 3
    assert g["by_variant"]["control"]["error_rate"] == pytest.approx(1 / 3)
    assert g["by_variant"]["control"]["p99_latency_ms"] == pytest.approx(np.percentile([10, 20, 30], 99))
    assert g["by_variant"]["treatment"] == {"pages": 2, "error_rate": 0.0,
                                            "p99_latency_ms": pytest.approx(59.8), "latency_pages": 2}
    assert not g["stop"]


def test_a_guardrail_breach_stops_the_experiment():
    report = hand(guardrails=GuardrailLimits(max_error_rate=0.1))
    assert report["guardrails"]["breaches"] == [{"variant": "control", "guardrail": "error_rate",
                                                 "value": pytest.approx(1 / 3), "limit": 0.1}]
    assert report["verdict"]["decision"] == "stop"
    assert any("Guardrail breached" in r and "control" in r for r in report["verdict"]["reasons"])


def test_three_variants_weights_and_a_latency_breach():
    fx = make_fixture(members=300, days=3, seed=3, weights={"control": 2, "a": 1, "b": 1},
                      lifts={"a": 0.0, "b": 0.0}, latency_ms={"b": 400.0})
    report = analyze(fx.events, fx.experiment, runtimes=fx.titles, day_ms=fx.day_ms, pre_days=4)
    n = sum(report["members"].values())
    assert report["srm"]["expected"] == pytest.approx({"a": n / 4, "b": n / 4, "control": n / 2})
    assert set(report["metrics"]["plays_per_member"]["comparisons"]) == {"a", "b"}
    assert [(b["variant"], b["guardrail"]) for b in report["guardrails"]["breaches"]] == [("b", "p99_latency_ms")]
    assert report["verdict"]["decision"] == "stop"
    assert any("p99 latency" in r for r in report["verdict"]["reasons"])


# -- SRM -------------------------------------------------------------------------------------------


def exposures_only(control: int, treatment: int) -> pa.Table:
    n = control + treatment
    return exposures(list(range(n)), ["control"] * control + ["treatment"] * treatment, 1_000 + np.arange(n))


def test_srm_flags_a_52_48_split_of_20000_members():
    report = analyze(exposures_only(10_400, 9_600), experiment(), runtimes=RUNTIMES)
    srm = report["srm"]
    statistic, p = scipy_stats.chisquare([10_400, 9_600], [10_000, 10_000])
    assert srm["statistic"] == pytest.approx(statistic) and srm["p_value"] == pytest.approx(p)
    assert srm["mismatch"] and srm["p_value"] < 0.001
    assert report["verdict"]["decision"] == "stop"
    assert report["verdict"]["reasons"][0].startswith("Sample ratio mismatch")
    json.dumps(report, allow_nan=False)  # members without any event: undefined statistics are None


def test_srm_does_not_flag_a_fair_split():
    report = analyze(exposures_only(10_050, 9_950), experiment(), runtimes=RUNTIMES)
    assert not report["srm"]["mismatch"] and report["srm"]["p_value"] > 0.1
    assert report["verdict"]["decision"] == "keep running"


# -- lifts against statsmodels and textbook formulas -----------------------------------------------


def test_mean_lift_and_interval_equal_statsmodels_on_the_member_table():
    members, report = lifted_members(), lifted_report()
    for metric, column in (("plays_per_member", "plays"), ("minutes_watched", "minutes"),
                           ("active_days", "active_days")):
        a, b = arms(members, column)
        ours = report["metrics"][metric]["comparisons"]["treatment"]
        compare = CompareMeans(DescrStatsW(b), DescrStatsW(a))
        _, p, _ = compare.ttest_ind(usevar="unequal")
        low, high = compare.tconfint_diff(alpha=0.05, usevar="unequal")
        assert ours["p_value"] == pytest.approx(p, rel=1e-9)
        assert (ours["difference_low"], ours["difference_high"]) == pytest.approx((low, high), rel=1e-9)
        # relative lift: delta method for a ratio of independent means
        ma, mb, va, vb = a.mean(), b.mean(), a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = np.sqrt(vb / ma ** 2 + mb ** 2 * va / ma ** 4)
        assert ours["relative_lift"] == pytest.approx(mb / ma - 1)
        assert ours["relative_low"] == pytest.approx(mb / ma - 1 - 1.959963984540054 * se)


def delta_ratio(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Textbook delta-method variance of sum(x) / sum(y) over n i.i.d. members."""
    n, mx, my = len(x), x.mean(), y.mean()
    sxx, syy, sxy = np.var(x, ddof=1), np.var(y, ddof=1), np.cov(x, y)[0, 1]
    return mx / my, (sxx / my ** 2 - 2 * mx * sxy / my ** 3 + mx ** 2 * syy / my ** 4) / n


def test_ratio_metrics_use_the_delta_method_per_member():
    members, report = lifted_members(), lifted_report()
    for metric, num, den in (("completion_rate", "completions", "plays"),
                             ("homepage_ctr", "home_plays", "home_impressions")):
        (xa, xb), (ya, yb) = arms(members, num), arms(members, den)
        ra, va = delta_ratio(xa, ya)
        rb, vb = delta_ratio(xb, yb)
        ours = report["metrics"][metric]
        assert ours["by_variant"]["control"]["value"] == pytest.approx(ra)
        c = ours["comparisons"]["treatment"]
        z = (rb - ra) / np.sqrt(va + vb)
        assert c["p_value"] == pytest.approx(2 * scipy_stats.norm.sf(abs(z)), rel=1e-9)
        assert c["relative_lift"] == pytest.approx(rb / ra - 1)


def test_the_member_table_counts_what_a_naive_count_of_the_log_finds():
    fx, members = lifted(), lifted_members()
    events = fx.events
    exposed = events.filter(pc.equal(events.column("type"), "exposure"))
    t0 = dict(zip(exposed.column("member_id").to_pylist(),
                  exposed.column("timestamp").cast(pa.int64()).to_pylist()))
    plays = events.filter(pc.equal(events.column("type"), "play"))
    counted: dict[int, int] = {}
    for member, ts in zip(plays.column("member_id").to_pylist(), plays.column("timestamp").cast(pa.int64()).to_pylist()):
        if ts >= t0[member]:
            counted[member] = counted.get(member, 0) + 1
    ours = dict(zip(members.column("member_id").to_pylist(), members.column("plays").to_pylist()))
    assert ours == {m: counted.get(m, 0) for m in t0}
    truth = dict(zip(members.column("member_id").to_pylist(), members.column("variant").to_pylist()))
    assert truth == fx.variant_of  # the lying client `experiments` column was not read


# -- CUPED -----------------------------------------------------------------------------------------


def test_cuped_reports_the_variance_reduction_and_matches_ancova():
    members, report = lifted_members(), lifted_report()
    for metric, column in (("plays_per_member", "plays"), ("minutes_watched", "minutes")):
        ya, yb = arms(members, column)
        xa, xb = arms(members, f"pre_{column}")
        ours = report["cuped"][metric]["treatment"]
        theta = (((xa - xa.mean()) @ (ya - ya.mean()) + (xb - xb.mean()) @ (yb - yb.mean()))
                 / ((xa - xa.mean()) @ (xa - xa.mean()) + (xb - xb.mean()) @ (xb - xb.mean())))
        mean_x = np.concatenate([xa, xb]).mean()
        adj_a, adj_b = ya - theta * (xa - mean_x), yb - theta * (xb - mean_x)
        welch_var = lambda a, b: a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)
        assert ours["theta"] == pytest.approx(theta)
        assert ours["variance_reduction"] == pytest.approx(1 - welch_var(adj_a, adj_b) / welch_var(ya, yb))
        assert ours["variance_reduction"] > 0.1  # activity persists from the pre-period
        design = np.column_stack([np.ones(len(ya) + len(yb)), np.r_[np.zeros(len(ya)), np.ones(len(yb))],
                                  np.r_[xa, xb]])
        fit = OLS(np.r_[ya, yb], design).fit()
        assert ours["adjusted"]["difference"] == pytest.approx(fit.params[1], rel=1e-9)


def test_a_pre_period_of_none_reads_the_whole_history_before_exposure():
    bounded, whole = hand(), hand(pre_days=None)
    members = member_metrics(hand_table(), experiment(), runtimes=RUNTIMES, day_ms=DAY, pre_days=None)
    pre = dict(zip(members.column("member_id").to_pylist(), members.column("pre_plays").to_pylist()))
    assert pre[1] == 2  # the play at 5 000, long before exposure at 10 000, counts with the one at 9 500
    assert whole["metrics"] == bounded["metrics"]  # what happens after exposure does not move
    assert whole["window"]["pre_days"] is None


def test_the_verdict_quotes_the_cuped_adjusted_lift_that_the_sequential_test_read():
    report = lifted_report()
    assert report["sequential"]["adjustment"] == "cuped"
    adjusted = report["cuped"]["plays_per_member"]["treatment"]["adjusted"]
    assert "CUPED-adjusted" in report["verdict"]["reasons"][0]
    assert f"{100 * adjusted['relative_lift']:+.1f}%" in report["verdict"]["reasons"][0]
    raw = lifted_report(False)
    assert raw["sequential"]["adjustment"] is None and "CUPED" not in raw["verdict"]["reasons"][0]
    with pytest.raises(ValueError, match="^use_cuped"):
        hand(use_cuped="yes")


def test_cuped_without_pre_period_variation_says_why():
    report = hand(pre_days=0)
    assert "error" in report["cuped"]["plays_per_member"]["treatment"]


# -- the sequential test ---------------------------------------------------------------------------


@pytest.mark.parametrize("use_cuped", [False, True])
def test_sequential_path_equals_msprt_on_naively_computed_looks(use_cuped):
    """Raw: plays per member recounted from the events at each look. CUPED: those counts
    adjusted by the pre-period plays with theta from statsmodels' OLS (y ~ arm + x) at each look."""
    import statsmodels.api as sm

    fx, report = lifted(), lifted_report(use_cuped)
    members = lifted_members()
    pre = dict(zip(members.column("member_id").to_pylist(), members.column("pre_plays").to_pylist()))
    t0 = dict(zip(members.column("member_id").to_pylist(), members.column("first_exposure_ms").to_pylist()))
    variant = dict(zip(members.column("member_id").to_pylist(), members.column("variant").to_pylist()))
    plays = fx.events.filter(pc.equal(fx.events.column("type"), "play"))
    stamps: dict[int, list[int]] = {m: [] for m in t0}
    for m, ts in zip(plays.column("member_id").to_pylist(), plays.column("timestamp").cast(pa.int64()).to_pylist()):
        if ts >= t0[m]:
            stamps[m].append(ts)
    start, day = report["window"]["first_exposure_ms"], report["window"]["day_ms"]
    looks = {"control": [], "treatment": []}
    for k in range(report["window"]["days"]):
        cut = start + (k + 1) * day
        ids = [m for m in t0 if t0[m] < cut]
        y = np.array([sum(ts < cut for ts in stamps[m]) for m in ids], dtype=float)
        arm = np.array([variant[m] == "treatment" for m in ids], dtype=float)
        if use_cuped:
            x = np.array([pre[m] for m in ids], dtype=float)
            theta = sm.OLS(y, sm.add_constant(np.column_stack([arm, x]))).fit().params[2]
            y = y - theta * (x - x.mean())
        looks["control"].append(y[arm == 0])
        looks["treatment"].append(y[arm == 1])
    expected = msprt(looks["control"], looks["treatment"], mixing_sd=report["sequential"]["mixing_sd"])
    path = report["sequential"]["by_variant"]["treatment"]
    assert report["sequential"]["adjustment"] == ("cuped" if use_cuped else None)
    assert [p["p_value"] for p in path["looks"]] == pytest.approx(list(expected.p_value))
    assert [p["ci_low"] for p in path["looks"]] == pytest.approx(list(expected.ci_low))
    assert path["rejected"] == expected.rejected
    final = (report["cuped"]["plays_per_member"]["treatment"]["adjusted"] if use_cuped
             else report["metrics"]["plays_per_member"]["comparisons"]["treatment"])
    assert path["looks"][-1]["difference"] == pytest.approx(final["difference"])
    # mixing sd: 5% of control's plays per member at the last look
    assert report["sequential"]["mixing_sd"] == pytest.approx(
        0.05 * report["metrics"]["plays_per_member"]["by_variant"]["control"]["value"])


# -- the verdict -----------------------------------------------------------------------------------


def test_ship_names_the_winner_when_the_sequential_test_rejected_upwards():
    report = lifted_report()
    assert report["sequential"]["by_variant"]["treatment"]["rejected"]
    assert report["verdict"]["decision"] == "ship" and report["verdict"]["winner"] == "treatment"
    assert report["verdict"]["reasons"][0].startswith("Ship treatment")


def test_keep_running_says_not_significant_yet_with_the_interval():
    report = copy.deepcopy(lifted_report())
    report["sequential"]["by_variant"]["treatment"].update(rejected=False, direction=None, p_value=0.4)
    result = verdict(report)
    assert result["decision"] == "keep running" and result["winner"] is None
    assert "not significant yet" in result["reasons"][0] and "95% CI" in result["reasons"][0]


def test_stop_when_the_primary_metric_is_significantly_worse():
    report = copy.deepcopy(lifted_report())
    report["sequential"]["by_variant"]["treatment"].update(rejected=True, direction="worse")
    result = verdict(report)
    assert result["decision"] == "stop"
    assert "significantly worse" in result["reasons"][0]


def test_stop_on_srm_wins_over_a_winner():
    report = copy.deepcopy(lifted_report())
    report["srm"].update(mismatch=True, p_value=1e-6)
    assert verdict(report)["decision"] == "stop"


# -- the report data and bad input -----------------------------------------------------------------


def test_the_report_is_plain_json():
    report = lifted_report()
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_ray_only_input_is_refused_by_the_arrow_engine():
    with pytest.raises(ValueError, match="^events: engine 'arrow' takes a pyarrow.Table"):
        analyze([hand_table()], experiment(), runtimes=RUNTIMES)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.slice(0, 0), "^events: the table is empty"),
    (lambda t: t.drop_columns(["payload"]), "^events: missing column.*payload"),
    (lambda t: t.set_column(t.schema.get_field_index("timestamp"), "timestamp",
                            pc.cast(t.column("timestamp").cast(pa.int64()), pa.string())), "^events.timestamp"),
    (lambda t: t.set_column(t.schema.get_field_index("member_id"), "member_id",
                            pc.cast(t.column("member_id"), pa.string())), "^events.member_id"),
    (lambda t: t.filter(pc.not_equal(t.column("type"), "exposure")), "^experiment: no exposure events"),
])
def test_bad_events_are_refused_naming_what(change, message):
    with pytest.raises(ValueError, match=message):
        analyze(change(hand_table()), experiment(), runtimes=RUNTIMES, day_ms=DAY)


def test_exposures_to_a_variant_the_experiment_lacks_are_refused():
    events = table(hand_rows() + [exposure(9, "ghost", 10_000, "r9")])
    with pytest.raises(ValueError, match=r"^events.experiments: .*\['ghost'\]"):
        analyze(events, experiment(), runtimes=RUNTIMES, day_ms=DAY)


@pytest.mark.parametrize("kwargs, message", [
    ({"experiment": "home_ranker"}, "^experiment: expected an experiments.spec.Experiment"),
    ({"runtimes": [1, 2]}, "^runtimes"),
    ({"runtimes": pa.table({"title_id": [1]})}, "^runtimes: missing column.*runtime_min"),
    ({"day_ms": 0}, "^day_ms"),
    ({"day_ms": 1.5}, "^day_ms"),
    ({"engine": "spark"}, "^engine"),
    ({"primary": "revenue"}, "^primary"),
    ({"alpha": 1.5}, "^alpha"),
    ({"pre_days": -1}, "^pre_days"),
    ({"now_ms": "today"}, "^now_ms"),
    ({"guardrails": {"max_error_rate": 0.1}}, "^guardrails"),
    ({"control": "nobody"}, "^control"),
])
def test_bad_arguments_are_refused_naming_the_argument(kwargs, message):
    args = {"experiment": experiment(), "runtimes": RUNTIMES, "day_ms": DAY} | kwargs
    with pytest.raises(ValueError, match=message):
        analyze(hand_table(), args.pop("experiment"), **args)


def test_with_a_planned_horizon_the_verdict_reads_the_group_sequential_test():
    """The test `marquee experiment calibrate` checks at daily looks: its boundary at each look is
    Lan-DeMets' for that day of the horizon, and the verdict names it."""
    from experiments.sequential import group_sequential_boundaries

    fx = ship_case()
    report = analyze(fx.events, fx.experiment, runtimes=fx.titles, day_ms=fx.day_ms, planned_days=14)
    planned = report["sequential"]["by_variant"]["treatment"]["group_sequential"]
    days = [look["day"] for look in planned["looks"]]
    expected = group_sequential_boundaries([d / 14 for d in days], alpha=0.05, spending="obrien_fleming").critical
    assert [look["critical"] for look in planned["looks"]] == pytest.approx(list(np.ravel(expected)))
    crossed = [look["day"] for look in planned["looks"] if abs(look["statistic"]) >= look["critical"]]
    assert planned["rejected"] == bool(crossed) and (not crossed or planned["first_rejection"]["day"] == crossed[0])
    assert report["verdict"]["decision"] == ("ship" if planned["rejected"] else "keep running")
    assert "group-sequential test (horizon 14 days)" in " ".join(report["verdict"]["reasons"])
    with pytest.raises(ValueError, match="planned_days"):
        analyze(fx.events, fx.experiment, runtimes=fx.titles, day_ms=fx.day_ms, planned_days=0)
