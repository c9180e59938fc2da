"""The Ray Serve application: `build_app(args) -> Application`, the only place that calls .bind().

    serve run deployments.app:build_app home=/path/to/home profile=single
    serve run serve.yaml

Profiles are deploy-time options. `single` (one small machine): every stage fused in the gateway
replica (a hop costs more than it gives here), fractional CPUs, bounded queues that answer 503
with Retry-After under overload. `cluster`: candidate generation and the ranker as their own
autoscaling deployments behind DeploymentHandles. The same pipeline and stage objects run in
both (placement.py); `placement` can override the profile's choice.

The deployment classes here are thin: one per stage, each holding its plain-Python stage object
(the gateway: the service and its homepage pipeline; Retrieval: the candidate stage; Ranker: the
scorer) and forwarding to it. Hot values (user_config: `model_version` plus an override of
HomepageConfig) reach every deployment that holds a stage they configure.
The same service under plain uvicorn (`marquee bench serve`'s baselines) is deployments/inprocess.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.catalog import load_catalog
from deployments.gateway import make_api
from deployments.model_holder import ModelHolder
from deployments.page_builder import check
from deployments.page_config import HotValues
from deployments.placement import STAGE_HANDLES, ModelStages
from deployments.ranking import Ranker
from deployments.service import ActorRef, Settings, build_service
from marquee.names import APP_NAME, EVENT_LOG_ACTOR, MEMBER_STATE_ACTOR, NAMESPACE

# Deploy-time options per profile (serve.yaml carries the same values for `serve deploy`).
PROFILES: dict[str, dict[str, Any]] = {
    "single": {
        "placement": "fused",
        "member_state": "local",  # each replica follows the log itself: no actor call per page
        # Two pages at a time per replica (one computes while the other's candidates and ranker run
        # off the event loop; measured when pages still waited on the member-state actor),
        # the rest wait in the replica's FIFO queue: on 2 cores, four pages sharing a replica's
        # GIL all finished late (measured at 8 clients: p99 about 90 ms at 4, 83 ms at 2, for
        # 2-3% less throughput). Small queues on purpose: past ~36 requests in flight a page
        # would wait longer than it takes to compute several, so 503 + Retry-After at once.
        "Gateway": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.25},
                    "max_ongoing_requests": 2, "max_queued_requests": 16,
                    "backpressure_config": {"status_code": 503, "retry_after_s": 1}},
        "Retrieval": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 32},
        "Ranker": {"num_replicas": 1, "ray_actor_options": {"num_cpus": 0.1}, "max_ongoing_requests": 64},
    },
    "cluster": {
        "placement": "split",
        "member_state": "actor",  # one copy of every member's state, wherever the replicas run
        "Gateway": {"autoscaling_config": {"min_replicas": 2, "max_replicas": 8, "target_ongoing_requests": 8},
                    "ray_actor_options": {"num_cpus": 0.5}, "max_ongoing_requests": 32,
                    "max_queued_requests": 256, "backpressure_config": {"status_code": 503, "retry_after_s": 1}},
        "Retrieval": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 16, "target_ongoing_requests": 4},
                      "ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 16},
        "Ranker": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 16},
                   "ray_actor_options": {"num_cpus": 1}, "max_ongoing_requests": 64},
    },
}


class AppArgs(BaseModel):
    """Build-time arguments (`serve run deployments.app:build_app key=value ...`)."""

    model_config = ConfigDict(extra="forbid")

    home: str = ""  # default: MARQUEE_HOME or ./.marquee
    dataset: str = ""  # default: the dataset `marquee up` recorded in HOME/serving.json
    profile: Literal["single", "cluster"] = "single"
    placement: Literal["fused", "split"] | None = None  # default: the profile's
    member_state: Literal["local", "actor"] | None = None  # default: the profile's (member_view.py)
    user_config: dict = {}  # initial hot values: model_version and a HomepageConfig override
    cpu_scale: float = 1.0  # multiplies every replica's num_cpus (run the cluster profile on a laptop)


def _settings(args: AppArgs) -> dict:
    from marquee.home import Paths

    home = args.home or str(Paths().home)
    placement = args.placement or PROFILES[args.profile]["placement"]
    member_state = args.member_state or PROFILES[args.profile]["member_state"]
    settings = Settings(home=str(Path(home).resolve()), dataset=args.dataset, placement=placement,
                        member_state=member_state, hot=args.user_config)
    check(HotValues.parse(args.user_config).page)  # a bad page config fails here, at build
    # hot values travel as user_config (reconfigure), never as constructor arguments
    return {"home": settings.home, "dataset": settings.dataset, "placement": settings.placement,
            "member_state": settings.member_state, "admin_token": settings.admin_token}


def _options(profile: str, name: str, cpu_scale: float) -> dict:
    options = copy.deepcopy(PROFILES[profile][name])
    actor = options.setdefault("ray_actor_options", {})
    actor["num_cpus"] = round(actor.get("num_cpus", 1) * cpu_scale, 4)
    return options


@serve.deployment(name="Gateway")
@serve.ingress()  # the app is built per replica, around its service: __serve_build_asgi_app__
class Gateway:
    """The HTTP ingress and the homepage pipeline; `stages` holds the split placement's stage
    deployments by role (placement.STAGE_HANDLES), and is empty when they run fused here."""

    def __init__(self, settings: dict, stages: dict[str, DeploymentHandle] | None = None):
        self.service, self._reconfigure = build_service(
            Settings(**settings), member_state=ActorRef(MEMBER_STATE_ACTOR, NAMESPACE),
            event_log=ActorRef(EVENT_LOG_ACTOR, NAMESPACE), handles=stages)

    def __serve_build_asgi_app__(self):
        """Serve calls this after __init__: the routes close over this replica's service."""
        return make_api(self.service)

    def reconfigure(self, user_config: dict) -> None:
        self._reconfigure(user_config)


@serve.deployment(name="Retrieval")
class RetrievalDeployment:
    """The candidate stage as its own deployment (split placement): ctx -> Retrieved."""

    def __init__(self, settings: dict):
        s = Settings(**settings)
        self.model = ModelStages.start(s.registry_root, s.dataset, load_catalog(s.dataset), HotValues.parse(s.hot))

    def reconfigure(self, user_config: dict) -> None:
        self.model.apply(HotValues.parse(user_config))  # raises on a bad value: nothing changes

    def __call__(self, ctx):
        return self.model.candidates(ctx)

    def status(self) -> dict:
        """The model this stage serves (the gateway's /healthz in split placement)."""
        return self.model.holder.status()


@serve.deployment(name="Ranker")
class RankerDeployment:
    """The scorer as its own deployment: requests batch into one booster call per version."""

    def __init__(self, settings: dict):
        root = Settings(**settings).registry_root
        # follows the promoted pointer too, so a new version is loaded before requests need it
        self.ranker = Ranker(root, ModelHolder(root).start())

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def score(self, requests: list[tuple[str, Any]]) -> list[Any]:
        return self.ranker.score_many(requests)


# the split placement's stage deployments, by role (placement.STAGE_HANDLES)
STAGE_DEPLOYMENTS = {"candidates": RetrievalDeployment, "scorer": RankerDeployment}
HOT_STAGES = ("candidates",)  # stage deployments that take the hot values (user_config) too


def build_app(args: dict | AppArgs) -> serve.Application:
    """The application for `serve run` / serve.yaml / `marquee up`."""
    args = args if isinstance(args, AppArgs) else AppArgs(**args)
    settings = _settings(args)
    user_config = dict(args.user_config)

    def options(deployment) -> dict:
        return _options(args.profile, deployment.name, args.cpu_scale)

    stages = {}
    if settings["placement"] == "split":
        for role in STAGE_HANDLES:
            deployment = STAGE_DEPLOYMENTS[role]
            hot = {"user_config": user_config} if role in HOT_STAGES else {}
            stages[role] = deployment.options(**options(deployment), **hot).bind(settings)
    return Gateway.options(**options(Gateway), user_config=user_config).bind(settings, stages)


def app_config(args: dict | AppArgs, *, name: str = APP_NAME, route_prefix: str = "/",
               user_config: dict | None = None) -> dict:
    """The declarative config of one app (what serve.yaml holds): build-time args go to
    build_app, hot values to each stateful deployment's user_config, so changing only those is
    an in-place reconfigure of the running replicas, never a restart."""
    args = args if isinstance(args, AppArgs) else AppArgs(**args)
    hot = dict(user_config if user_config is not None else args.user_config)
    build = args.model_dump(exclude={"user_config"}, exclude_defaults=True)
    placement = args.placement or PROFILES[args.profile]["placement"]
    hot_deployments = [Gateway.name] + ([STAGE_DEPLOYMENTS[r].name for r in HOT_STAGES] if placement == "split" else [])
    return {"name": name, "route_prefix": route_prefix, "import_path": "deployments.app:build_app",
            "args": build, "deployments": [{"name": d, "user_config": hot} for d in hot_deployments]}


def serve_config(profile: str = "single", port: int = 8000, host: str = "127.0.0.1") -> dict:
    """The whole `serve deploy` config of a profile: serve.yaml and serve.cluster.yaml are this,
    written out (a test keeps them equal). The home comes from MARQUEE_HOME where the app builds."""
    app = app_config({"profile": profile}, user_config={"model_version": "promoted"})
    hot = {d["name"]: d["user_config"] for d in app["deployments"]}
    placement = PROFILES[profile]["placement"]
    names = [Gateway.name] + ([STAGE_DEPLOYMENTS[r].name for r in STAGE_HANDLES] if placement == "split" else [])
    app["deployments"] = [{"name": n, **_options(profile, n, 1.0), **({"user_config": hot[n]} if n in hot else {})}
                          for n in names]
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port}, "applications": [app]}


def configure_cli(parser) -> None:
    parser.add_argument("--profile", choices=sorted(PROFILES), default="single")
    parser.add_argument("--port", type=int, default=8000)


def cli_main(args) -> int:
    """`marquee serve-config`: print the Serve config of a profile as YAML (for `serve deploy`)."""
    import yaml

    print(CONFIG_HEADER + yaml.safe_dump(serve_config(args.profile, args.port), sort_keys=False), end="")
    return 0


CONFIG_HEADER = """\
# Generated by `marquee serve-config` (tests keep it equal to deployments/app.py PROFILES).
# Deploy with: MARQUEE_HOME=/path/to/home serve deploy <this file>  (after `marquee up` prepared the home)
"""


def deploy(args: dict | AppArgs, port: int, host: str = "127.0.0.1", *, name: str = APP_NAME,
           route_prefix: str = "/", user_config: dict | None = None, timeout_s: float = 180.0) -> str:
    """Start Serve's HTTP proxy on `port` (a running Serve keeps its own port) and apply the app
    declaratively next to the apps already there; wait until it runs; return its base URL.
    Needs ray.init to this cluster."""
    import time

    import ray
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    serve.start(http_options={"host": host, "port": port})
    client = _get_global_client()
    port = client.http_config.port
    apps = {app_name: config.model_dump(exclude_unset=True)
            for app_name, config in ray.get(client._controller.get_app_configs.remote()).items()}
    apps[name] = app_config(args, name=name, route_prefix=route_prefix, user_config=user_config)
    client.deploy_apps(ServeDeploySchema(http_options={"host": host, "port": port},
                                         applications=list(apps.values())))
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(name)
        state = getattr(status, "status", None)
        if state == "RUNNING" and _settled(status):
            break
        if state == "DEPLOY_FAILED" or time.monotonic() > deadline:
            message = getattr(status, "message", "")
            raise RuntimeError(f"Serve app {name!r} did not start ({state}): {message}")
        time.sleep(0.25)
    return f"http://{host}:{port}{route_prefix.rstrip('/')}"


def _settled(status) -> bool:
    """Every deployment of the app is HEALTHY (not still rolling out a new config)."""
    return all(getattr(d, "status", "HEALTHY") == "HEALTHY" for d in status.deployments.values())
