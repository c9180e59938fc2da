"""An experiment's analysis (experiments/analysis.py `analyze`) as one HTML page or a terminal summary.

`render_html(report)` is self-contained (no scripts, no external files): the verdict in words,
the SRM status, the table of lifts, CUPED, the guardrails, and plots embedded as base64 PNG:
each metric per variant over time with its interval, and the sequential test's path. Figures are
drawn on matplotlib's Figure/Agg canvas directly (never pyplot), so rendering keeps no global
state and is safe in a server thread. `render_text(report)` is the same content for a terminal.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from typing import Any

from experiments.analysis import SCHEMA_VERSION

LABELS = {"plays_per_member": "plays per member", "minutes_watched": "minutes watched per member",
          "active_days": "active days per member", "completion_rate": "completion rate (completions / plays)",
          "homepage_ctr": "homepage click-through (plays / impressions)"}
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
DECISION_COLOURS = {"ship": "#1b7f3b", "stop": "#b00020", "keep running": "#8a6d00"}
DPI = 72


def _check(report: Any) -> Mapping:
    if not isinstance(report, Mapping) or report.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"report: expected the dict analyze() returns (schema {SCHEMA_VERSION}), got "
                         f"{type(report).__name__}" + (f" of schema {report.get('schema')!r}"
                                                       if isinstance(report, Mapping) else ""))
    missing = [k for k in ("experiment", "verdict", "srm", "metrics", "daily", "sequential", "guardrails")
               if k not in report]
    if missing:
        raise ValueError(f"report: missing key(s) {', '.join(missing)}")
    return report


def _num(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def _p(x: Any) -> str:
    return "n/a" if x is None else (f"{x:.2g}" if x >= 1e-4 else f"{x:.1e}")


# -- figures ---------------------------------------------------------------------------------------


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)  # fixed margins: a tight bbox costs a second draw
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.0, height: float = 3.0):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.11, right=0.97, bottom=0.16 * 3.0 / height, top=1 - 0.1 * 3.0 / height, hspace=0.15)
    return fig


def metric_plot(report: Mapping, metric: str) -> str:
    """A base64 PNG: the metric's cumulative value per variant at the end of each day, with its
    interval as a band."""
    fig = _figure()
    ax = fig.subplots()
    for i, (variant, points) in enumerate(report["daily"][metric].items()):
        days = [p["day"] for p in points if p["value"] is not None]
        value = [p["value"] for p in points if p["value"] is not None]
        low = [p["ci_low"] if p["ci_low"] is not None else p["value"] for p in points if p["value"] is not None]
        high = [p["ci_high"] if p["ci_high"] is not None else p["value"] for p in points if p["value"] is not None]
        colour = COLOURS[i % len(COLOURS)]
        ax.plot(days, value, marker="o", ms=3, color=colour, label=variant)
        ax.fill_between(days, low, high, color=colour, alpha=0.2, linewidth=0)
    level = round((1 - report["alpha"]) * 100)
    ax.set_title(f"{LABELS.get(metric, metric)}, cumulative ({level}% CI)", fontsize=10)
    ax.set_xlabel("day of the experiment")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _adjusted(report: Mapping) -> str:
    return " (CUPED-adjusted)" if report["sequential"].get("adjustment") == "cuped" else ""


def sequential_plot(report: Mapping) -> str:
    """A base64 PNG: the always-valid p-value per look against alpha (log scale), and the
    always-valid interval of the difference, per treatment."""
    fig = _figure(6.0, 4.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    alpha = report["sequential"]["alpha"]
    for i, (variant, path) in enumerate(report["sequential"]["by_variant"].items()):
        looks = path.get("looks") or []
        if not looks:
            continue
        colour = COLOURS[(i + 1) % len(COLOURS)]
        days = [p["day"] for p in looks]
        top.plot(days, [max(p["p_value"], 1e-12) for p in looks], marker="o", ms=3, color=colour, label=variant)
        bottom.plot(days, [p["difference"] for p in looks], marker="o", ms=3, color=colour, label=variant)
        bottom.fill_between(days, [p["ci_low"] for p in looks], [p["ci_high"] for p in looks],
                            color=colour, alpha=0.2, linewidth=0)
    top.axhline(alpha, color="black", linestyle="--", linewidth=1, label=f"alpha {alpha:g}")
    top.set_yscale("log")
    # plain tick labels: the default log labels are mathtext, whose parser costs a third of a second
    from matplotlib.ticker import FuncFormatter, NullFormatter

    top.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    top.yaxis.set_minor_formatter(NullFormatter())
    top.set_ylabel("always-valid p")
    top.set_title(f"sequential test (mSPRT) of {report['sequential']['metric']}{_adjusted(report)}", fontsize=10)
    top.legend(fontsize=8)
    bottom.axhline(0.0, color="black", linewidth=1)
    bottom.set_ylabel("difference vs control")
    bottom.set_xlabel("day of the experiment")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    return _png(fig)


def srm_svg(report: Mapping) -> str:
    """An inline SVG bar chart: members per variant, observed (filled) against what the weights
    promise (outlined). Drawn by hand: a few rectangles need no figure."""
    srm = report["srm"]
    names = list(srm["observed"])
    top = max([*srm["observed"].values(), *srm["expected"].values(), 1])
    width, height, bar = 80 * len(names) + 20, 150, 26
    parts = [(f'<svg data-plot="srm" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
              'role="img" aria-label="exposed members per variant, observed and expected">')]
    for i, name in enumerate(names):
        x = 20 + 80 * i
        for j, (what, count, style) in enumerate((("observed", srm["observed"][name], 'fill="#4c72b0"'),
                                                  ("expected", srm["expected"][name],
                                                   'fill="none" stroke="#555" stroke-dasharray="3,2"'))):
            h = 110 * count / top
            parts.append(f'<rect x="{x + j * bar}" y="{120 - h:.1f}" width="{bar - 2}" height="{h:.1f}" {style}>'
                         f"<title>{html.escape(name)} {what} {count:.0f}</title></rect>")
        parts.append(f'<text x="{x + bar}" y="138" font-size="11" text-anchor="middle">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -- HTML ------------------------------------------------------------------------------------------


def _img(data: str, plot: str, alt: str) -> str:
    return f'<img data-plot="{html.escape(plot)}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _lift_rows(report: Mapping) -> list[list[str]]:
    rows = []
    for metric, result in report["metrics"].items():
        for variant, c in result["comparisons"].items():
            if "error" in c:
                rows.append([metric, variant, "", "", "", c["error"], ""])
                continue
            rows.append([metric, variant, _num(c["control"]), _num(c["treatment"]), _pct(c["relative_lift"]),
                         f"{_pct(c['relative_low'])} to {_pct(c['relative_high'])}", _p(c["p_value"])])
    return rows


def _cuped_rows(report: Mapping) -> list[list[str]]:
    rows = []
    for metric, by_variant in report.get("cuped", {}).items():
        for variant, c in by_variant.items():
            if "error" in c:
                rows.append([metric, variant, "", "", "", c["error"]])
                continue
            a = c["adjusted"]
            rows.append([metric, variant, f"{c['variance_reduction'] * 100:.1f}%", _pct(a["relative_lift"]),
                         f"{_pct(a['relative_low'])} to {_pct(a['relative_high'])}", _p(a["p_value"])])
    return rows


def _guardrail_rows(report: Mapping) -> list[list[str]]:
    g = report["guardrails"]
    breached = {(b["variant"], b["guardrail"]) for b in g["breaches"]}
    rows = []
    for variant, v in g["by_variant"].items():
        rows.append([variant, str(v["pages"]),
                     _num(v["error_rate"]) + (" BREACH" if (variant, "error_rate") in breached else ""),
                     _num(v["p99_latency_ms"]) + (" BREACH" if (variant, "p99_latency_ms") in breached else "")])
    return rows


STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:60em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:0.25em 0.6em;
text-align:right}th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}
.verdict{font-size:1.3em;padding:0.6em 1em;border-radius:0.4em;color:white}
.srm-ok{color:#1b7f3b}.srm-mismatch{color:#b00020;font-weight:bold}img{display:block;margin:0.5em 0}"""


def render_html(report: Mapping) -> str:
    """One self-contained HTML page of the report (the CLI's `--html`)."""
    report = _check(report)
    v = report["verdict"]
    srm = report["srm"]
    esc = html.escape
    colour = DECISION_COLOURS.get(v["decision"], "#444")
    winner = f" {esc(v['winner'])}" if v.get("winner") else ""
    srm_class = "srm-mismatch" if srm["mismatch"] else "srm-ok"
    srm_word = "MISMATCH" if srm["mismatch"] else "OK"
    members = ", ".join(f"{esc(k)} {n}" for k, n in report["members"].items())
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Experiment {esc(report['experiment'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>Experiment {esc(report['experiment'])}</h1>",
        (f"<p>Control {esc(report['control'])}; members {members}; {report['window']['days']} day(s) of "
         f"{report['window']['day_ms']} ms; primary metric {esc(report['primary'])}; "
         f"crossovers {report['crossovers']['count']}.</p>"),
        (f'<h2>Verdict</h2><p class="verdict" data-decision="{esc(v["decision"])}" '
         f'style="background:{colour}">{esc(v["decision"])}{winner}</p>'),
        "<ul>" + "".join(f"<li>{esc(r)}</li>" for r in v["reasons"]) + "</ul>",
        (f'<h2>Sample ratio</h2><p class="{srm_class}" data-srm="{srm_word}">SRM {srm_word}: chi-square '
         f"{_num(srm['statistic'])}, p = {_p(srm['p_value'])} (flagged below {srm['threshold']:g}).</p>"),
        _table(["variant", "observed", "expected", "weight"],
               [[k, str(srm["observed"][k]), f"{srm['expected'][k]:.1f}", _num(srm["weights"][k])]
                for k in srm["observed"]], "srm"),
        srm_svg(report),
        "<h2>Lifts against control</h2>",
        _table(["metric", "variant", "control", "treatment", "lift", f"{round((1 - report['alpha']) * 100)}% CI",
                "p"], _lift_rows(report), "lifts"),
        "<h2>CUPED (pre-period covariate)</h2>",
        _table(["metric", "variant", "variance reduction", "adjusted lift", "CI", "p"], _cuped_rows(report), "cuped"),
        "<h2>Guardrails</h2>",
        (f"<p>Limits: error rate {report['guardrails']['limits']['max_error_rate']:g}, p99 latency "
         f"{report['guardrails']['limits']['max_p99_latency_ms']:g} ms. ")
        + ("STOP: a guardrail is breached." if report["guardrails"]["stop"] else "No breach.") + "</p>",
        _table(["variant", "pages", "error rate", "p99 latency ms"], _guardrail_rows(report), "guardrails"),
        "<h2>Sequential test</h2>",
        (f"<p>mSPRT of {esc(report['sequential']['metric'] + _adjusted(report))}, mixing sd {_num(report['sequential']['mixing_sd'])} "
         f"({esc(str(report['sequential'].get('mixing_sd_rule', '')))}). The p-value can be read at every "
         "look. The interval is the running intersection of each look's, which assumes one fixed effect; "
         "a cumulative metric's difference grows with exposure, so late estimates can leave it: read it "
         "as a lower bound on the effect's size once it excludes 0.</p>"),
        _img(sequential_plot(report), "sequential", "always-valid p-value and interval per look"),
        "<h2>Metrics over time</h2>",
    ]
    for metric in report["daily"]:
        parts.append(f"<h3>{esc(LABELS.get(metric, metric))}</h3>")
        parts.append(_img(metric_plot(report, metric), f"metric:{metric}", f"{metric} per variant per day"))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_text(report: Mapping) -> str:
    """A terminal summary: verdict, SRM, lifts, CUPED, guardrails, the sequential test."""
    report = _check(report)
    v, srm, g = report["verdict"], report["srm"], report["guardrails"]
    lines = [f"experiment {report['experiment']}: {v['decision'].upper()}"
             + (f" {v['winner']}" if v.get("winner") else "")]
    lines += [f"  - {r}" for r in v["reasons"]]
    lines.append("members: " + ", ".join(f"{k} {n}" for k, n in report["members"].items())
                 + f"; crossovers {report['crossovers']['count']}")
    lines.append(f"SRM {'MISMATCH' if srm['mismatch'] else 'OK'} (chi-square p = {_p(srm['p_value'])})")
    lines.append("lifts:")
    for row in _lift_rows(report):
        lines.append(f"  {row[0]:<18} {row[1]:<12} {row[4]:>8}  [{row[5]}]  p={row[6]}")
    lines.append("CUPED:")
    for row in _cuped_rows(report):
        lines.append(f"  {row[0]:<18} {row[1]:<12} variance -{row[2]}  lift {row[3]}  [{row[4]}]")
    lines.append("guardrails: " + ("STOP" if g["stop"] else "ok"))
    for row in _guardrail_rows(report):
        lines.append(f"  {row[0]:<12} pages {row[1]}  error rate {row[2]}  p99 {row[3]} ms")
    for variant, path in report["sequential"]["by_variant"].items():
        if path.get("looks"):
            first = path["first_rejection"]
            lines.append(f"sequential{_adjusted(report)} {variant}: p = {_p(path['p_value'])}"
                         + (f", rejected on day {first['day']}" if first else ", not rejected"))
    return "\n".join(lines)


def render_interleaving_text(report: Mapping) -> str:
    """The terminal summary of an interleaving-only report (ops.experiment_cli)."""
    v, section = report["verdict"], report["interleaving"]
    lines = [f"experiment {report['experiment']} (interleaving): {v['decision'].upper()}"]
    lines += [f"  - {r}" for r in v["reasons"]]
    lines.append(f"pages {section['pages']}, credited plays {section['credited_plays']}")
    return "\n".join(lines)


def render_interleaving_html(report: Mapping) -> str:
    """One self-contained HTML page of an interleaving-only report."""
    esc = html.escape
    v, section, p = report["verdict"], report["interleaving"], report["interleaving"]["preference"]
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(p[k]) if isinstance(p[k], int) else _num(p[k]))}</td></tr>"
                   for k in ("mean", "low", "high", "p_value", "n_members", "n_exposed", "prefer_b",
                             "prefer_a", "ties", "delta_ab"))
    return "".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(report['experiment'])}: interleaving</title></head><body>",
        f"<h1>{esc(report['experiment'])}: {esc(v['decision'])}</h1>",
        *(f"<p>{esc(r)}</p>" for r in v["reasons"]),
        f"<p>A = {esc(section['rankers']['A'])}, B = {esc(section['rankers']['B'])}; pages {section['pages']}, "
        f"credited plays {section['credited_plays']}</p>",
        f"<table>{rows}</table></body></html>"])


__all__ = ["metric_plot", "render_html", "render_interleaving_html", "render_interleaving_text", "render_text", "sequential_plot", "srm_svg"]
