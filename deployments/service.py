"""The gateway's service: the homepage pipeline wired to member state, the event log and the
registry. Built once per process by `build_service`, the same way under Ray Serve (fused or with
stages behind handles) and under plain uvicorn (the in-process baseline)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np

from deployments.artwork import EpsilonGreedyArtwork
from deployments.candidates import Retrieval, RetrievalConfig, Retrieved, source_pool
from deployments.catalog import ServingCatalog, load_catalog
from deployments.contracts import HomepageContext
from deployments.gateway import ApiError, call_with_retry
from deployments.homepage import Homepage, HomepageRequest
from deployments.model_holder import FOLLOW_PROMOTED, ModelHolder
from deployments.ranking import Ranker
from deployments.rows import EditorialSlot, RowBuilder, RowPlan

log = logging.getLogger("marquee.service")
SERVING_FILE = "serving.json"  # written by `marquee up`: which dataset the system serves
TOKEN_FILE = "admin_token"
PLACEMENTS = ("fused", "split")
HEALTH_STAGE_TIMEOUT_S = 2.0  # /healthz asks the retrieval stage for its model; a hung stage must not hang it


@dataclass
class Settings:
    """Build-time settings of the app (deploy-time options live in serve.yaml)."""

    home: str
    dataset: str = ""  # dataset directory; default: what `marquee up` recorded in HOME/serving.json
    placement: str = "fused"
    admin_token: str | None = None  # default: HOME/admin_token
    namespace: str = "marquee"
    hot: dict = field(default_factory=dict)  # initial hot values (same shape as user_config)

    def __post_init__(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}")
        home = Path(self.home)
        if not self.dataset:
            recorded = home / SERVING_FILE
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
        return Path(self.home) / "registry"


def admin_token(home: Path, create: bool = False) -> str | None:
    """The admin bearer token of this home (created by `marquee up`, readable only by its owner)."""
    path = Path(home) / TOKEN_FILE
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip() if path.exists() else None


class HotConfig:
    """Hot values from user_config: model target, candidate-generation settings, artwork epsilon.
    A bad value raises before anything changes, so the old values keep serving."""

    def __init__(self, raw: dict | None = None):
        raw = dict(raw or {})
        unknown = set(raw) - {"model_version", "retrieval", "artwork_epsilon", "editorial"}
        if unknown:
            raise ValueError(f"user_config: unknown key(s) {sorted(unknown)}")
        self.model_version = str(raw.get("model_version", FOLLOW_PROMOTED))
        if self.model_version != FOLLOW_PROMOTED and not (self.model_version.startswith("v") and self.model_version[1:].isdigit()):
            raise ValueError(f"user_config.model_version: expected 'promoted' or vNNNN, got {self.model_version!r}")
        self.retrieval = RetrievalConfig.from_dict(raw.get("retrieval"))
        self.artwork_epsilon = float(raw.get("artwork_epsilon", 0.1))
        if not 0 <= self.artwork_epsilon <= 1:
            raise ValueError(f"user_config.artwork_epsilon: expected 0..1, got {self.artwork_epsilon}")
        slots = raw.get("editorial", [])
        if not isinstance(slots, list):
            raise ValueError("user_config.editorial: expected a list of {row_id, position, title_id}")
        try:  # RowPlan checks that every slot names a row the plan can produce
            self.row_plan = RowPlan(editorial=tuple(EditorialSlot(**slot) for slot in slots))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"user_config.editorial: {exc}") from None


class RetrievalStage:
    """Candidate generation on the holder's current model; rebuilt when the model or the config
    changes (cheap), so a hot swap is picked up by the next request."""

    def __init__(self, holder: ModelHolder, catalog: ServingCatalog, config: RetrievalConfig):
        self.holder, self.catalog, self.config = holder, catalog, config
        self._built: tuple[Any, Any, Retrieval] | None = None
        self._lock = threading.Lock()
        # one pool for every Retrieval this stage builds: a rebuild must not leave threads behind
        self._pool = source_pool()

    def reconfigure(self, config: RetrievalConfig) -> None:
        self.config = config

    def model_for(self, version: str):
        """The model that built features of `version`, while this stage still holds it: a hot
        swap between candidate generation and ranking must not load anything in a request."""
        built = self._built
        if built is not None and built[0].version == version:
            return built[0]
        model = self.holder.model
        return model if model is not None and model.version == version else None

    def __call__(self, ctx: HomepageContext) -> Retrieved:
        model = self.holder.model
        if model is None:
            raise RuntimeError("no model version is loaded yet")
        built = self._built
        if built is None or built[0] is not model or built[1] is not self.config:
            with self._lock:
                built = self._built = (model, self.config,
                                       Retrieval(model, self.catalog, self.config, executor=self._pool))
        return built[2](ctx)


class MarqueeService:
    """Implements deployments.gateway.GatewayService."""

    def __init__(self, settings: Settings, catalog: ServingCatalog, homepage: Homepage,
                 holder: ModelHolder | None, event_log: Any, placement: str,
                 model_status: Callable[[], Awaitable[dict]] | None = None):
        self.settings, self.catalog, self.homepage_stage = settings, catalog, homepage
        self.holder, self.event_log, self.placement = holder, event_log, placement
        self.model_status = model_status  # split placement: the model lives in the retrieval stage
        self.admin_token = settings.admin_token

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
        if self.holder is not None:
            model = self.holder.status()
        elif self.model_status is not None:
            try:
                model = await asyncio.wait_for(self.model_status(), HEALTH_STAGE_TIMEOUT_S)
            except Exception as exc:  # still alive: say what could not be read
                model = {"version": None, "last_error": f"the retrieval stage did not answer ({type(exc).__name__})"}
        else:
            model = {"version": None}
        return {"status": "ok", "placement": self.placement, "model": model, "pid": os.getpid(),
                "titles": len(self.catalog.titles), "dataset": self.settings.dataset}

    def admin(self, action: str, version: str | None = None, options: Any = None) -> dict:
        from actors.registry import Registry, RegistryError, UnknownVersionError

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

    def _retrain(self, options: Any = None) -> dict:
        import shlex

        from marquee.home import Paths
        from models.pipeline_config import PipelineConfig
        from actors.jobs import start_job

        settings = dict(getattr(options, "set", None) or {})
        unknown = sorted(set(settings) - set(PipelineConfig.__dataclass_fields__) - {"engine"})
        if unknown:
            raise ApiError(422, f"set: unknown pipeline setting(s) {unknown}", fields=["set"])
        try:  # the values too, here, not minutes later in the job
            PipelineConfig(**{key: value for key, value in settings.items() if key != "engine"})
        except (TypeError, ValueError) as exc:
            raise ApiError(422, f"set: {exc}", fields=["set"]) from None
        argv = ["--dataset", f"world:{self.settings.dataset}", "--json"]
        argv += [f"--set={key}={json.dumps(value)}" for key, value in settings.items()]
        if getattr(options, "skip_features", False):
            argv.append("--skip-features")
        started = start_job(Paths(Path(self.settings.home)), [shlex.quote(a) for a in argv])
        if started is None:
            raise ApiError(503, "no Ray cluster of `marquee up` runs for this home", {"Retry-After": "5"})
        _, job, dashboard = started
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


def apply_hot(hot: HotConfig, holder: ModelHolder, stage: RetrievalStage) -> None:
    """The model target and candidate settings of a new hot config, for a model-holding stage."""
    stage.reconfigure(hot.retrieval)
    holder.retarget(hot.model_version)
    holder.refresh()


def build_service(settings: Settings, *, member_state: Any, event_log: Any,
                  retrieve: Callable[[HomepageContext], Awaitable[Retrieved]] | None = None,
                  rank: Callable[[str, np.ndarray], Awaitable[np.ndarray]] | None = None,
                  catalog: ServingCatalog | None = None,
                  model_status: Callable[[], Awaitable[dict]] | None = None,
                  ) -> tuple[MarqueeService, Callable[[dict], None]]:
    """The service and its `reconfigure(user_config)`. Fused when `retrieve`/`rank` are None
    (stages run here, on a model holder that follows the registry); split otherwise."""
    hot = HotConfig(settings.hot)
    catalog = catalog or load_catalog(settings.dataset)
    artwork = EpsilonGreedyArtwork(hot.artwork_epsilon)
    holder = None
    stage = None
    if retrieve is None or rank is None:
        holder = ModelHolder(settings.registry_root, hot.model_version).start()
        stage = RetrievalStage(holder, catalog, hot.retrieval)
        ranker = Ranker(settings.registry_root, holder, lookup=stage.model_for)

        def generate_and_rank(ctx):
            retrieved = stage(ctx)
            try:
                retrieved.scores = ranker.score(retrieved.model_version, retrieved.features)
            except Exception:  # left to the ranker stage: it fails again there and is named
                log.exception("fused ranking failed")
            return retrieved

        # The fused stages run in this replica, on one worker thread per page (generation, then
        # ranking): the event loop stays free for other requests and Serve's own calls.
        async def retrieve(ctx):  # noqa: F811
            return await asyncio.to_thread(generate_and_rank, ctx)

        async def rank(version, features):  # noqa: F811
            return await asyncio.to_thread(ranker.score, version, features)

    homepage = Homepage(catalog, RowBuilder(hot.row_plan), artwork, member_reader(member_state), retrieve, rank)
    service = MarqueeService(settings, catalog, homepage, holder, event_log, settings.placement, model_status)

    def reconfigure(user_config: dict) -> None:
        new = HotConfig(user_config)  # raises on a bad value: nothing below changes
        artwork.epsilon = new.artwork_epsilon
        homepage.rows = RowBuilder(new.row_plan)
        if stage is not None:
            apply_hot(new, holder, stage)

    return service, reconfigure
