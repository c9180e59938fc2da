"""The `marquee` command. Each subcommand lives in its own module, which provides
`configure_cli(parser)` (its arguments) and `cli_main(args) -> int` (its work); this file only
wires them together, so adding a command never touches another command's code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

# Each loader imports its command's module only when that command runs (keeps --help quick, and
# one command's heavy imports never slow another); the imports are ordinary ones, so the layer
# contract sees every edge.


def _world():
    from producers.world import generate as module
    return module.configure_cli, module.cli_main


def _import_movielens():
    from producers.movielens import importer as module
    return module.configure_cli, module.cli_main


def _features():
    from training import features as module
    return module.configure_cli, module.cli_main


def _eval():
    from training import evaluate as module
    return module.configure_cli, module.cli_main


def _retrain():
    from training import retrain as module
    return module.configure_cli, module.cli_main


def _registry():
    from ops import registry_cli as module
    return module.configure_cli, module.cli_main


def _up():
    from ops.local import up as module
    return module.configure_cli, module.cli_main


def _down():
    from ops.local import up as module
    return module.down_configure_cli, module.down_cli_main


def _serve_config():
    from deployments import app as module
    return module.configure_cli, module.cli_main


def _ope():
    from training import ope as module
    return module.configure_cli, module.cli_main


def _experiment():
    from ops import experiment_cli as module
    return module.configure_cli, module.cli_main


def _simulate():
    from producers.world import traffic as module
    return module.configure_cli, module.cli_main


def _bench(name: str):
    def load():
        if name == "ingest":
            from bench import ingest as module
        elif name == "features":
            from bench import features as module
        elif name == "train":
            from bench import train as module
        elif name == "bandit":
            from bench import bandit as module
        elif name == "ope":
            from bench import ope as module
        else:
            from bench import serve as module
        return module.configure_cli, module.cli_main
    return load


# name -> (loader, one-line help)
COMMANDS: dict[str, tuple[Callable, str]] = {
    "world": (_world, "generate the synthetic world (titles, members, events)"),
    "import-movielens": (_import_movielens, "import a MovieLens dataset into Marquee's layout"),
    "features": (_features, "run the Ray Data feature jobs into the offline store"),
    "eval": (_eval, "offline evaluation: the pipeline and peers on the same split"),
    "retrain": (_retrain, "features -> train -> evaluate -> gate -> register -> promote"),
    "registry": (_registry, "list, promote, roll back or reject model versions"),
    "up": (_up, "start the local system and print where to look"),
    "down": (_down, "stop a system started with `marquee up --detach`"),
    "serve-config": (_serve_config, "print the Ray Serve config (serve.yaml) of a profile"),
    "ope": (_ope, "off-policy evaluation of an artwork policy (Open Bandit Dataset or served logs)"),
    "experiment": (_experiment, "validate the experiments file, report on an experiment, calibrate, power"),
    "simulate": (_simulate, "members of the world call the running system over HTTP (a traffic simulator)"),
}
BENCHMARKS: dict[str, tuple[Callable, str]] = {
    "ingest": (_bench("ingest"), "events/s and ack p99 through the event log actor"),
    "features": (_bench("features"), "feature job: Ray Data against single-process pyarrow"),
    "train": (_bench("train"), "XGBoost via Ray Train against plain xgboost.train, same rows"),
    "serve": (_bench("serve"), "homepage over Serve HTTP against the same code under plain uvicorn"),
    "bandit": (_bench("bandit"), "artwork policies on the bandit environment: regret against the oracle"),
    "ope": (_bench("ope"), "off-policy estimators and the best-estimator rules on synthetic logs with a known value"),
}


def _add(subparsers, name: str, load: Callable, help_text: str, chosen: bool) -> None:
    """Register a subcommand; only the chosen one imports its module (keeps --help quick and
    lets one command's heavy imports never slow another)."""
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    if chosen:
        configure, run = load()
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
