"""The Prefect pipeline flow with `CLIPMILL_DATA_ROOT=s3://...` (moto's server mode, real HTTP on
loopback; Prefect's ephemeral test harness, the deployment path being
tests/operate/test_prefect_stack.py): the stage runs through the runner, not `dvc repro`, its
override applied; its outputs land in the bucket, never in the project's `data/`, and its MLflow
run nests under the flow's pipeline run with the artifacts in the bucket."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.operate import servers
from tests.operate.conftest import BUCKET, project_env
from tests.operate.test_s3_dataroot import _objects, _project

# Prefect's ephemeral harness plus one stage: 6 min on the loaded 2-core machine (357 s): slow.
pytestmark = pytest.mark.slow

PREFIX = "flowroot"

FLOW = """
import json, sys
from prefect.testing.utilities import prefect_test_harness
from flows.pipeline import pipeline
with prefect_test_harness(server_startup_timeout=180):
    result = pipeline(stages=["sample"], overrides={"sample": {"seed": 7}}, pull=True, push=True)
open(sys.argv[1], "w").write(json.dumps(result, default=str))
"""


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory: pytest.TempPathFactory, s3: servers.Server) -> dict[str, Any]:
    project = _project(tmp_path_factory.mktemp("project"), ("sample",))
    env = project_env(
        project,
        **servers.s3_env(s3.url),
        CLIPMILL_DATA_ROOT=f"s3://{BUCKET}/{PREFIX}",
        CLIPMILL_DATA_CACHE=str(tmp_path_factory.mktemp("cache")),
        PREFECT_HOME=str(tmp_path_factory.mktemp("prefect-home")),
    )
    out = project / "flow-result.json"
    proc = subprocess.run(
        [sys.executable, "-c", FLOW, str(out)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"flow failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return {"project": project, "result": json.loads(out.read_text())}


def test_the_flow_ran_the_stage_on_the_bucket(flow_run: dict[str, Any], s3: servers.Server) -> None:
    metrics = flow_run["result"]["sample"]
    objects = _objects(s3.url, f"{PREFIX}/sample/")
    assert objects and metrics["dataroot_uploaded"] == len(objects)
    project: Path = flow_run["project"]
    assert not (project / "data").exists()
    assert not (project / "dvc.lock").exists(), "the stage went through dvc repro"


def test_the_override_reached_the_stage_and_runs_nest_under_the_pipeline(
    flow_run: dict[str, Any], s3: servers.Server
) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{flow_run['project'] / 'mlflow.db'}")
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=50
    )
    parent = next(r for r in runs if r.data.tags.get("clipmill.stage") == "pipeline")
    assert parent.data.tags["clipmill.data_root"] == f"s3://{BUCKET}/{PREFIX}"
    (stage,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert stage.data.params.get("sample.seed") == "7", stage.data.params
    assert stage.data.tags["clipmill.door"] == "prefect"
    assert stage.info.artifact_uri.startswith(f"s3://{BUCKET}/{PREFIX}/mlartifacts")
    keys = _objects(s3.url, f"{PREFIX}/mlartifacts/")
    assert any(k.endswith("metrics/sample.json") for k in keys), sorted(keys)[:10]
