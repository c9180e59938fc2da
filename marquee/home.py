"""A Marquee home: where it is, every file in it named once, and the record of its local Ray
head (read by every layer that must reach that cluster; started and stopped by ops.local.cluster)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def data_root() -> Path:
    """Where shared datasets (MovieLens, Open Bandit) live: MARQUEE_DATA or ../shared/data."""
    return Path(os.environ.get("MARQUEE_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def home_root() -> Path:
    """Where Marquee keeps its own state (worlds, event log, features, models): MARQUEE_HOME."""
    return Path(os.environ.get("MARQUEE_HOME", PROJECT_ROOT / ".marquee"))


@dataclass(frozen=True)
class Paths:
    """The on-disk layout of one Marquee home; every component finds its files here."""

    home: Path = field(default_factory=home_root)

    @property
    def world(self) -> Path:
        return self.home / "world"

    @property
    def event_log(self) -> Path:
        return self.home / "eventlog"

    @property
    def member_state(self) -> Path:
        return self.home / "member_state"

    @property
    def features(self) -> Path:
        return self.home / "features"

    @property
    def registry(self) -> Path:
        return self.home / "registry"

    @property
    def bandit_store(self) -> Path:
        """The artwork policy's published versions (bandits/store.py): what replicas serve."""
        return self.home / "bandits"

    @property
    def experiments(self) -> Path:
        """The experiments file (experiments/spec.py): every gateway replica follows it."""
        return self.home / "experiments.yaml"

    @property
    def bandit_learner(self) -> Path:
        """The nearline learner's checkpoint (actors/bandit_learner.py)."""
        return self.home / "bandit_learner"

    @property
    def cluster_record(self) -> Path:
        return self.home / "cluster.json"

    @property
    def ray_auth_token(self) -> Path:
        return self.home / "ray_auth_token"

    @property
    def head_node_id(self) -> Path:
        return self.home / "head_node_id"

    @property
    def head_log(self) -> Path:
        return self.home / "ray-head.log"

    @property
    def admin_token(self) -> Path:
        return self.home / "admin_token"

    @property
    def serving_record(self) -> Path:
        """Which dataset the running system serves (written by `marquee up`)."""
        return self.home / "serving.json"

    def movielens(self, source: str | Path) -> Path:
        """Where a MovieLens copy at `source` is imported inside this home."""
        return self.home / "movielens" / Path(source).resolve().name


# Serve's throughput profile and its HAProxy ingress (measured: 69 -> 128 pages/s at 8 clients),
# unless the environment already sets them. HAProxy's own request metrics are off: with them on,
# HAProxy writes a syslog line per request that its manager actor parses in Python (measured
# 0.13-0.23 ms of CPU per page against 0.03 off); with them off each replica records the same
# serve_num_http_requests / serve_http_request_latency_ms families in process
# (ray/serve/_private/replica.py: _should_emit_request_ingress_metrics).
SERVE_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
             "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0"}


class ClusterError(RuntimeError):
    """The local head could not be started or reached."""


@dataclass
class LocalCluster:
    pid: int
    gcs_address: str
    dashboard_url: str
    temp_dir: str
    home: str

    @property
    def state_file(self) -> Path:
        return Paths(Path(self.home)).cluster_record

    def alive(self) -> bool:
        import psutil

        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def save(self) -> None:
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, self.state_file)

    def connect(self, namespace: str | None = None, attempts: int = 3, pause_s: float = 2.0) -> None:
        """`ray.init` as a driver of this head, tried again after a failure: a head that just
        opened its port can still time out the driver's node lookup on a loaded machine (seen
        once in CI right after a restart). The last failure is raised as it came."""
        import time

        import ray

        if ray.is_initialized():  # a session this call did not open is not ours to shut down
            raise RuntimeError(f"this process is already connected to a Ray cluster; connect to "
                               f"{self.gcs_address} from a fresh process (or ray.shutdown() first)")
        for attempt in range(1, attempts + 1):
            try:
                ray.init(address=self.gcs_address, namespace=namespace, logging_level="ERROR", log_to_driver=False)
                return
            except (ConnectionError, RuntimeError):
                ray.shutdown()  # leave nothing half-connected for the next attempt
                if attempt == attempts or not self.alive():
                    raise
                time.sleep(pause_s)

    @classmethod
    def load(cls, home: Path) -> "LocalCluster | None":
        path = Paths(Path(home)).cluster_record
        if not path.exists():
            return None
        return cls(**json.loads(path.read_text()))



def auth_env(home: Path) -> dict[str, str]:
    """Ray's token authentication for this home's cluster: our own token file, so the head and
    every client of it (this process, `marquee down`, scripts) agree without touching ~/.ray."""
    import secrets

    if Path(home).exists() and not Path(home).is_dir():
        raise NotADirectoryError(f"MARQUEE_HOME {home} is a file, not a directory: point MARQUEE_HOME "
                                 "at a directory (it is created if missing)")
    token_file = Paths(Path(home)).ray_auth_token
    if not token_file.exists():
        token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}


def use_cluster_auth(home: Path) -> None:
    """Set this process's environment so ray.init can authenticate to the home's head."""
    os.environ.update(auth_env(home))
