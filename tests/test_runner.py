"""The shared runner: params validation, MLflow run contents, metrics file, nesting."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tasks.base import ParamsError, StageParams
from tasks.registry import STAGES, StageSpec


@pytest.fixture()
def toy_project(tmp_path, monkeypatch, mlflow_store):
    """A throwaway project root holding the toy stage's params file; the toy runs without Ray."""
    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "toy.yaml").write_text(
        "out_file: data/toy/out.txt\ncount: 4\nlabel: hi\n"
    )
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    from tasks.settings import get_settings

    get_settings.cache_clear()
    spec = StageSpec(
        name="toy",
        params_model="toy_stage:ToyParams",
        run_function="toy_stage:run",
        code=(),
        uses_ray=False,
    )
    monkeypatch.setitem(STAGES, "toy", spec)
    monkeypatch.setattr(
        StageSpec, "params_file", property(lambda self: tmp_path / "params" / f"{self.name}.yaml")
    )
    return tmp_path


def test_run_logs_params_metrics_artifacts_and_tags(toy_project, mlflow_store):
    import mlflow

    from tasks.runner import run_stage

    metrics = run_stage("toy", overrides=["count=5"], door="python")
    assert metrics["lines"] == 5
    assert metrics["engine_mlflow_run"] == 1  # the run was open while the stage ran
    assert mlflow.active_run() is None  # and is closed now
    assert (toy_project / "data/toy/out.txt").read_text().count("\n") == 5
    written = json.loads((toy_project / "metrics/toy.json").read_text())
    assert written["lines"] == 5 and written["nested"]["ratio@1"] == 0.5

    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(
        experiment_names=["clipmill"], filter_string="tags.`clipmill.stage` = 'toy'"
    )
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["params.toy.count"] == "5" and row["params.toy.label"] == "hi"
    assert row["metrics.lines"] == 5 and row["metrics.nested.ratio_at_1"] == 0.5
    assert row["tags.clipmill.door"] == "python"
    assert row["tags.clipmill.git_commit"]
    assert len(row["tags.clipmill.dvc_stage_hash"]) == 32
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(row.run_id, "plots")}
    assert "plots/toy.png" in artifacts
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(row.run_id, "metrics")] == [
        "metrics/toy.json"
    ]


def test_stage_run_nests_under_pipeline_run(toy_project, mlflow_store, monkeypatch):
    import mlflow

    from tasks.runner import run_stage
    from tasks.tracking import PARENT_RUN_ENV, configure_mlflow

    exp = configure_mlflow()
    with mlflow.start_run(experiment_id=exp, run_name="pipeline") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, parent_id)
    child = run_stage("toy")
    run = mlflow.get_run(child["_mlflow_run_id"])
    assert run.data.tags["mlflow.parentRunId"] == parent_id


def test_failed_stage_run_is_marked_failed(toy_project, mlflow_store):
    import mlflow

    from tasks.runner import run_stage

    with pytest.raises(ValueError, match="toy asked to fail"):
        run_stage("toy", overrides=["fail=true"])
    mlflow.set_tracking_uri(mlflow_store)
    runs = mlflow.search_runs(
        experiment_names=["clipmill"], filter_string="tags.`clipmill.stage` = 'toy'"
    )
    assert list(runs["status"]) == ["FAILED"]
    assert runs.iloc[0]["params.toy.fail"] == "True"
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("count: 4\nbogus: 1\n", "unknown field 'bogus' (value 1)"),
        ("count: many\n", "field 'count' = 'many'"),
        ("count: 1000\n", "field 'count' = 1000: Input should be less than or equal to 100"),
        ("count: [1\n", "malformed YAML at line"),
        ("- 1\n- 2\n", "top level must be a mapping"),
    ],
)
def test_bad_params_file_fails_before_work_with_one_line(toy_project, content, expected):
    from tasks.runner import run_stage

    bad = toy_project / "bad.yaml"
    bad.write_text(content)
    with pytest.raises(ParamsError) as info:
        run_stage("toy", params_file=bad)
    message = str(info.value)
    assert message.startswith(str(bad)) and expected in message
    assert "\n" not in message
    assert not (toy_project / "data").exists() and not (toy_project / "metrics").exists()


def test_override_values_are_typed_from_yaml(toy_project):
    from tasks.runner import load_stage_params

    params = load_stage_params(STAGES["toy"], overrides=["count=7", "label=x y"])
    assert params.count == 7 and params.label == "x y"
    with pytest.raises(ParamsError, match="expected key=value"):
        load_stage_params(STAGES["toy"], overrides=["count"])


def test_params_are_frozen():
    from toy_stage import ToyParams

    params = ToyParams()
    with pytest.raises(Exception, match="frozen"):
        params.count = 9  # type: ignore[misc]
    assert isinstance(params, StageParams)


def _cli(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tasks", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_cli_bad_params_exit_2_one_line(tmp_path):
    from tasks import PROJECT_ROOT

    bad = tmp_path / "sample.yaml"
    bad.write_text("seed: [oops\n")
    proc = _cli("run", "sample", "-p", str(bad), cwd=PROJECT_ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "malformed YAML" in lines[0]
    proc = _cli("run", "sample", "-s", "no_such_field=3", cwd=PROJECT_ROOT)
    assert proc.returncode == 2
    assert "unknown field 'no_such_field' (value 3)" in proc.stderr
    proc = _cli("run", "nope", cwd=PROJECT_ROOT)
    assert proc.returncode == 2 and "unknown stage 'nope'" in proc.stderr


def test_cli_params_show_prints_effective_values():
    from tasks import PROJECT_ROOT

    proc = _cli("params", "show", "sample", "-s", "seed=42", cwd=PROJECT_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "seed: 42" in proc.stdout.splitlines()


def test_cli_stage_input_error_is_reported_without_traceback(tmp_path):
    from tasks import PROJECT_ROOT

    isolated = {
        "CLIPMILL_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "CLIPMILL_MLFLOW_ARTIFACT_ROOT": (tmp_path / "artifacts").as_uri(),
        "CLIPMILL_RAY_OBJECT_STORE_MB": "256",
    }
    proc = _cli(
        "run",
        "train",
        "-s",
        f"shards={tmp_path / 'no-such-shards'}",
        cwd=PROJECT_ROOT,
        env=isolated,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "no-such-shards" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_runner_owns_the_engines(tmp_path, mlflow_store):
    """Ray is up and the MLflow run open when the stage function is called; both are closed when
    run_stage returns, without the stage calling any boot or release helper. In a fresh
    interpreter: this test session's own Ray would be joined, not started and shut down."""
    from tasks import PROJECT_ROOT

    (tmp_path / "params").mkdir()
    (tmp_path / "params" / "toy.yaml").write_text("out_file: data/toy/out.txt\ncount: 2\n")
    code = """
import json, os, threading
import mlflow, ray
from tasks.registry import STAGES, StageSpec
from tasks.runner import run_stage

STAGES["toy"] = StageSpec(
    name="toy", params_model="toy_stage:ToyParams", run_function="toy_stage:run", code=()
)
metrics = run_stage("toy", params_file=os.environ["TOY_PARAMS"], door="python")
print("RESULT", json.dumps({
    "during": [metrics["engine_ray_up"], metrics["engine_mlflow_run"]],
    "after": [int(ray.is_initialized()), int(mlflow.active_run() is not None)],
    "boot_thread": any(t.name == "ray-init" for t in threading.enumerate()),
    "status": mlflow.get_run(metrics["_mlflow_run_id"]).info.status,
}))
"""
    env = {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT / "tests"),
        "TOY_PARAMS": str(tmp_path / "params" / "toy.yaml"),
        "CLIPMILL_ROOT": str(tmp_path),
        "CLIPMILL_RAY_NUM_CPUS": "1",
        "CLIPMILL_RAY_OBJECT_STORE_MB": "128",
        "RAY_ADDRESS": "",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert result == {
        "during": [1, 1],
        "after": [0, 0],
        "boot_thread": False,
        "status": "FINISHED",
    }


def test_params_that_need_no_ray_get_none(toy_project, monkeypatch):
    """A Ray stage whose params run it in-process (train with num_workers=0): no Ray is started,
    so its processes take no CPU from the run; the same stage with Ray params does start one."""
    import tasks.raysession
    from tasks.runner import run_stage

    starts: list[bool] = []

    def no_boot(*args, **kwargs):  # the runner's only way to a Ray: ray_session
        starts.append(True)
        raise AssertionError("Ray started for params that need none")

    monkeypatch.setattr(tasks.raysession, "ray_session", no_boot)
    spec = STAGES["toy"]
    monkeypatch.setitem(
        STAGES,
        "toy",
        StageSpec(
            name="toy",
            params_model="toy_stage:InProcessToyParams",
            run_function="toy_stage:run",
            code=(),
            uses_ray=True,
        ),
    )
    import ray

    ray_before = int(ray.is_initialized())  # an earlier test in this process may have left one up
    metrics = run_stage("toy", door="python")
    assert metrics["engine_ray_up"] == ray_before and metrics["engine_mlflow_run"] == 1
    assert not starts
    monkeypatch.setitem(
        STAGES, "toy", StageSpec(**{**spec.__dict__, "uses_ray": True})
    )  # ToyParams needs Ray: the runner asks for it
    with pytest.raises(AssertionError, match="Ray started"):
        run_stage("toy", door="python")
    assert starts


def test_train_in_local_mode_needs_no_ray() -> None:
    from tasks.train.params import TrainParams

    assert not TrainParams(num_workers=0).needs_ray()
    assert TrainParams(num_workers=2).needs_ray()
