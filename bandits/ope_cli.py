"""`marquee ope`: off-policy evaluation with intervals.

`--obd PATH --campaign NAME`: the Bernoulli TS policy's click rate estimated from the Open Bandit
Dataset's random logs, against the rate BTS really had (bandits/obd.py). The evaluation
policy's action probabilities are estimated per position from its own logs over the whole log
(--time-bins 1, the default, as the dataset's authors do: one action distribution per item and
position); --time-bins 0 picks a time-binned estimate by held-out likelihood of BTS's actions. `--logs HOME --policy NAME`
(a candidate judged on Marquee's own served logs, from the server's decision records) is run by
training/ope.py, the `marquee ope` command, which reuses these arguments; this module's cli_main
evaluates --obd only (the bandits layer cannot reach a home's event log).
"""

from __future__ import annotations

import argparse
import json
import sys

from bandits.obd import evaluate_bts_from_random


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--obd", metavar="PATH", default=None,
                        help="Open Bandit Dataset root (holding random/NAME/NAME.csv and bts/NAME/NAME.csv)")
    parser.add_argument("--campaign", metavar="NAME", default="all", help="campaign folder name (default all)")
    parser.add_argument("--logs", metavar="HOME", default=None,
                        help="a Marquee home whose served logs (the server's decision records, joined to "
                             "impressions and plays) judge --policy")
    parser.add_argument("--policy", metavar="NAME", default=None, help="policy to evaluate on --logs")
    parser.add_argument("--seed", type=int, default=7, help="seeds folds and the bootstrap")
    parser.add_argument("--bootstrap", type=int, default=2000, metavar="N", help="bootstrap resamples")
    parser.add_argument("--folds", type=int, default=5, metavar="K",
                        help="folds for cross-fitting and for choosing the models' settings")
    parser.add_argument("--time-bins", type=int, default=1, metavar="N",
                        help="time bins of the evaluation policy's estimated action probabilities "
                             "(default 1: per position over the whole log, as the issue and the "
                             "dataset's authors estimate them; 0: chosen by held-out log-likelihood "
                             "of its logged actions, which can follow a policy that changes)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def cli_main(args: argparse.Namespace) -> int:
    if args.logs is not None or args.policy is not None:
        print("marquee ope: --logs/--policy (a policy judged on the server's decision records) is run by "
              "training.ope, the `marquee ope` command; bandits.ope_cli evaluates --obd only", file=sys.stderr)
        return 2
    if args.obd is None:
        print("marquee ope: give --obd PATH (Open Bandit Dataset root)", file=sys.stderr)
        return 2
    try:
        report = evaluate_bts_from_random(args.obd, args.campaign, seed=args.seed, n_resamples=args.bootstrap,
                                          n_folds=args.folds, n_bins=args.time_bins or None,
                                          progress=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as exc:
        print(f"marquee ope: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, sort_keys=True, allow_nan=False))
        return 0
    print(f"campaign {report['campaign']}: observed bts click rate {report['observed_rate']:.5f} "
          f"({report['n_bts']} rows); estimated from {report['n_random']} random rows:")
    for name, entry in report["estimators"].items():
        relative = entry["relative_error"]
        shown = f"{relative:.3f}" if relative is not None else "n/a"
        print(f"  {name:6s} {entry['estimate']:.5f}  95% [{entry['ci_low']:.5f}, {entry['ci_high']:.5f}]  "
              f"relative error {shown}{'  <- best' if name == report['best'] else ''}")
    print(f"best rule: {report['best_rule']}")
    return 0
