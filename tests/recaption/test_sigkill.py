"""Exact resume after SIGKILL: the stage process (and its Ray) is killed once some blocks are
finished; the rerun recaptions none of the finished rows again (the loopback chat server counts
the requests per image) and the pool ends exactly as after an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks import PROJECT_ROOT
from tests.recaption.chatserver import ChatServer
from tests.recaption.conftest import build_pool
from tests.recaption.test_stage import _pool_columns

pytestmark = pytest.mark.slow  # three stage processes, each starting Ray; the fast variant of
# the same resume path is test_stage.py::test_resume_recaptions_only_unfinished_blocks

ALTS = [f"ok picture number {i}" for i in range(12)]


def _command(pool, server: ChatServer) -> list[str]:
    overrides = pool.overrides(
        backends=["openai", "composer"],
        **{"openai.base_url": server.base_url, "openai.concurrency": 1, "report.examples": 0},
    )
    cmd = [
        str(Path(sys.executable).with_name("clipmill")),
        "run",
        "recaption",
        "-p",
        str(PROJECT_ROOT / "params/recaption.yaml"),
    ]
    for key, value in overrides.items():
        cmd += ["-s", f"{key}={value}".replace("'", '"')]
    return cmd


def _env(pool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPMILL_", "MLFLOW_"))}
    env.update(
        CLIPMILL_ROOT=str(pool.root),
        CLIPMILL_LANCEDB_URI=pool.lance_uri,
        CLIPMILL_MLFLOW_TRACKING_URI=f"sqlite:///{pool.root / 'mlflow.db'}",
        CLIPMILL_RAY_NUM_CPUS="2",
        CLIPMILL_RAY_OBJECT_STORE_MB="256",
    )
    return env


def _finish(pool, server: ChatServer) -> None:
    proc = subprocess.run(
        _command(pool, server), env=_env(pool), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_sigkilled_run_resumes_exactly(tmp_path):
    whole = build_pool(tmp_path / "whole", ALTS)
    with ChatServer() as server:
        _finish(whole, server)
    killed = build_pool(tmp_path / "killed", ALTS)
    parts = killed.root / "recaption" / "parts"
    with ChatServer(delay_s=0.3) as server:
        proc = subprocess.Popen(
            _command(killed, server), env=_env(killed), start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 300
        while not list(parts.glob("*/*.done")) and time.monotonic() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        finished = [Path(str(m)[: -len(".done")]) for m in parts.glob("*/*.done")]
        assert finished and len(finished) < 5, "the kill must land mid-run"
        import pyarrow.parquet as pq

        done_uids = {u for f in finished for u in pq.read_table(f).column("uid").to_pylist()}
        _finish(killed, server)
        total = dict(server.requests)
    whole_rows, killed_rows = _pool_columns(whole.lance_uri), _pool_columns(killed.lance_uri)
    assert killed_rows == whole_rows
    uid_alt = {f"g{i:03d}": alt for i, alt in enumerate(ALTS)}
    for uid in done_uids & set(uid_alt):
        assert total[uid_alt[uid]] == 1, f"{uid} was recaptioned again after the kill"
    assert set(total) == set(ALTS)
