"""The sample stage through all three doors (CLI, dvc repro, the Prefect flow) on a copy of the
project: identical outputs, a second `dvc repro` that does nothing, and the MLflow runs. The flow
is given an override, so it runs as a DVC experiment and must leave the params file as it was."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tasks import PROJECT_ROOT

# A small slice of the real data, so three builds fit in a fast test.
SMALL = {
    "openclipart_max_items": 40,
    "emoji_max_items": 40,
    "tuxpaint_max_items": 30,
    "gimp_max_pages": 6,
    "fashion_mnist_max_items": 60,
    "planted_count": 6,
}
FLOW_EXPERIMENT = "doors-seed0"  # the DVC experiment the flow's override runs as


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A throwaway copy of the project (code, params, dvc.yaml) as its own git + DVC repo, with
    one commit (DVC experiments are saved against HEAD)."""
    root = tmp_path_factory.mktemp("project")
    for name in ("tasks", "flows"):
        shutil.copytree(
            PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    (root / "params").mkdir()
    data = yaml.safe_load((PROJECT_ROOT / "params" / "sample.yaml").read_text())
    data.update(SMALL)
    (root / "params" / "sample.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"sample": dvc["stages"]["sample"]}}))
    env = _env(root)
    for cmd in (["git", "init", "-q"], [_bin("dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    shutil.copy(PROJECT_ROOT / ".dvc" / "config", root / ".dvc" / "config")  # the local remote
    who = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    for cmd in (["git", "add", "-A"], ["git", *who, "commit", "-q", "-m", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    return root


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _env(root: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLIPMILL_", "MLFLOW_", "DVC_STAGE"))
    }
    env.update(
        CLIPMILL_ROOT=str(root),
        CLIPMILL_MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        CLIPMILL_RAY_NUM_CPUS="2",
        CLIPMILL_RAY_OBJECT_STORE_MB="256",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    return env


def _run(cmd: list[str], root: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        cmd, cwd=root, env=_env(root), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def door_outputs(project):
    """Build the sample data once per door, keeping a digest of each build."""
    out = project / "data" / "sample"
    digests: dict[str, dict[str, str]] = {}

    _run([_bin("clipmill"), "run", "sample"], project)
    digests["cli"] = _tree_digest(out)
    shutil.rmtree(out)

    _run([_bin("dvc"), "repro", "sample"], project)
    digests["dvc"] = _tree_digest(out)
    second = _run([_bin("dvc"), "repro", "sample"], project)
    digests["dvc_second_output"] = {"stdout": second.stdout}
    shutil.rmtree(out)

    _run([sys.executable, "-c", _FLOW_SCRIPT], project)
    digests["prefect"] = _tree_digest(out)
    return digests


# The flow runs under Prefect's test harness in a fresh interpreter rooted at the copy.
_FLOW_SCRIPT = """
from prefect.testing.utilities import prefect_test_harness
from flows.pipeline import pipeline
with prefect_test_harness(server_startup_timeout=180):
    result = pipeline(
        stages=["sample"], overrides={"sample": {"seed": 0}}, force=True, push=True,
        experiment="doors-seed0",
    )
assert "sample" in result, result
"""


def test_three_doors_give_identical_outputs(door_outputs):
    cli, dvc, prefect = door_outputs["cli"], door_outputs["dvc"], door_outputs["prefect"]
    assert cli, "the CLI door produced nothing"
    assert any(name.startswith("site/") for name in cli)
    assert cli == dvc == prefect


def test_flow_override_ran_as_a_dvc_experiment_and_left_params_intact(door_outputs, project):
    diff = subprocess.run(
        ["git", "status", "--porcelain", "--", "params/"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert diff.stdout == "", f"params changed by the overridden flow run:\n{diff.stdout}"
    shown = json.loads(_run([_bin("dvc"), "exp", "show", "--json"], project).stdout)
    names = {
        rev["name"]: rev["data"]["params"]["params/sample.yaml"]["data"]
        for baseline in shown
        for exp in baseline.get("experiments") or []
        for rev in exp["revs"]
    }
    assert FLOW_EXPERIMENT in names, names.keys()
    assert names[FLOW_EXPERIMENT]["seed"] == 0
    assert names[FLOW_EXPERIMENT]["openclipart_max_items"] == 40


def test_flow_pushed_outputs_to_the_local_dvc_remote(door_outputs, project):
    store = project / ".dvcstore"
    assert store.is_dir() and sum(1 for p in store.rglob("*") if p.is_file()) > 10
    status = _run([_bin("dvc"), "status", "--cloud"], project)
    assert "in sync" in status.stdout.lower(), status.stdout


def test_second_dvc_repro_does_nothing(door_outputs):
    stdout = door_outputs["dvc_second_output"]["stdout"]
    assert "didn't change, skipping" in stdout or "is up to date" in stdout.lower()
    assert "Running stage 'sample'" not in stdout


def test_each_door_left_a_tagged_mlflow_run(door_outputs, project):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["clipmill"], filter_string="tags.`clipmill.stage` = 'sample'"
    )
    assert sorted(runs["tags.clipmill.door"]) == ["cli", "dvc", "prefect"]
    for _, row in runs.iterrows():
        assert row["params.sample.seed"] == "0"
        assert row["params.sample.openclipart_max_items"] == "40"
        assert row["metrics.stage_seconds"] > 0
        assert len(row["tags.clipmill.dvc_stage_hash"]) == 32
        files = [a.path for a in mlflow.MlflowClient().list_artifacts(row.run_id)]
        assert "metrics" in files
    prefect_row = runs[runs["tags.clipmill.door"] == "prefect"].iloc[0]
    assert prefect_row["tags.clipmill.prefect_flow_run_id"]
    assert prefect_row["tags.clipmill.dvc_exp"] == FLOW_EXPERIMENT  # tied to its DVC experiment
    parent = mlflow.get_run(prefect_row["tags.mlflow.parentRunId"])
    assert parent.data.tags["clipmill.stage"] == "pipeline"
    assert parent.data.tags["clipmill.dvc_exp"] == FLOW_EXPERIMENT


def test_flow_rejects_bad_overrides_before_any_work(project, tmp_path):
    script = (
        "from prefect.testing.utilities import prefect_test_harness\n"
        "from flows.pipeline import main\n"
        "with prefect_test_harness(server_startup_timeout=180):\n"
        "    raise SystemExit(main(['--stages', 'sample', '-s', 'sample.seed=-5']))\n"
    )
    before = (project / "params" / "sample.yaml").read_text()
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=project,
        env=_env(project),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "field 'seed' = -5" in proc.stderr
    assert (project / "params" / "sample.yaml").read_text() == before
