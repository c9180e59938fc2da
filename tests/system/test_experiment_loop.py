"""The experiment loop through the running system, short form (the full run, 2,000 members for 14
simulated days through `marquee up`, `marquee simulate` and `marquee experiment report`, is in the
README's Experiments section): an A/B experiment in
HOME/experiments.yaml, the traffic simulator's members calling the real HTTP API, and the analysis
of the event log finding every exposed member in the variant the server gave them, the SRM check
passing and a verdict in words, as JSON and HTML."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from experiments.analysis import analyze
from experiments.report import render_html
from experiments.spec import load_spec
from marquee.dataset import load_dataset
from producers.world.traffic import TrafficSettings, World, run_traffic
from tests.live_app import all_replicas, event_log_table, wait_for, write_followed_file

pytestmark = pytest.mark.timeout(900)

SPEC = """
holdout: 0.0
layers: [ranking]
experiments:
  - name: loop_ab
    layer: ranking
    traffic: 1.0
    salt: loop_ab-1
    variants:
      control: {weight: 1, override: {scorer: popularity}}
      ranker: {weight: 1}
"""


def test_an_ab_experiment_driven_by_the_simulator_is_analysed_from_the_log_short(serve_app):
    path = serve_app.paths.experiments
    write_followed_file(path, SPEC)
    try:
        spec = load_spec(path)
        with httpx.Client(base_url=serve_app.url, timeout=30) as client:
            wait_for(lambda: all_replicas(client, lambda e: e.get("version") == spec.version))
        settings = TrafficSettings(url=serve_app.url, members=200, days=3, seed=11, compression=86400 / 8,
                                   rate=25.0, concurrency=8)
        world = World.load(serve_app.paths.world)
        summary = run_traffic(settings, world, progress=False)
        assert summary["pages"] > 50 and summary["events"]["lost"] == 0, summary
        seen = summary["experiments"]["loop_ab"]
        assert set(seen) == {"control", "ranker"}

        time.sleep(1.5)  # the last decision and exposure batches (250 ms) land
        events = event_log_table()
        titles = load_dataset(serve_app.paths.world).titles
        report = analyze(events, spec.experiments[0], runtimes=titles, day_ms=settings.day_ms, engine="arrow")
        json.dumps(report)  # JSON as it stands
        members = {variant: stats["members"] for variant, stats in seen.items()}
        assert report["members"] == members  # every member the simulator saw in a variant is exposed there
        assert report["srm"]["mismatch"] is False
        assert report["verdict"]["decision"] in ("ship", "stop", "keep running") and report["verdict"]["reasons"]
        html = render_html(report)
        assert "loop_ab" in html and ("<img" in html or "<svg" in html)
    finally:
        path.unlink(missing_ok=True)
