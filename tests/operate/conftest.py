"""The operated stack for tests/operate: an S3-compatible server (moto), PostgreSQL, an MLflow
server on it with its artifacts in S3, and a Prefect server, each on a free loopback port, each
stopped (its whole process group) when the module ends. Server logs are kept under the
session's temporary folder and printed on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tasks import PROJECT_ROOT
from tests.operate import servers

# A small slice of the real sample data (as tests/test_doors.py), so a stage run takes seconds.
SMALL_SAMPLE = {
    "openclipart_max_items": 40,
    "emoji_max_items": 40,
    "tuxpaint_max_items": 30,
    "gimp_max_pages": 6,
    "fashion_mnist_max_items": 60,
    "planted_count": 6,
}
BUCKET = "clipmill"


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")


@pytest.fixture(scope="module")
def s3(log_dir: Path) -> Iterator[servers.Server]:
    server = servers.start_s3(log_dir, buckets=(BUCKET,))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def postgres(log_dir: Path) -> Iterator[servers.Server]:
    try:
        server = servers.start_postgres(log_dir)
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mlflow_server(
    log_dir: Path, postgres: servers.Server, s3: servers.Server
) -> Iterator[servers.Server]:
    server = servers.start_mlflow(log_dir, postgres.url, f"s3://{BUCKET}/mlflow", s3.url)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prefect_server(
    log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[servers.Server]:
    server = servers.start_prefect(log_dir, tmp_path_factory.mktemp("prefect-home"))
    yield server
    server.stop()


def bin_path(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def make_project(root: Path, dvc_stages: tuple[str, ...] = ("sample",)) -> Path:
    """A throwaway copy of the project (code, prefect.yaml, small sample params, the named
    dvc.yaml stages) as its own git + DVC repo with one commit."""
    for name in ("tasks", "flows"):
        shutil.copytree(
            PROJECT_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(PROJECT_ROOT / "prefect.yaml", root / "prefect.yaml")
    (root / "params").mkdir()
    data = yaml.safe_load((PROJECT_ROOT / "params" / "sample.yaml").read_text())
    data.update(SMALL_SAMPLE)
    (root / "params" / "sample.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    stages = {name: dvc["stages"][name] for name in dvc_stages}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    env = project_env(root)
    for cmd in (["git", "init", "-q"], [bin_path("dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    shutil.copy(PROJECT_ROOT / ".dvc" / "config", root / ".dvc" / "config")
    who = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    for cmd in (["git", "add", "-A"], ["git", *who, "commit", "-q", "-m", "copy"]):
        subprocess.run(cmd, cwd=root, env=env, check=True)
    return root


def project_env(root: Path, **extra: str) -> dict[str, str]:
    """The environment of a command run in the project copy: its own root and SQLite MLflow
    store unless `extra` says otherwise, none of the caller's CLIPMILL_/MLFLOW_/PREFECT_ keys."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLIPMILL_", "MLFLOW_", "PREFECT_", "DVC_STAGE"))
    }
    env.update(
        CLIPMILL_ROOT=str(root),
        CLIPMILL_MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        CLIPMILL_RAY_NUM_CPUS="2",
        CLIPMILL_RAY_OBJECT_STORE_MB="256",
        PYTHONPATH=str(root),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    env.update(extra)
    return env
