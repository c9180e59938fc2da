"""`marquee experiment ...`: check an experiments file, report on a running experiment, and the
platform's own checks (A/A calibration, the interleaving-against-A/B power study).

- `validate [FILE]`: the file as the replicas will read it (default HOME/experiments.yaml):
  every problem named, exit 2 when it is refused.
- `report NAME [--json] [--html PATH]`: the experiment's analysis over the home's event log
  (experiments/analysis.py, aggregated with Ray Data by default) and its verdict.
- `calibrate --replications 200 --json`: A/A false positive rates of the fixed-horizon and
  sequential tests (experiments/calibration.py).
- `power --json`: members an A/B test and an interleaving experiment need at 80% power
  (experiments/power.py).

Why here (ops): `validate` checks variants the way serving does (deployments/assignment.py) and
`report` reads the home's log the way the served-OPE command does (training/served_ope.py); the
layers below may not import each other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

from deployments.assignment import override_validator
from deployments.page_config import HomepageConfig
from experiments.spec import SpecError, check_utc, epoch_ms, load_spec
from experiments.stats import GuardrailLimits
from marquee.home import Paths
from marquee.names import DAY_MS

def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, default=None, help="Marquee home (default: MARQUEE_HOME or ./.marquee)")
    sub = parser.add_subparsers(dest="experiment_command", required=True)
    validate = sub.add_parser("validate", help="check an experiments file as the replicas will read it")
    validate.add_argument("file", nargs="?", type=Path, default=None, help="default: HOME/experiments.yaml")
    report = sub.add_parser("report", help="analysis and verdict of one experiment over the home's event log")
    report.add_argument("name")
    report.add_argument("--file", type=Path, default=None, help="experiments file (default: HOME/experiments.yaml)")
    report.add_argument("--json", action="store_true", help="print the report as one JSON object")
    report.add_argument("--html", type=Path, default=None, help="also write the report with plots to this file")
    report.add_argument("--day-seconds", type=float, default=DAY_MS / 1000,
                        help="length of an analysis day in wall seconds (a compressed simulation's day: "
                             "`marquee simulate` prints it); default 86400")
    report.add_argument("--planned-days", type=int, default=None,
                        help="the experiment's planned horizon in analysis days: the verdict then reads the "
                             "group-sequential test (default: the experiment's start to end, else the mSPRT)")
    report.add_argument("--engine", choices=("ray", "arrow"), default="ray",
                        help="aggregate with Ray Data (default) or in this process")
    report.add_argument("--pre-days", type=_pre_days, default=28.0,
                        help="CUPED's pre-period in (simulated) days before each member's first exposure, "
                             "or 'all' for the whole history (a compressed-time run's history lies in real days)")
    report.add_argument("--until", type=_until_ms, default=None,
                        help="read events before this time (ISO 8601 UTC, e.g. 2026-12-03T13:00:00Z); "
                             "default: the experiment's end if the file declares one and it has passed, "
                             "else the last event")
    report.add_argument("--no-cuped", action="store_true",
                        help="the verdict reads the raw primary metric (CUPED is still reported)")
    report.add_argument("--dataset", type=Path, default=None, help="catalog of the log (default: HOME/serving.json)")
    report.add_argument("--max-p99-ms", type=float, default=GuardrailLimits().max_p99_latency_ms,
                        help="guardrail: a variant whose pages' p99 latency exceeds this stops the experiment")
    report.add_argument("--max-error-rate", type=float, default=GuardrailLimits().max_error_rate,
                        help="guardrail: share of degraded pages that stops the experiment")
    calibrate = sub.add_parser("calibrate", help="A/A false positive rates of the fixed and sequential tests")
    calibrate.add_argument("--replications", type=int, default=200)
    calibrate.add_argument("--members", type=int, default=2000)
    calibrate.add_argument("--days", type=int, default=14)
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--json", action="store_true")
    power = sub.add_parser("power", help="members an A/B test and interleaving need at 80%% power")
    power.add_argument("--seed", type=int, default=0)
    power.add_argument("--json", action="store_true")


def cli_main(args: argparse.Namespace) -> int:
    home = Paths(args.home) if args.home else Paths()
    command = args.experiment_command
    if command == "validate":
        return _validate(args.file or home.experiments)
    if command == "report":
        return _report(args, home)
    if command == "calibrate":
        from experiments.calibration import calibrate

        return _emit(calibrate(args.replications, members=args.members, days=args.days, seed=args.seed), args.json)
    from experiments.power import power_study

    return _emit(power_study(seed=args.seed), args.json)


def _emit(result: dict, as_json: bool) -> int:
    print(json.dumps(result, indent=None if as_json else 2, sort_keys=False))
    return 0


def _load(path: Path):
    """The file checked as serving checks it, against the default pipeline config."""
    return load_spec(path, override_validator(lambda: HomepageConfig()))


def _validate(path: Path) -> int:
    try:
        spec = _load(path)
    except FileNotFoundError:
        print(f"{path}: no such file", file=sys.stderr)
        return 2
    except (SpecError, ValueError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"file": str(path), "version": spec.version,
                      "experiments": [e.name for e in spec.experiments]}))
    return 0


def _report(args: argparse.Namespace, home: Paths) -> int:
    from experiments.analysis import analyze
    from experiments.report import render_html, render_text
    from marquee.dataset import load_dataset
    from training.served_ope import ServedOpeError, read_log_table, served_dataset, served_log

    path = args.file or home.experiments
    try:
        spec = _load(path)
    except (SpecError, ValueError, OSError) as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return 2
    experiment = next((e for e in spec.experiments if e.name == args.name), None)
    if experiment is None:
        print(f"{args.name}: no such experiment in {path}; it has {', '.join(e.name for e in spec.experiments)}",
              file=sys.stderr)
        return 2
    if not args.day_seconds > 0:
        print(f"--day-seconds: expected a positive number, got {args.day_seconds}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    if len(experiment.arms) == 1 and "interleaving" in experiment.arms[0].override:
        return _interleaving_only(args, home, experiment, started)
    try:
        titles = load_dataset(served_dataset(home.home, args.dataset)).titles
        with served_log(home.home) as (reader, _where):
            events = read_log_table(reader)
        # Ray's own notices (raylet warnings) go to stdout: keep stdout for the report alone
        with tempfile.TemporaryDirectory(prefix="report-", dir=home.home) as scratch, \
                contextlib.redirect_stdout(sys.stderr):
            source = _ray_dataset(events, home, Path(scratch)) if args.engine == "ray" else events
            report = analyze(source, experiment, runtimes=titles, day_ms=int(args.day_seconds * 1000),
                             engine=args.engine, pre_days=args.pre_days, use_cuped=not args.no_cuped,
                             now_ms=_analysis_end(args.until, experiment, time.time()),
                             guardrails=GuardrailLimits(args.max_error_rate, args.max_p99_ms),
                             planned_days=_planned_days(args, experiment))
    except (ServedOpeError, ValueError) as exc:
        print(f"cannot report on {args.name}: {exc}", file=sys.stderr)
        return 2
    if any("interleaving" in v.override for v in experiment.variants):
        from experiments.interleaving import interleaving_report

        report["interleaving"] = interleaving_report(events, experiment.name)
    report["elapsed_s"] = round(time.perf_counter() - started, 2)
    if args.html:
        args.html.write_text(render_html(report))
    print(json.dumps(report) if args.json else render_text(report))
    return 0


def _interleaving_only(args: argparse.Namespace, home: Paths, experiment, started: float) -> int:
    """An experiment of one interleaved variant: every member sees both rankers, so there is no
    A/B comparison; the report is the preference, its interval and a verdict in words."""
    from experiments.interleaving import interleaving_report, interleaving_verdict
    from experiments.report import render_interleaving_html, render_interleaving_text
    from training.served_ope import ServedOpeError, read_log_table, served_log

    try:
        with served_log(home.home) as (reader, _where):
            section = interleaving_report(read_log_table(reader), experiment.name)
    except (ServedOpeError, ValueError) as exc:
        print(f"cannot report on {args.name}: {exc}", file=sys.stderr)
        return 2
    report = {"schema": 1, "experiment": experiment.name, "kind": "interleaving", "interleaving": section,
              "verdict": interleaving_verdict(section), "elapsed_s": round(time.perf_counter() - started, 2)}
    if args.html:
        args.html.write_text(render_interleaving_html(report))
    print(json.dumps(report) if args.json else render_interleaving_text(report))
    return 0


def _until_ms(text: str) -> int:
    """--until: an ISO 8601 UTC time, as epoch milliseconds."""
    try:
        return epoch_ms(check_utc("--until", text))
    except ValueError as exc:  # SettingsError, already naming --until: argparse names it too
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--until: ")) from None


def _analysis_end(until: int | None, experiment, now_s: float) -> int | None:
    """Where the analysis stops reading (analyze's now_ms): --until, else the experiment's declared
    end once it has passed (events after an experiment ended are not its effect: its members may
    be in the next one), else None (the last event, up to the wall clock)."""
    if until is not None:
        return until
    if experiment.end is not None and experiment.end_ms <= now_s * 1000:
        return int(experiment.end_ms)
    return None


def _pre_days(text: str) -> float | None:
    """--pre-days: a number of days >= 0, or 'all' (None: the whole history)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of days or 'all', got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of days >= 0 or 'all', got {text!r}")
    return value


def _planned_days(args: argparse.Namespace, experiment) -> int | None:
    """--planned-days, else the experiment's declared window in analysis days, else None."""
    if args.planned_days is not None:
        return args.planned_days
    if experiment.start is not None and experiment.end is not None:
        return max(1, round((experiment.end_ms - experiment.start_ms) / (args.day_seconds * 1000)))
    return None


def _ray_dataset(events, home: Paths, scratch: Path):
    """The log's rows as Parquet on disk, read by Ray Data (on the home's cluster when one runs,
    else a local Ray): Ray Data reads files block by block, rather than shipping one big table."""
    import pyarrow.parquet as pq
    import ray

    from marquee.home import LocalCluster, use_cluster_auth

    scratch.mkdir(parents=True, exist_ok=True)
    pq.write_table(events, scratch / "events.parquet", row_group_size=100_000)
    if not ray.is_initialized():
        cluster = LocalCluster.load(home.home)
        if cluster is not None and cluster.alive():
            use_cluster_auth(home.home)
            cluster.connect()
        else:
            ray.init(num_cpus=2, logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    return str(scratch / "events.parquet")
