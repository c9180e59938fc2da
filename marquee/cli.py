"""The `marquee` command. Each subcommand lives in its own module, which provides
`configure_cli(parser)` (its arguments) and `cli_main(args) -> int` (its work); this file only
wires them together, so adding a command never touches another command's code."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "world": ("marquee.world", "generate the synthetic world (titles, members, events)"),
    "import-movielens": ("marquee.movielens", "import a MovieLens dataset into Marquee's layout"),
    "features": ("training.features", "run the Ray Data feature jobs into the offline store"),
    "eval": ("training.evaluate", "offline evaluation: the pipeline and peers on the same split"),
    "retrain": ("training.retrain", "features -> train -> evaluate -> gate -> register -> promote"),
    "registry": ("actors.registry", "list, promote, roll back or reject model versions"),
    "up": ("marquee.up", "start the local system and print where to look"),
    "down": ("marquee.up:down", "stop a system started with `marquee up --detach`"),
    "serve-config": ("deployments.app", "print the Ray Serve config (serve.yaml) of a profile"),
}
BENCHMARKS: dict[str, tuple[str, str]] = {
    "ingest": ("bench.ingest", "events/s and ack p99 through the event log actor"),
    "features": ("bench.features", "feature job: Ray Data against single-process pyarrow"),
    "train": ("bench.train", "XGBoost via Ray Train against plain xgboost.train, same rows"),
    "serve": ("bench.serve", "homepage over Serve HTTP against the same code under plain uvicorn"),
}


def _load(spec: str):
    module_name, _, prefix = spec.partition(":")
    module = importlib.import_module(module_name)
    configure = getattr(module, f"{prefix}_configure_cli" if prefix else "configure_cli")
    run = getattr(module, f"{prefix}_cli_main" if prefix else "cli_main")
    return configure, run


def _add(subparsers, name: str, spec: str, help_text: str, chosen: bool) -> None:
    """Register a subcommand; only the chosen one imports its module (keeps --help quick and
    lets one command's heavy imports never slow another)."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    if chosen:
        configure, run = _load(spec)
        configure(parser)
        parser.set_defaults(_run=run)


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    command = words[0] if words else None
    benchmark = words[1] if len(words) > 1 and command == "bench" else None
    parser = argparse.ArgumentParser(
        prog="marquee", description="Marquee: personalized homepages on a Ray cluster."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (spec, help_text) in COMMANDS.items():
        _add(subparsers, name, spec, help_text, chosen=name == command)
    bench = subparsers.add_parser(
        "bench", help="benchmarks (one JSON object each, baseline in the same run)",
        description="Benchmarks: each prints one JSON object and runs its baseline in the same run.",
    )
    bench_sub = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK")
    for name, (spec, help_text) in BENCHMARKS.items():
        _add(bench_sub, name, spec, help_text, chosen=name == benchmark)
    bench.set_defaults(_run=lambda args: bench.print_help() or 2)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
