"""Tests never write into the checkout's own outputs (data/, metrics/, mlflow.db, mlartifacts/,
mlruns/): tests/conftest.py gives every session a temporary root, and fails a session that
touched them anyway. A `make test` after `make demo` once replaced the demo's scores."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.isolation import CHECKOUT, GUARDED, changed_paths, snapshot


def _shell_env() -> dict[str, str]:
    """The environment of a person typing `pytest`: none of this session's own settings."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CLIPMILL_", "MLFLOW_"))}


def _outside(path: Path) -> bool:
    return not path.resolve().is_relative_to(CHECKOUT)


def test_settings_send_every_output_outside_the_checkout(test_root: Path) -> None:
    from tasks import PROJECT_ROOT
    from tasks.settings import get_settings

    get_settings.cache_clear()
    s = get_settings()
    assert PROJECT_ROOT == CHECKOUT  # code, dvc.yaml and the committed params are found here
    assert s.root == test_root and _outside(s.root)
    assert (s.root / "params" / "curate.yaml").read_text() == (
        CHECKOUT / "params" / "curate.yaml"
    ).read_text()
    for uri in (s.tracking_uri.removeprefix("sqlite:///"), s.data_uri, s.lance_uri):
        assert _outside(Path(uri)), uri
    assert s.artifact_root.startswith("file://") and _outside(Path(s.artifact_root[7:]))


def test_a_stage_run_writes_its_metrics_under_the_test_root(
    test_root: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner with nothing but the session's settings: metrics/<stage>.json goes under the
    test root, and the checkout's outputs are the same after as before."""
    from tasks.registry import STAGES, StageSpec
    from tasks.runner import run_stage

    (test_root / "params" / "toy.yaml").write_text("out_file: data/toy/out.txt\ncount: 2\n")
    spec = StageSpec("toy", "toy_stage:ToyParams", "toy_stage:run", (), False)
    monkeypatch.setitem(STAGES, "toy", spec)
    before = snapshot(CHECKOUT)
    try:
        run_stage("toy", door="python")
    finally:
        (test_root / "params" / "toy.yaml").unlink()
    assert (test_root / "metrics" / "toy.json").is_file()
    assert (test_root / "data" / "toy" / "out.txt").is_file()
    assert not (CHECKOUT / "metrics" / "toy.json").exists()
    assert changed_paths(before, snapshot(CHECKOUT)) == []


def test_a_real_stage_writes_its_data_metrics_and_runs_under_the_test_root(
    test_root: Path, tmp_path: Path, ray_session
) -> None:
    """The train stage through the runner, relative output paths, nothing set but what the
    session set: its model folder, metrics/train.json and MLflow run are under the test root."""
    import mlflow

    from tasks.runner import run_stage
    from tasks.settings import get_settings
    from tests.train.conftest import tiny_params
    from tests.train.shards import write_shards

    get_settings.cache_clear()
    params = tiny_params(
        tmp_path,
        write_shards(tmp_path / "shards"),
        steps=4,
        checkpoint_every=2,
        run_root="data/isolation/runs",
        output_dir="data/isolation/model",
    )
    params_file = tmp_path / "train.yaml"
    params_file.write_text(params.to_yaml())
    before = snapshot(CHECKOUT)
    metrics = run_stage("train", params_file=params_file)
    assert (test_root / "metrics" / "train.json").is_file()
    assert any((test_root / "data" / "isolation" / "model").iterdir())
    uri = get_settings().tracking_uri
    assert uri == f"sqlite:///{test_root / 'mlflow.db'}"
    assert mlflow.MlflowClient(uri).get_run(metrics["_mlflow_run_id"]).info.status == "FINISHED"
    assert changed_paths(before, snapshot(CHECKOUT)) == []


def test_stage_tests_in_a_fresh_pytest_leave_the_project_untouched() -> None:
    """`pytest` as a user runs it (no settings in the shell) on the stage-running tests above:
    the checkout's outputs (a sentinel metrics/*.json among them when there is one) keep their
    mtimes and sizes. Without the session root the train stage would write metrics/train.json,
    data/isolation/ and mlflow.db into the checkout."""
    before = snapshot(CHECKOUT)
    here = "tests/test_isolation.py::"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            here + "test_a_stage_run_writes_its_metrics_under_the_test_root",
            here + "test_a_real_stage_writes_its_data_metrics_and_runs_under_the_test_root",
        ],
        cwd=CHECKOUT,
        env=_shell_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 passed" in proc.stdout
    assert changed_paths(before, snapshot(CHECKOUT)) == []


def test_the_session_guard_fails_a_session_that_wrote_into_the_project(tmp_path: Path) -> None:
    """A throwaway checkout (this conftest and its helpers, params, dvc.yaml) whose only test writes
    metrics/x.json into it: pytest must exit non-zero and name the path."""
    fake = tmp_path / "checkout"
    (fake / "tests").mkdir(parents=True)
    shutil.copy(CHECKOUT / "tests" / "conftest.py", fake / "tests" / "conftest.py")
    shutil.copytree(CHECKOUT / "tests" / "support", fake / "tests" / "support")
    shutil.copy(CHECKOUT / "pyproject.toml", fake / "pyproject.toml")  # pythonpath = "."
    shutil.copytree(CHECKOUT / "params", fake / "params")
    shutil.copy(CHECKOUT / "dvc.yaml", fake / "dvc.yaml")
    (fake / "tests" / "test_leak.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            def test_leaks():
                out = Path(__file__).resolve().parents[1] / "metrics" / "x.json"
                out.parent.mkdir(exist_ok=True)
                out.write_text("{}")
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_leak.py"],
        cwd=fake,
        env=_shell_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout[-3000:]
    assert "tests wrote into the project" in proc.stdout
    assert "metrics/x.json" in proc.stdout


def test_snapshot_sees_created_changed_and_removed_files(tmp_path: Path) -> None:
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "a.json").write_text("1")
    before = snapshot(tmp_path)
    assert set(before) == {"metrics", "metrics/a.json"} and set(GUARDED) >= {"metrics"}
    (tmp_path / "mlflow.db").write_text("x")
    assert changed_paths(before, snapshot(tmp_path)) == ["mlflow.db"]
    (tmp_path / "metrics" / "a.json").write_text("22")
    assert "metrics/a.json" in changed_paths(before, snapshot(tmp_path))
