"""Ray jobs on a home's running cluster: how the admin API and `marquee retrain --submit` hand
a retrain to the cluster of `marquee up` instead of running it in their own process."""

from __future__ import annotations

import sys

from marquee.home import PROJECT_ROOT, LocalCluster, Paths, auth_env, use_cluster_auth


def start_job(paths: Paths, argv: list[str]):
    """Submit `marquee retrain ARGV` as a Ray job on the home's running cluster; returns
    (client, job id, dashboard url), or None when no cluster runs for that home."""
    cluster = LocalCluster.load(paths.home)
    if cluster is None or not cluster.alive():
        return None
    use_cluster_auth(paths.home)
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(cluster.dashboard_url)
    entrypoint = " ".join([sys.executable, "-m", "ops.cli", "retrain", *argv])
    env = {"MARQUEE_HOME": str(paths.home), "PYTHONPATH": str(PROJECT_ROOT), **auth_env(paths.home)}
    job = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env})
    return client, job, cluster.dashboard_url
