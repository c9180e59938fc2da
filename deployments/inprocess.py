"""The homepage service under plain uvicorn, without Ray Serve: `bench serve`'s baseline.

Same FastAPI app, same fused stages, same member-state and event-log actors (it joins the home's
Ray cluster as a driver only to reach them); only Serve's proxy, router and replica are absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.inprocess")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--placement", default="fused", choices=["fused"])
    args = parser.parse_args(argv)

    from marquee.home import LocalCluster, use_cluster_auth

    use_cluster_auth(args.home)  # before ray is imported
    import ray
    import uvicorn

    cluster = LocalCluster.load(args.home)
    if cluster is None or not cluster.alive():
        print(f"no Marquee cluster runs for {args.home}: start it with `marquee up --detach`", file=sys.stderr)
        return 2
    ray.init(address=cluster.gcs_address, namespace="marquee", logging_level="ERROR", log_to_driver=False)

    from deployments.gateway import make_api
    from deployments.service import ActorRef, Settings, build_service

    service, _ = build_service(Settings(home=str(args.home.resolve())), member_state=ActorRef("marquee-member-state"),
                               event_log=ActorRef("marquee-event-log"))
    uvicorn.run(make_api(service), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
