"""experiments/report.py: the HTML page (parsed) and the terminal summary of an analysis."""

from __future__ import annotations

import base64
import copy
import functools
from html.parser import HTMLParser

import pytest

from experiments import report as report_module
from experiments.analysis import METRICS, analyze, verdict
from experiments.report import render_html, render_text
from tests.experiment_fixtures import ship_case


@functools.cache
def analysed() -> dict:
    fx = ship_case()
    return analyze(fx.events, fx.experiment, runtimes=fx.titles, day_ms=fx.day_ms, pre_days=4)


@functools.cache
def page() -> str:
    return render_html(analysed())


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def plots(self) -> dict[str, dict]:
        return {a["data-plot"]: a for t, a in self.tags if t in ("img", "svg") and "data-plot" in a}


def test_the_page_has_one_plot_per_metric_the_sequential_path_and_the_srm_chart():
    tags = Tags(page())
    plots = tags.plots()
    assert set(plots) == {f"metric:{m}" for m in METRICS} | {"sequential", "srm"}
    for name, attrs in plots.items():
        if name != "srm":
            assert base64.b64decode(attrs["src"].removeprefix("data:image/png;base64,")).startswith(b"\x89PNG")
    assert sum(1 for t, _ in tags.tags if t == "img") == len(METRICS) + 1


def test_the_page_states_the_verdict_the_srm_status_and_the_lifts():
    report, tags = analysed(), Tags(page())
    text = " ".join(tags.text)
    decision = [a for t, a in tags.tags if a.get("class") == "verdict"]
    assert decision[0]["data-decision"] == report["verdict"]["decision"] == "ship"
    assert report["verdict"]["reasons"][0] in text
    assert [a["data-srm"] for t, a in tags.tags if "data-srm" in a] == ["OK"]
    lift = report["metrics"]["plays_per_member"]["comparisons"]["treatment"]["relative_lift"]
    assert f"{lift * 100:+.1f}%" in text
    assert "No breach." in text


def test_the_page_is_self_contained():
    html = page()
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html


def test_a_mismatch_and_a_stop_are_shown_and_names_escaped(monkeypatch):
    monkeypatch.setattr(report_module, "metric_plot", lambda report, metric: "")  # the figures are tested above
    monkeypatch.setattr(report_module, "sequential_plot", lambda report: "")
    report = copy.deepcopy(analysed())
    report["srm"].update(mismatch=True, p_value=1e-7)
    report["experiment"] = "<b>x</b>"
    report["verdict"] = verdict(report)
    tags = Tags(render_html(report))
    assert [a["data-srm"] for t, a in tags.tags if "data-srm" in a] == ["MISMATCH"]
    assert [a["data-decision"] for t, a in tags.tags if a.get("class") == "verdict"] == ["stop"]
    assert not any(t == "b" for t, _ in tags.tags)
    assert any(text.startswith("Sample ratio mismatch") for text in tags.text)


def test_the_text_summary_leads_with_the_verdict():
    report = analysed()
    text = render_text(report)
    assert text.splitlines()[0] == f"experiment {report['experiment']}: SHIP treatment"
    assert "SRM OK" in text and "plays_per_member" in text and "guardrails: ok" in text


@pytest.mark.parametrize("bad, message", [({}, "schema 1"), ({"schema": 1}, "missing key"), ([], "report")])
def test_anything_but_a_report_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        render_html(bad)
