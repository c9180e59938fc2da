"""`marquee ope`: off-policy evaluation with intervals, of a logged policy or a candidate.

`--obd PATH --campaign NAME`: the Open Bandit Dataset's Bernoulli TS from its random logs
(bandits/ope_cli.py, unchanged). `--logs HOME --policy NAME [--param KEY=JSON ...]`: a candidate
artwork policy judged on HOME's own served-and-rewarded logs before it meets members: trained on
the earlier trials (--train-share), estimated on the later ones (training/served_ope.py says how).
"""

from __future__ import annotations

import argparse
import json
import sys

from bandits import ope_cli
from bandits.policies import POLICIES
from marquee.settings import parse_assignments
from training.served_ope import DEFAULT_TRAIN_SHARE, candidate_settings, evaluate_home


def configure_cli(parser: argparse.ArgumentParser) -> None:
    ope_cli.configure_cli(parser)
    parser.add_argument("--param", action="append", default=[], metavar="KEY=JSON",
                        help="a parameter of the --policy (repeatable), e.g. --param epsilon=0.05 "
                             "--param arm_model='\"shared\"'")
    parser.add_argument("--train-share", type=float, default=DEFAULT_TRAIN_SHARE, metavar="F",
                        help="share of the served trials, earliest first, the candidate learns from before "
                             f"it is judged on the rest (default {DEFAULT_TRAIN_SHARE})")
    parser.add_argument("--update-every", type=int, default=None, metavar="N",
                        help="training trials per policy update (default: the nearline learner's)")
    parser.add_argument("--dataset", metavar="DIR", default=None,
                        help="the catalog the logs were served from (default: HOME/serving.json's dataset)")


def cli_main(args: argparse.Namespace) -> int:
    if args.logs is None:
        if args.policy is not None:
            return _refuse(f"--policy needs --logs HOME (a home whose served logs judge it; one of "
                           f"{', '.join(POLICIES)})")
        return ope_cli.cli_main(args)  # --obd, or its own message when that is missing too
    if args.obd is not None:
        return _refuse("give --obd PATH or --logs HOME, not both")
    if args.policy is None:
        return _refuse(f"--logs needs --policy NAME, one of {', '.join(POLICIES)}")
    try:
        settings = candidate_settings(args.policy, parse_assignments(args.param, option="--param"),
                                      args.update_every)
        report = evaluate_home(args.logs, settings, dataset=args.dataset, train_share=args.train_share,
                               seed=args.seed, n_resamples=args.bootstrap, n_folds=args.folds,
                               progress=lambda m: print(m, file=sys.stderr, flush=True))
    except (ValueError, FileNotFoundError) as exc:
        return _refuse(str(exc))
    if args.json:
        print(json.dumps(report, sort_keys=True, allow_nan=False))
        return 0
    print(f"{report['policy']} {json.dumps(report['candidate']['params'], sort_keys=True)} on {report['home']}: "
          f"trained on {report['n_train']} trials, judged on {report['n_eval']} "
          f"({report['rewards']['eval']} rewards; effective sample size "
          f"{report['weights']['effective_sample_size']:.0f})")
    print(f"  served  {report['logged_rate']:.5f}  (the logging policy's observed reward rate)")
    for name, entry in report["estimators"].items():
        print(f"  {name:6s}  {entry['estimate']:.5f}  95% [{entry['ci_low']:.5f}, {entry['ci_high']:.5f}]"
              f"{'  <- best' if name == report['best'] else ''}")
    print(f"best rule: {report['best_rule']}")
    return 0


def _refuse(message: str) -> int:
    print(f"marquee ope: {message}", file=sys.stderr)
    return 2
