"""The operated stack for real: a Prefect server and a process worker running a deployment of
the sample stage's flow, with its MLflow runs on an MLflow server backed by PostgreSQL and S3
(moto's server mode), and the DVC remote in the same bucket.

One deployment run is made per module (`deployed_run`); the tests then check what it left:
the flow run COMPLETED with the stage's outputs, the schedules and limits of every deployment in
prefect.yaml, the nested MLflow runs, metrics and artifacts on the server, a DVC push / pull
round trip through S3, a second `dvc repro` that does nothing, and the MLflow UI in headless
Chromium (screenshot path printed). The teacher and student stages register their model versions
on the same server (`registered`), found in its registry."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.operate import servers
from tests.operate.conftest import BUCKET, bin_path, make_project, project_env

DVC_REMOTE = f"s3://{BUCKET}/dvc"


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def stack_env(
    tmp_path_factory: pytest.TempPathFactory,
    s3: servers.Server,
    mlflow_server: servers.Server,
    prefect_server: servers.Server,
) -> tuple[Path, dict[str, str]]:
    project = make_project(tmp_path_factory.mktemp("project"))
    env = project_env(
        project,
        **servers.prefect_vars(prefect_server.url, prefect_server.log.parent / "home"),
        **servers.s3_env(s3.url),
        CLIPMILL_MLFLOW_TRACKING_URI=mlflow_server.url,
        CLIPMILL_DVC_REMOTE_URL=DVC_REMOTE,
    )
    return project, env


@pytest.fixture(scope="module")
def deployed_run(
    stack_env: tuple[Path, dict[str, str]], prefect_server: servers.Server, log_dir: Path
) -> dict[str, Any]:
    """Create the work pool, deploy everything in prefect.yaml, start a process worker and run
    the sample stage's deployment; return the finished flow run and the deployments."""
    project, env = stack_env
    prefect = bin_path("prefect")
    started = time.monotonic()
    _run([prefect, "work-pool", "create", "clipmill", "--type", "process"], project, env)
    _run([prefect, "--no-prompt", "deploy", "--all"], project, env, timeout=600)
    print(f"deployed in {time.monotonic() - started:.0f} s")
    api = prefect_server.url
    deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
    sample = next(d for d in deployments if d["entrypoint"] == "flows/stages.py:sample_flow")
    worker = servers.start(
        "worker",
        [prefect, "worker", "start", "--pool", "clipmill", "--limit", "1"],
        api,
        f"{api}/health",
        log_dir,
        env=env,
        cwd=project,
    )
    try:
        created = httpx.post(
            f"{api}/deployments/{sample['id']}/create_flow_run",
            json={"parameters": {"pull": True, "push": True}},
            timeout=30,
        ).json()
        deadline = time.monotonic() + 600
        run: dict[str, Any] = created
        while time.monotonic() < deadline:
            run = httpx.get(f"{api}/flow_runs/{created['id']}", timeout=30).json()
            if run["state"]["type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}:
                break
            time.sleep(2)
        print(f"flow run ended {run['state']['type']} at {time.monotonic() - started:.0f} s")
    finally:
        worker.stop()
    return {
        "run": run,
        "deployments": deployments,
        "worker_log": worker.log_tail(6000),
        "project": project,
        "env": env,
    }


def test_deployment_run_completes_with_the_stage_outputs(deployed_run: dict[str, Any]) -> None:
    run, project = deployed_run["run"], deployed_run["project"]
    assert run["state"]["type"] == "COMPLETED", (
        f"flow run ended {run['state']}; worker log:\n{deployed_run['worker_log']}"
    )
    sample = project / "data" / "sample"
    assert (sample / "eval").is_dir() and any(sample.rglob("*.parquet")), list(sample.iterdir())
    assert json.loads((project / "metrics" / "sample.json").read_text())
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert "sample" in lock["stages"]


def test_schedules_limits_and_pools_match_prefect_yaml(deployed_run: dict[str, Any]) -> None:
    """Every deployment of prefect.yaml is on the server with its cron, concurrency limit and
    work pool; crawl and curate run nightly, train and evaluate weekly, evaluate-only never."""
    spec = yaml.safe_load((deployed_run["project"] / "prefect.yaml").read_text())
    by_key = {(d["entrypoint"], d["name"]): d for d in deployed_run["deployments"]}
    assert len(by_key) == len(spec["deployments"])
    for want in spec["deployments"]:
        got = by_key[(want["entrypoint"], want["name"])]
        crons = sorted(s["schedule"]["cron"] for s in got["schedules"])
        assert crons == sorted(s["cron"] for s in want.get("schedules", [])), want["name"]
        assert got["work_pool_name"] == "clipmill"
        limit = got.get("global_concurrency_limit") or {}
        assert limit.get("limit") == want["concurrency_limit"], got
        assert got["parameters"] == {"pull": True, "push": True}
    nightly = {e for (e, n), d in by_key.items() if n == "nightly" and d["schedules"]}
    weekly = {e for (e, n), d in by_key.items() if n == "weekly" and d["schedules"]}
    assert {"flows/stages.py:crawl_flow", "flows/stages.py:curate_flow"} <= nightly
    assert {"flows/stages.py:train_flow", "flows/stages.py:evaluate_flow"} <= weekly
    assert not by_key[("flows/stages.py:evaluate_flow", "evaluate-only")]["schedules"]


def test_mlflow_server_on_postgres_holds_the_nested_runs(
    deployed_run: dict[str, Any], mlflow_server: servers.Server, s3: servers.Server
) -> None:
    """The stage's run nests under the flow's pipeline run in PostgreSQL; its metrics are there
    and its artifacts (params, manifest, plots) are objects in the S3 bucket."""
    assert deployed_run["run"]["state"]["type"] == "COMPLETED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.get_experiment_by_name("clipmill")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    by_stage = {r.data.tags.get("clipmill.stage"): r for r in runs}
    assert {"pipeline", "sample"} <= set(by_stage), [r.data.tags for r in runs]
    pipeline, stage = by_stage["pipeline"], by_stage["sample"]
    assert stage.data.tags["mlflow.parentRunId"] == pipeline.info.run_id
    assert stage.data.tags["clipmill.door"] == "prefect"
    assert stage.data.tags["clipmill.prefect_flow_run_id"]
    assert pipeline.data.tags["clipmill.dvc_remote"] == "clipmill-env"
    assert stage.data.metrics, "no metrics on the stage run"
    assert stage.info.status == "FINISHED" and pipeline.info.status == "FINISHED"
    artifacts = [a.path for a in client.list_artifacts(stage.info.run_id)]
    assert artifacts, "the stage run has no artifacts"
    keys = _s3_keys(s3.url, "mlflow/")
    assert any(stage.info.run_id in k for k in keys), keys[:20]


@pytest.fixture(scope="module")
def registered(
    tmp_path_factory: pytest.TempPathFactory, s3: servers.Server, mlflow_server: servers.Server
) -> dict[str, dict[str, Any]]:
    """The teacher and the student stage, each with its registered model name, run against the
    MLflow server (tiny ViT, 8 in-process steps on hand-made shards: a code-path run, not a
    useful model); returns each stage's metrics (`registered_version`)."""
    from tests.train.conftest import tiny_params
    from tests.train.shards import write_shards

    work = tmp_path_factory.mktemp("registered")
    project = make_project(work / "project")
    env = project_env(
        project, **servers.s3_env(s3.url), CLIPMILL_MLFLOW_TRACKING_URI=mlflow_server.url
    )
    shards = write_shards(work / "shards")
    metrics: dict[str, dict[str, Any]] = {}
    for stage, name in REGISTERED.items():
        params = work / f"{stage}.yaml"
        params.write_text(tiny_params(work / stage, shards, registered_model_name=name).to_yaml())
        _run([bin_path("clipmill"), "run", stage, "-p", str(params)], project, env)
        metrics[stage] = json.loads((project / "metrics" / f"{stage}.json").read_text())
    return metrics


REGISTERED = {"teacher": "clipmill-teacher", "train": "clipmill-student"}


def test_mlflow_server_holds_the_registered_teacher_and_student(
    registered: dict[str, dict[str, Any]], mlflow_server: servers.Server, s3: servers.Server
) -> None:
    """Each stage's model version is in the server's registry (PostgreSQL), READY, made by that
    stage's run, and its files are objects in the S3 bucket."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    keys = _s3_keys(s3.url, "mlflow/")
    for stage, name in REGISTERED.items():
        version = str(registered[stage]["registered_version"])
        found = {v.version: v for v in client.search_model_versions(f"name='{name}'")}
        assert version in found, (stage, name, sorted(found))
        model = found[version]
        assert model.status == "READY", model
        run = client.get_run(model.run_id)
        assert run.data.tags["clipmill.stage"] == stage
        assert run.data.tags["clipmill.registered_model"] == f"models:/{name}/{version}"
        assert any(model.run_id in k for k in keys), (stage, keys[:20])


def _s3_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=servers.S3_KEY,
        aws_secret_access_key=servers.S3_SECRET,
        region_name="us-east-1",
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_dvc_push_pull_round_trip_through_s3(
    deployed_run: dict[str, Any], s3: servers.Server
) -> None:
    """The worker pushed the outputs to the bucket; a workspace without them (and without a
    cache) gets the same bytes back with `dvc pull`, after which `dvc repro` has nothing to do,
    twice."""
    assert deployed_run["run"]["state"]["type"] == "COMPLETED"
    project, env = deployed_run["project"], deployed_run["env"]
    assert _s3_keys(s3.url, "dvc/files/md5/"), "nothing was pushed to the DVC remote"
    sample = project / "data" / "sample"
    before = _digest(sample)
    shutil.rmtree(sample)
    shutil.rmtree(project / ".dvc" / "cache")
    _run([bin_path("dvc"), "pull", "-r", "clipmill-env"], project, env)
    assert _digest(sample) == before
    for _ in range(2):
        out = _run([bin_path("dvc"), "repro"], project, env)
        assert "didn't change, skipping" in out and "Running stage" not in out, out


def _chromium(args: list[str], url: str, timeout: int = 180) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("chromium is missing: `make setup` installs it (apt-get install chromium)")
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",  # root in CI containers
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=30000",
        "--window-size=1600,1000",
        *args,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_mlflow_ui_in_headless_chromium_shows_the_pipeline_and_stage_runs(
    deployed_run: dict[str, Any],
    mlflow_server: servers.Server,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The UI's experiment page lists the pipeline run; the stage run's page names its parent.
    Screenshots are saved (in $TEST_ARTIFACTS_DIR when set) and their paths printed."""
    assert deployed_run["run"]["state"]["type"] == "COMPLETED"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.url)
    exp = client.get_experiment_by_name("clipmill")
    assert exp is not None
    runs = {r.data.tags.get("clipmill.stage"): r for r in client.search_runs([exp.experiment_id])}
    pipeline, stage = runs["pipeline"], runs["sample"]
    out = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    pages = {
        "mlflow-experiment.png": (
            f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs",
            [pipeline.info.run_name],
        ),
        "mlflow-stage-run.png": (
            f"{mlflow_server.url}/#/experiments/{exp.experiment_id}/runs/{stage.info.run_id}",
            [stage.info.run_name, pipeline.info.run_id],
        ),
    }
    for name, (url, expected) in pages.items():
        dom = _chromium(["--dump-dom"], url)
        for text in expected:
            assert text in dom, f"{text!r} not shown at {url}:\n{dom[-3000:]}"
        shot = out / name
        _chromium([f"--screenshot={shot}"], url)
        assert shot.stat().st_size > 10_000, shot
        with capsys.disabled():
            print(f"\nMLflow UI screenshot: {shot}")
