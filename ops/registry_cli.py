"""`marquee registry ...`: list, promote, roll back, reject or gc model versions, and show the
catalog the registry serves."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from marquee.home import Paths
from state.registry import Registry, RegistryError

READ_ONLY_COMMANDS = ("list", "history", "catalog")


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=None, help="registry root (default: MARQUEE_HOME/registry)")
    sub = parser.add_subparsers(dest="registry_command", required=True)
    sub.add_parser("list", help="every version with its status and metrics")
    sub.add_parser("history", help="the audit log")
    sub.add_parser("catalog", help="the catalog this registry serves (name and fingerprint)")
    promote = sub.add_parser("promote", help="serve a version")
    promote.add_argument("version")
    promote.add_argument("--reason", default="")
    rollback = sub.add_parser("rollback", help="serve the previously promoted version (or --to)")
    rollback.add_argument("--to", default=None)
    rollback.add_argument("--reason", default="")
    reject = sub.add_parser("reject", help="refuse a candidate")
    reject.add_argument("version")
    reject.add_argument("--reason", required=True)
    gc = sub.add_parser("gc", help="remove old versions")
    gc.add_argument("--keep", type=int, default=10)


def cli_main(args: argparse.Namespace) -> int:
    command = args.registry_command
    registry = Registry(args.root or Paths().registry, read_only=command in READ_ONLY_COMMANDS)
    try:
        if command == "list":
            for m in registry.list():
                print(json.dumps({"version": m.version, "status": m.status, "created": m.created, "metrics": m.metrics}))
        elif command == "history":
            for entry in registry.history():
                print(json.dumps(entry))
        elif command == "catalog":
            catalog = registry.catalog()
            print(json.dumps(catalog.to_dict() if catalog is not None else None))
        elif command == "promote":
            print(registry.promote(args.version, reason=args.reason).version)
        elif command == "rollback":
            print(registry.rollback(to=args.to, reason=args.reason).version)
        elif command == "reject":
            print(registry.reject(args.version, args.reason).version)
        elif command == "gc":
            print(json.dumps(registry.gc(args.keep)))
    except RegistryError as exc:
        print(f"marquee registry: {exc}", file=sys.stderr)
        return 2
    return 0
