"""cluster.yaml is a Ray cluster launcher config that Ray itself accepts, and it does what the
README says: a head plus an autoscaling CPU worker type, this project installed on every node,
Serve's env as `marquee up` sets it, the shared home mounted, and the Serve cluster profile
deployed with `serve deploy serve.cluster.yaml`.

Validation is Ray's own, in the order `ray up` runs it (autoscaler/_private/commands.py
_bootstrap_config): prepare_config (defaults filled, setup commands merged per node type), then
validate_config (the ray-schema.json shipped with the installed Ray, plus its cross-field checks).
Only the cloud calls that follow (credentials, instance lookups) are not made here.
"""

from __future__ import annotations

import copy
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

import ops.local.up as up
from marquee.home import SERVE_ENV
from marquee.names import APP_NAME
from multinode_scenario import CLUSTER_SERVE_ENV  # what the multi-node test runs Serve with

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster.yaml"
SERVE_CLUSTER = ROOT / "serve.cluster.yaml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(CLUSTER.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def test_rays_own_validation_accepts_it(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_rays_validation_bites_on_a_wrong_field(raw):
    """The check above can fail: the same file with a misspelt field is refused by the schema."""
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["cpu_worker"]["min_worker"] = broken["available_node_types"]["cpu_worker"].pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_a_head_and_an_autoscaling_cpu_worker_type(prepared):
    types = prepared["available_node_types"]
    workers = [name for name in types if name != prepared["head_node_type"]]
    assert workers == ["cpu_worker"]
    worker = types["cpu_worker"]
    assert worker["max_workers"] > worker["min_workers"] >= 0, "the worker type must be able to scale"
    assert prepared["max_workers"] >= worker["max_workers"]
    assert worker["node_config"]["InstanceType"].startswith("m"), "a CPU instance type"
    assert "GPU" not in worker["resources"]


def test_every_node_installs_this_project(raw, prepared):
    """The repo is synced to the same path on every node and pip-installed there, on the head and
    on the workers (setup_commands as Ray merges them into each node type)."""
    (remote, local), = raw["file_mounts"].items()
    assert Path(local) == Path("."), "file_mounts sync the repository's top level (`ray up` runs there)"
    assert (ROOT / local / "pyproject.toml").exists()
    assert 'name = "marquee"' in (ROOT / local / "pyproject.toml").read_text()
    install = f"pip install --quiet -e {remote}"
    assert install in prepared["head_setup_commands"]
    assert install in prepared["worker_setup_commands"]
    assert {".venv", ".marquee"} <= set(raw["rsync_exclude"]), "never ship the local venv or home"


def test_nodes_run_the_installed_ray_and_python(raw):
    tag = raw["docker"]["image"].split(":")[1]
    version, python, flavour = tag.split("-")
    assert version == ray.__version__, "the cluster's Ray must equal the Ray of the `ray up` client"
    assert python == f"py{sys.version_info.major}{sys.version_info.minor}" and flavour == "cpu"


def _docker_env(raw) -> dict[str, str]:
    """The container's env as the shell sees it (Ray joins run_options into one `docker run` line)."""
    env = {}
    for word in shlex.split(" ".join(raw["docker"]["run_options"])):
        if word.startswith("--env="):
            key, value = word[len("--env="):].split("=", 1)
            env[key] = value
    return env


def test_serve_env_and_the_shared_home_on_every_node(raw):
    env = _docker_env(raw)
    assert {k: env.get(k) for k in SERVE_ENV} == SERVE_ENV, "Serve's env as `marquee up` sets it"
    assert {k: env.get(k) for k in CLUSTER_SERVE_ENV} == CLUSTER_SERVE_ENV, "and as the multi-node test runs it"
    home = env["MARQUEE_HOME"]
    assert f"--volume={home}:{home}" in shlex.split(" ".join(raw["docker"]["run_options"])), "the home is mounted"
    mounts = [c for c in raw["initialization_commands"] if "mount -t nfs4" in c]
    assert len(mounts) == 1 and mounts[0].split()[-1] == home, "the shared home is mounted on the host"


def test_the_head_prepares_the_home_and_deploys_the_serve_cluster_profile(raw):
    commands = raw["head_start_ray_commands"]
    starts = [i for i, c in enumerate(commands) if c.lstrip().startswith("ray start --head")]
    deploys = [i for i, c in enumerate(commands) if re.search(r"\bserve deploy serve\.cluster\.yaml$", c)]
    prepares = [i for i, c in enumerate(commands) if "prepare_system" in c]
    assert len(starts) == len(deploys) == len(prepares) == 1
    assert starts[0] < prepares[0] < deploys[0], "ray start, then the home, then the app"

    # the prepare step is valid Python that names what it uses
    words = shlex.split(commands[prepares[0]].split("&&", 1)[1])
    assert words[:2] == ["python", "-c"]
    compile(words[2], "<cluster.yaml prepare step>", "exec")
    assert hasattr(up, "prepare_system") and hasattr(up, "ensure_dataset")


def test_serve_cluster_yaml_is_this_apps_cluster_profile():
    config = yaml.safe_load(SERVE_CLUSTER.read_text())
    (app,) = config["applications"]
    assert app["name"] == APP_NAME
    assert app["import_path"] == "deployments.app:build_app"
    assert app["args"]["profile"] == "cluster"
    names = {d["name"] for d in app["deployments"]}
    assert {"Gateway", "Retrieval", "Ranker"} == names
    assert all("autoscaling_config" in d for d in app["deployments"])
