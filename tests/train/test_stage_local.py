"""Local mode through the runner trains in a child process (tasks/train/local.py): its steps reach
the MLflow run, its errors reach the caller with their type, message and traceback, and no child
outlives the command, whether the command fails, is terminated or is killed outright."""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from .conftest import tiny_params

CHECKOUT = Path(__file__).resolve().parents[2]


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every LocalTraining the runner starts during the test."""
    import tasks.train.local as local

    started: list[Any] = []
    real = local.LocalTraining.__init__

    def init(self: Any, params: Any) -> None:
        import mlflow

        self.run_open_at_start = mlflow.active_run() is not None
        real(self, params)
        started.append(self)

    monkeypatch.setattr(local.LocalTraining, "__init__", init)
    return started


def _params_file(tmp_path: Path, shards: Path, **over: Any) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(tiny_params(tmp_path, shards, **over).to_yaml())
    return path


def test_runner_trains_in_a_child_and_logs_its_steps(
    tmp_path: Path, shards_dir: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from tasks.runner import run_stage

    started = _spy(monkeypatch)
    metrics = run_stage("train", params_file=_params_file(tmp_path, shards_dir, steps=6))

    (child,) = started
    assert not child.run_open_at_start  # started before the MLflow run, beside its start-up
    assert child.process.pid != os.getpid()
    assert child.process.exitcode == 0  # waited for, not terminated
    assert metrics["steps"] == 6 and metrics["train_samples"] == 96
    assert metrics["excluded_uids"] == 0 and metrics["excluded_samples"] == 0
    client = MlflowClient(mlflow_store)
    run_id = metrics["_mlflow_run_id"]
    for key in ("train/loss", "train/lr", "train/logit_scale", "train/samples_per_s"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(6))
    assert client.get_run(run_id).info.status == "FINISHED"
    assert (Path(tmp_path / "models" / "student") / "params.yaml").is_file()


def test_a_bad_shard_path_fails_with_the_childs_error_naming_it(
    tmp_path: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from tasks.runner import run_stage
    from tasks.settings import get_settings
    from tasks.train.data import DataError
    from tasks.train.local import ChildTraceback

    started = _spy(monkeypatch)
    missing = tmp_path / "no_such_shards"
    with pytest.raises(DataError, match=r"no_such_shards.*run the upstream stage first") as info:
        run_stage("train", params_file=_params_file(tmp_path, missing))
    cause = info.value.__cause__
    assert isinstance(cause, ChildTraceback)
    assert "list_shards" in cause.text and "tasks/train/data.py" in cause.text
    (child,) = started
    assert child.process.pid != os.getpid() and child.process.exitcode is not None
    client = MlflowClient(mlflow_store)
    experiment = client.get_experiment_by_name(get_settings().mlflow_experiment)
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FAILED"


def test_a_failure_in_the_parent_stops_the_child(
    tmp_path: Path, shards_dir: Path, mlflow_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent fails while the child trains (here: writing the first step to MLflow): the
    child is terminated at once, not left to finish its 2,000 steps."""
    import tasks.train.tracking as tracking
    from tasks.runner import run_stage

    started = _spy(monkeypatch)

    def broken(self: Any, step: int, values: Any, timestamp_ms: Any = None) -> None:
        raise RuntimeError("tracking store went away")

    monkeypatch.setattr(tracking.StepLogger, "log", broken)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="tracking store went away"):
        run_stage("train", params_file=_params_file(tmp_path, shards_dir, steps=2000))
    (child,) = started
    assert child.process.exitcode is not None  # terminated and waited for
    assert not psutil.pid_exists(child.process.pid) or (
        psutil.Process(child.process.pid).status() == psutil.STATUS_ZOMBIE
    )
    assert time.monotonic() - t0 < 120


def test_a_child_that_dies_silently_is_an_error_with_its_exit_code(
    tmp_path: Path, shards_dir: Path
) -> None:
    from tasks.train.local import LocalTraining, TrainProcessError

    child = LocalTraining(tiny_params(tmp_path, shards_dir))
    try:
        os.kill(child.process.pid, signal.SIGKILL)
        with pytest.raises(TrainProcessError, match="exit code -9"):
            child.wait_prepared()
    finally:
        child.close()
    assert child.process.exitcode == -signal.SIGKILL


class _Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickle calls it with one argument: fails
        super().__init__(f"{a}/{b}")


@pytest.mark.parametrize(
    ("exc", "expected", "match"),
    [
        (ValueError("exclude_uids 'x.parquet': file not found"), ValueError, "x.parquet"),
        (_Unpicklable(1, 2), "TrainProcessError", r"_Unpicklable: 1/2"),
        (SystemExit(143), "TrainProcessError", r"SystemExit: 143"),
    ],
)
def test_child_errors_come_back_as_their_type_or_a_named_train_process_error(
    exc: BaseException, expected: Any, match: str
) -> None:
    """What the child sends (`_exception_message`) and the parent raises (`raise_child_error`):
    a SystemExit of the child (it was terminated) must not exit the parent."""
    from tasks.train import local

    try:
        raise exc
    except BaseException as caught:
        message = local._exception_message(caught)
    pickle.dumps(message)  # it crosses the pipe
    kind = local.TrainProcessError if expected == "TrainProcessError" else expected
    with pytest.raises(kind, match=match) as info:
        local.raise_child_error(*message)
    assert isinstance(info.value.__cause__, local.ChildTraceback)
    assert "raise exc" in info.value.__cause__.text


def _start_cli(tmp_path: Path, shards: Path, steps: int) -> tuple[subprocess.Popen[bytes], Path]:
    """`clipmill run train` (python -m tasks.cli) in its own session, checkpointing every 2 steps."""
    params = _params_file(tmp_path, shards, steps=steps, checkpoint_every=2)
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "cli.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.cli", "run", "train", "-p", str(params)],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, tmp_path / "runs"


def _training_child(proc: subprocess.Popen[bytes], runs: Path, timeout: float = 240) -> Any:
    """The command's training process, once it has written its first checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the command ended early ({proc.returncode})")
        if list(runs.glob("*/checkpoint_*")):
            kids = [
                k
                for k in psutil.Process(proc.pid).children()
                if k.cmdline()[:1] == [sys.executable] or "python" in k.name()
            ]
            if kids:
                return kids[0]
        time.sleep(0.2)
    raise AssertionError("no checkpoint written in time")


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)]
)
def test_a_killed_command_leaves_no_training_process(
    tmp_path: Path, shards_dir: Path, sig: int
) -> None:
    """SIGKILL (no cleanup at all: the child dies by its parent-death signal) and SIGTERM (the
    CLI's SystemExit: the parent terminates the child, then exits 143)."""
    proc, runs = _start_cli(tmp_path, shards_dir, steps=4000)
    try:
        child = _training_child(proc, runs)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == (-sig if sig == signal.SIGKILL else 128 + sig)
        _, alive = psutil.wait_procs([child], timeout=30)
        assert not alive, f"training process {child.pid} outlived the command"
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the session
        proc.wait()
