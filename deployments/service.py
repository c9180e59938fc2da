"""The gateway's service: the homepage pipeline wired to member state, the event log and the
registry. Built once per process by `build_service`, the same way under Ray Serve (fused or with
stages behind handles: placement.py) and under plain uvicorn (the in-process baseline). Its
`reconfigure(user_config)` rebuilds the pipeline from the new hot values and swaps it in whole;
a bad value raises before anything changes, so the old pipeline keeps serving."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from deployments.catalog import ServingCatalog, load_catalog
from deployments.gateway import ApiError, call_with_retry
from deployments.homepage import Homepage, HomepageRequest, Stages
from bandits.store import PolicyStore
from deployments.artwork import BanditServing
from deployments.assignment import ExperimentRouter, ExperimentsFile, override_validator
from deployments.decisions import DecisionRecorder
from deployments.member_view import MEMBER_STATE_SOURCES, LocalMemberView
from deployments.page_builder import build_homepage
from deployments.page_config import HotValues
from deployments.placement import PLACEMENTS
from marquee.home import Paths

log = logging.getLogger("marquee.service")
HEALTH_STAGE_TIMEOUT_S = 2.0  # /healthz asks the retrieval stage for its model; a hung stage must not hang it


@dataclass
class Settings:
    """Build-time settings of the app (deploy-time options live in serve.yaml)."""

    home: str
    dataset: str = ""  # dataset directory; default: what `marquee up` recorded in HOME/serving.json
    placement: str = "fused"
    member_state: str = "local"  # MEMBER_STATE_SOURCES: this process's own view, or the actor (member_view.py)
    admin_token: str | None = None  # default: HOME/admin_token
    namespace: str = "marquee"
    hot: dict = field(default_factory=dict)  # initial hot values (same shape as user_config)
    experiments_file: str = ""  # default: HOME/experiments.yaml (followed: a hot value)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {tuple(PLACEMENTS)}, got {self.placement!r}")
        if self.member_state not in MEMBER_STATE_SOURCES:
            raise ValueError(f"member_state must be one of {MEMBER_STATE_SOURCES}, got {self.member_state!r}")
        home = Path(self.home)
        if not self.dataset:
            recorded = Paths(home).serving_record
            if not recorded.exists():
                raise ValueError(f"no dataset given and {recorded} does not exist: run `marquee up` first "
                                 "or pass dataset=DIR")
            self.dataset = json.loads(recorded.read_text())["dataset"]
        if not (Path(self.dataset) / "manifest.json").exists():
            raise ValueError(f"dataset {self.dataset} is not a Marquee dataset (no manifest.json)")
        if self.admin_token is None:
            self.admin_token = admin_token(home)

    @property
    def registry_root(self) -> Path:
        return Paths(Path(self.home)).registry


def admin_token(home: Path, create: bool = False) -> str | None:
    """The admin bearer token of this home (created by `marquee up`, readable only by its owner)."""
    path = Paths(Path(home)).admin_token
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip() if path.exists() else None


class MarqueeService:
    """Implements deployments.gateway.GatewayService."""

    def __init__(self, settings: Settings, catalog: ServingCatalog, homepage: Homepage | ExperimentRouter,
                 stages: Stages, event_log: Any):
        self.settings, self.catalog, self.homepage_stage = settings, catalog, homepage
        self.stages, self.event_log, self.placement = stages, event_log, settings.placement
        self.admin_token = settings.admin_token
        self._retrain_job: tuple[Any, str] | None = None  # (job client, id) of the last retrain submitted
        self.decisions: DecisionRecorder | None = None  # where each page's decision record goes

    async def homepage(self, request: HomepageRequest) -> dict:
        return await self.homepage_stage(request)

    def title(self, title_id: int) -> dict | None:
        info = self.catalog.titles.get(title_id)
        if info is None:
            return None
        return {"title_id": info.title_id, "name": info.name, "genres": list(info.genres),
                "maturity": info.maturity, "countries": sorted(info.countries), "series_id": info.series_id,
                "release_date_ms": info.release_date_ms, "artwork": list(self.catalog.artwork.get(title_id, ()))}

    def genres(self) -> tuple[str, ...]:
        return self.catalog.genres

    def has_title(self, title_id: int) -> bool:
        return title_id in self.catalog.titles

    async def append_events(self, events: list[dict]) -> dict:
        from actors.events import result_as_dict

        log_handle = self.event_log.get() if isinstance(self.event_log, ActorRef) else self.event_log
        if log_handle is None:
            raise ApiError(503, "the event log is not running", {"Retry-After": "5"})
        result = await call_with_retry(lambda: log_handle.append.remote(events))  # an ObjectRef awaits
        return result_as_dict(result)  # the gateway validated every event: `rejected` is normally empty

    async def health(self) -> dict:
        try:  # fused: this replica's model holder; split: the retrieval stage's
            model = await asyncio.wait_for(self.stages.model_status(), HEALTH_STAGE_TIMEOUT_S)
        except Exception as exc:  # still alive: say what could not be read
            model = {"version": None, "last_error": f"the retrieval stage did not answer ({type(exc).__name__})"}
        health = {"status": "ok", "placement": self.placement, "model": model, "pid": os.getpid(),
                  "titles": len(self.catalog.titles), "dataset": self.settings.dataset}
        if isinstance(self.homepage_stage, ExperimentRouter):
            health["experiments"] = self.homepage_stage.status()
        return health

    def admin(self, action: str, version: str | None = None, options: Any = None) -> dict:
        from state.registry import Registry, RegistryError, UnknownVersionError

        registry = Registry(self.settings.registry_root)
        try:
            if action == "list":
                return {"promoted": registry.promoted_version(),
                        "versions": [v.to_dict() for v in registry.list()]}
            if action == "promote":
                return {"promoted": registry.promote(version, reason="admin API").version}
            if action == "rollback":
                return {"promoted": registry.rollback(to=version, reason="admin API").version}
            if action == "retrain":
                return self._retrain(options)
        except UnknownVersionError as exc:
            raise ApiError(404, f"unknown model version: {exc}") from None
        except RegistryError as exc:
            raise ApiError(409, str(exc)) from None
        raise ApiError(404, f"unknown admin action {action!r}")

    def _running_retrain(self) -> str | None:
        """The id of the retrain job this replica submitted, while it has not finished."""
        if self._retrain_job is None:
            return None
        client, job = self._retrain_job
        try:
            if not client.get_job_status(job).is_terminal():
                return job
        except Exception:  # the cluster went away: the job is not running any more
            pass
        self._retrain_job = None
        return None

    def _retrain(self, options: Any = None) -> dict:
        import shlex

        from actors.jobs import start_job
        from marquee.home import Paths
        from marquee.settings import from_overrides
        from models.pipeline_config import PipelineConfig

        settings = dict(getattr(options, "set", None) or {})
        try:  # unknown keys and bad values refused here, not minutes later in the job
            from_overrides(PipelineConfig, settings)
        except ValueError as exc:
            raise ApiError(422, f"set: {exc}", fields=["set"]) from None
        running = self._running_retrain()
        if running is not None:
            raise ApiError(409, f"retrain job {running} is still running: one retrain at a time")
        argv = ["--dataset", f"world:{self.settings.dataset}", "--json"]
        argv += [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]
        if getattr(options, "skip_features", False):
            argv.append("--skip-features")
        started = start_job(Paths(Path(self.settings.home)), [shlex.quote(a) for a in argv])
        if started is None:  # not a passing outage: no job cluster will appear by retrying
            raise ApiError(409, "no Ray cluster of `marquee up` runs for this home: retraining needs "
                                "`marquee up --detach`")
        client, job, dashboard = started
        self._retrain_job = (client, job)
        return {"job_id": job, "dashboard": dashboard, "status": "submitted", "argv": argv}


class ActorRef:
    """A named actor looked up when first needed, and again after a failed lookup: a replica
    that starts before member state (or while it restarts) finds it later instead of never."""

    def __init__(self, name: str, namespace: str = "marquee", handle: Any = None):
        self.name, self.namespace, self._handle = name, namespace, handle

    def get(self) -> Any:
        if self._handle is None:
            import ray

            try:
                self._handle = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                return None
        return self._handle


def member_reader(member_state: Any) -> Callable[[int], Awaitable[Any]]:
    async def read(member_id: int):
        handle = member_state.get() if isinstance(member_state, ActorRef) else member_state
        if handle is None:
            raise LookupError("member state is not running")  # named in `degraded`
        return await handle.get.remote(member_id)
    return read


def build_service(settings: Settings, *, member_state: Any, event_log: Any,
                  handles: Mapping[str, Any] | None = None, catalog: ServingCatalog | None = None,
                  ) -> tuple[MarqueeService, Callable[[dict], None]]:
    """The service and its `reconfigure(user_config)`. `settings.placement` says where the
    candidate and scoring stages run; `handles` are the split placement's stage deployments;
    `settings.member_state` whether pages read `member_state` (the actor) or this process's own
    follower of `event_log`."""
    hot = HotValues.parse(settings.hot)
    catalog = catalog or load_catalog(settings.dataset)
    stages, apply_to_stages = PLACEMENTS[settings.placement](settings.registry_root, settings.dataset, catalog, hot,
                                                             dict(handles or {}))
    def log_handle() -> Any:
        return event_log.get() if isinstance(event_log, ActorRef) else event_log

    member = (LocalMemberView(settings.home, settings.dataset, log_handle) if settings.member_state == "local"
              else member_reader(member_state))
    # the replica's learned artwork state, kept across reconfigures, following the learner's store
    bandit = BanditServing(catalog).follow(PolicyStore(Paths(Path(settings.home)).bandit_store))
    recorder = DecisionRecorder(log_handle)

    def build(config, interleaving_experiment=None) -> Homepage:
        return build_homepage(config, catalog, stages, member, bandit=bandit, record=recorder.record,
                              interleaving_experiment=interleaving_experiment)

    current = {"page": hot.page}  # the base config the experiments file's variants are checked against
    experiments = ExperimentsFile(settings.experiments_file or Paths(Path(settings.home)).experiments,
                                  override_validator(lambda: current["page"])).follow()
    router = ExperimentRouter(experiments, build(hot.page), build, hot.page, recorder.record)
    service = MarqueeService(settings, catalog, router, stages, event_log)
    service.decisions = recorder

    def reconfigure(user_config: dict) -> None:
        new = HotValues.parse(user_config)  # raises on a bad value: nothing below changes
        homepage = build(new.page)
        apply_to_stages(new)
        current["page"] = new.page
        router.rebase(homepage, new.page)

    return service, reconfigure
