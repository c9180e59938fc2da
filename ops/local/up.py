"""`marquee up` / `marquee down`: bring the whole local system up from nothing, or stop it.

Up is idempotent and cached: it starts a Ray head for this home (ops.local.cluster), builds the
default world (or imports MovieLens) only if it is missing, runs the feature job only if no
feature version exists for that dataset, starts the stateful actors (event log, member state)
as detached named actors, trains and promotes a model only if none is promoted,
deploys the Serve app on `--port`, and prints where to look.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from marquee.dataset_spec import DatasetSpec
from marquee.home import Paths
from marquee.names import MEMBER_RECENT_LIMIT, NAMESPACE


def configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="world",
                        help="'world' (the synthetic default) or 'movielens:PATH' (either layout)")
    parser.add_argument("--home", type=Path, default=None,
                        help="state directory (default MARQUEE_HOME or ./.marquee)")
    parser.add_argument("--detach", action="store_true",
                        help="return once everything is up; stop later with `marquee down`")
    parser.add_argument("--rebuild", action="store_true",
                        help="regenerate the dataset and features even if cached")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic world")
    parser.add_argument("--port", type=int, default=None,
                        help="HTTP port of the homepage API (default: 8000 if free, else a free one)")
    parser.add_argument("--profile", choices=["single", "cluster"], default="single",
                        help="Serve profile: 'single' (one machine, stages fused) or 'cluster'")


def cli_main(args: argparse.Namespace) -> int:
    paths = Paths(args.home) if args.home else Paths()
    started = time.monotonic()
    system = bring_up(paths, data=args.data, rebuild=args.rebuild, seed=args.seed, port=args.port,
                      profile=args.profile)
    system["ready_s"] = round(time.monotonic() - started, 1)
    _print_where_to_look(system)
    if args.detach:
        return 0
    print("Marquee is running. Press Ctrl-C to stop.", flush=True)
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    signal.sigwait(stop_signals)
    print("Stopping Marquee...", flush=True)
    import ray

    ray.shutdown()  # leave the cluster before its head goes, or the driver dies with it
    _stop(paths)
    print("Stopped.", flush=True)
    return 0


def down_configure_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, default=None, help="state directory of the system")


def down_cli_main(args: argparse.Namespace) -> int:
    paths = Paths(args.home) if args.home else Paths()
    if _stop(paths):
        print(f"Stopped the Marquee cluster of {paths.home}.")
    else:
        print(f"No Marquee cluster was running for {paths.home}.")
    return 0


def _stop(paths: Paths) -> bool:
    from ops.local.cluster import stop_head

    return stop_head(paths.home)


def dataset_dir(paths: Paths, data: str) -> Path:
    try:
        return DatasetSpec.parse(data, option="--data").directory(paths)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def ensure_dataset(paths: Paths, data: str, *, rebuild: bool, seed: int) -> Path:
    """The dataset directory for `data`, built only when missing (or asked to rebuild)."""
    out = dataset_dir(paths, data)
    if (out / "manifest.json").exists() and not rebuild:
        return out
    if data == "world":
        from producers.world.generate import generate_world

        print(f"Generating the synthetic world into {out} ...", flush=True)
        generate_world(seed=seed, out=out, progress=True)
    else:
        from producers.movielens.importer import import_movielens

        location = DatasetSpec.parse(data, option="--data").location
        print(f"Importing MovieLens from {location} into {out} ...", flush=True)
        import_movielens(location, out)
    return out


def bring_up(paths: Paths, *, data: str = "world", rebuild: bool = False, seed: int = 7,
             port: int | None = None, profile: str = "single", serve_app: bool = True) -> dict:
    """Start (or reuse) every part of the local system; returns what to print."""
    from marquee.home import use_cluster_auth
    from ops.local.cluster import record_head_node, start_head

    use_cluster_auth(paths.home)  # before ray is imported: Ray reads its auth mode once
    import ray

    dataset = ensure_dataset(paths, data, rebuild=rebuild, seed=seed)
    cluster = start_head(paths.home)
    cluster.connect(NAMESPACE)
    record_head_node(paths.home, ray.get_runtime_context().get_node_id())
    system = prepare_system(paths, dataset, rebuild=rebuild)
    system.update({"ray_address": cluster.gcs_address, "dashboard": cluster.dashboard_url})
    if serve_app:
        from deployments.app import deploy
        from ops.local.ports import free_port, port_is_free

        port = port or (8000 if port_is_free(8000) else free_port())
        print(f"Deploying the homepage app (profile {profile}) on port {port} ...", flush=True)
        system["url"] = deploy({"home": str(paths.home), "dataset": str(dataset), "profile": profile}, port)
        system["profile"] = profile
    return system


def prepare_system(paths: Paths, dataset: Path, *, rebuild: bool = False, train_overrides: dict | None = None) -> dict:
    """Everything but the cluster and the app, on the connected Ray cluster: features, actors,
    a promoted model, the admin token and HOME/serving.json."""
    import ray

    from actors.events import start_event_log
    from actors.bandit_learner import start_bandit_learner
    from actors.member_state import start_member_state
    from models.bundle import DatasetIdentity
    from state.registry import Registry, RegistryError
    from deployments.service import admin_token
    from marquee.durable import write_atomic
    from training.features import run_feature_job

    features_dir = paths.features / dataset.name
    version = None if rebuild else _feature_version(features_dir)
    if version is None:
        print(f"Running the feature job (Ray Data) into {features_dir} ...", flush=True)
        version = run_feature_job(dataset, features_dir, engine="ray").version
    event_log = start_event_log(paths.event_log, lifetime="detached")
    if ray.get(event_log.last_seq.remote()) < 0:
        # The log is the memory of record: history enters it once, live events follow it.
        print("Loading the dataset's history into the event log ...", flush=True)
        ray.get(event_log.import_events_dir.remote(str(dataset / "events")))
    member_state = start_member_state(
        paths.member_state, log_handle=event_log, titles_path=dataset / "titles.parquet",
        lifetime="detached", recent_limit=MEMBER_RECENT_LIMIT)
    applied = ray.get(member_state.sync.remote())
    # the artwork bandit learns nearline from what is served (decisions joined to plays)
    start_bandit_learner(paths.bandit_learner, event_log, paths.bandit_store, dataset, lifetime="detached")
    registry = Registry(paths.registry)
    try:  # one home serves one catalog: its models rank that catalog's titles
        registry.bind_catalog(DatasetIdentity.of_dataset_dir(dataset), reason="marquee up")
    except RegistryError as exc:
        raise SystemExit(f"marquee up: {exc}") from None
    missing = registry.why_not_servable()  # nothing promoted, or a previous-format version
    if missing is not None:
        from training.retrain import retrain

        print(f"Training a model (Ray Train): {missing} ...", flush=True)
        report = retrain(f"world:{dataset}", paths=paths, engine="ray", run_features=False,
                         config_overrides=train_overrides, progress=False)
        if not report.promoted:
            raise SystemExit(f"marquee up: the first model was not promoted: {report.gate}")
    token = admin_token(paths.home, create=True)
    write_atomic(paths.serving_record, json.dumps({"dataset": str(dataset)}).encode())
    manifest = json.loads((dataset / "manifest.json").read_text())
    return {
        "home": str(paths.home),
        "dataset": str(dataset),
        "dataset_source": manifest.get("source"),
        "events": manifest.get("events"),
        "features_version": version,
        "member_state_seq": applied,
        "model_version": registry.promoted_version(),
        "admin_token_file": str(paths.admin_token),
        "admin_token_set": token is not None,
    }


def _feature_version(features_dir: Path) -> str | None:
    """The complete feature version already in `features_dir`, if any (LATEST is written last)."""
    from features.offline_store import FeatureStoreError, read_manifest

    try:
        return read_manifest(features_dir)["version"]
    except (FeatureStoreError, FileNotFoundError):
        return None


def _print_where_to_look(system: dict) -> None:
    url = system.get("url")
    lines = ["", f"Marquee is up ({system['ready_s']} s)."]
    if url:
        lines += [
            f"  Homepage API      {url}/v1/homepage?member_id=1",
            f"  API docs          {url}/docs",
            f"  Health            {url}/healthz",
        ]
    lines += [
        f"  Ray dashboard     {system['dashboard']}",
        f"  Ray address       {system['ray_address']}  (ray.init(address=..., namespace={NAMESPACE!r}))",
        f"  Dataset           {system['dataset']}  ({system['dataset_source']}, {system['events']} events)",
        f"  Features          version {system['features_version']}",
        f"  Model             {system.get('model_version')}",
        f"  Admin token       {system['admin_token_file']}  (Authorization: Bearer <token>)",
        f"  State             {system['home']}",
        "  Stop              marquee down   (or Ctrl-C when not detached)",
        "",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(argparse.Namespace()))
