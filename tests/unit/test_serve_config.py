"""serve.yaml and serve.cluster.yaml are the profiles of deployments/app.py, written out, and
valid Serve configs; the app config puts hot values in user_config only (so changing them is a
reconfigure, not a rebuild)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.app import CONFIG_HEADER, PROFILES, app_config, serve_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("profile, filename", [("single", "serve.yaml"), ("cluster", "serve.cluster.yaml")])
def test_checked_in_config_is_the_generated_one_and_valid(profile, filename):
    text = (ROOT / filename).read_text()
    assert text == CONFIG_HEADER + yaml.safe_dump(serve_config(profile), sort_keys=False), \
        f"{filename} is stale: regenerate it with `marquee serve-config --profile {profile} > {filename}`"
    ServeDeploySchema(**yaml.safe_load(text))


def test_profiles_place_the_stages_as_documented():
    single = serve_config("single")["applications"][0]
    assert [d["name"] for d in single["deployments"]] == ["Gateway"]  # fused: one hop
    assert single["deployments"][0]["ray_actor_options"]["num_cpus"] < 1
    cluster = serve_config("cluster")["applications"][0]
    by_name = {d["name"]: d for d in cluster["deployments"]}
    assert set(by_name) == {"Gateway", "Retrieval", "Ranker"}
    assert all("autoscaling_config" in d for d in by_name.values())
    assert PROFILES["cluster"]["placement"] == "split" and PROFILES["single"]["placement"] == "fused"


def test_hot_values_go_to_user_config_and_never_into_the_build_args():
    config = app_config({"profile": "cluster", "user_config": {"artwork": {"epsilon": 0.2}}})
    assert "user_config" not in config["args"]
    assert {d["name"]: d["user_config"] for d in config["deployments"]} == {
        "Gateway": {"artwork": {"epsilon": 0.2}}, "Retrieval": {"artwork": {"epsilon": 0.2}}}
