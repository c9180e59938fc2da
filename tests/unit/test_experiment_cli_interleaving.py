"""`marquee experiment report` on an experiment of one interleaved variant: no A/B to compare,
so the report is the preference for B with its interval and a verdict, read from the log on disk."""

from __future__ import annotations

import json

from marquee.home import Paths
from marquee.schema import decision_event
from ops.cli import main
from state.eventlog import EventLog

SPEC = """
holdout: 0.0
layers: [ranking]
experiments:
  - name: tdi
    layer: ranking
    traffic: 1.0
    salt: tdi-1
    variants:
      interleaved: {weight: 1, override: {interleaving: {rankers: [popularity, ranker]}}}
"""
T0 = 1_700_000_000_000


def home_with_pages(root, b_members: int, a_members: int) -> Paths:
    """Each member gets one interleaved page (title 10 drafted by A, 11 by B) and plays one title
    from it: B's for the first b_members, A's for the rest."""
    paths = Paths(root)
    events = []
    for m in range(1, b_members + a_members + 1):
        rid = f"req-{m}"
        teams = {"experiment": "tdi", "rankers": {"A": "popularity", "B": "ranker"}, "teams": {"10": "A", "11": "B"}}
        events.append(decision_event(rid, m, T0 + m, "tv", "US", "uniform", 1,
                                     [(10, "10-0", 0.5, "personalized:0", 0), (11, "11-0", 0.5, "personalized:0", 1)],
                                     {"tdi": "interleaved"}, {}, latency_ms=5.0, interleaving=teams))
        events.append({"event_id": f"play-{m}", "member_id": m, "title_id": 11 if m <= b_members else 10,
                       "type": "play", "timestamp": T0 + m + 1000, "request_id": rid, "row": "personalized:0"})
    with EventLog(paths.event_log, fsync=False) as log:
        result = log.append(events)
    assert not result.rejected, result.rejected[:3]
    return paths


def test_report_of_an_interleaving_experiment_gives_the_preference_and_a_verdict(tmp_path, capsys):
    paths = home_with_pages(tmp_path, b_members=30, a_members=6)
    spec = tmp_path / "experiments.yaml"
    spec.write_text(SPEC)
    html = tmp_path / "tdi.html"
    assert main(["experiment", "--home", str(paths.home), "report", "tdi", "--file", str(spec), "--json",
                 "--html", str(html)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "interleaving" and report["interleaving"]["pages"] == 36
    assert report["interleaving"]["preference"]["mean"] == (30 - 6) / 36
    assert report["verdict"]["decision"] == "prefer ranker"
    assert "prefer ranker" in html.read_text()
