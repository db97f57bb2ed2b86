"""A new SQLite MLflow store appears whole or not at all, even when its creator is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tasks import PROJECT_ROOT
from tasks.tracking import ensure_sqlite_store


def _usable(db) -> bool:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.create_experiment(f"probe-{time.time_ns()}")
    return client.get_experiment(exp).name.startswith("probe-")


def test_new_store_is_complete_and_leaves_no_temp_files(tmp_path):
    db = tmp_path / "runs" / "mlflow.db"
    ensure_sqlite_store(f"sqlite:///{db}", (tmp_path / "art").as_uri())
    assert db.is_file() and _usable(db)
    assert [p.name for p in db.parent.iterdir()] == ["mlflow.db"]
    before = db.stat().st_mtime_ns
    ensure_sqlite_store(f"sqlite:///{db}", (tmp_path / "art").as_uri())  # exists: untouched
    assert db.stat().st_mtime_ns == before


def test_creator_killed_mid_migration_leaves_no_broken_store(tmp_path):
    db = tmp_path / "mlflow.db"
    code = f"""
        from tasks.tracking import ensure_sqlite_store
        ensure_sqlite_store("sqlite:///{db}", "{(tmp_path / "art").as_uri()}")
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=PROJECT_ROOT, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".mlflow.db.*.creating")) and time.monotonic() < deadline:
        assert proc.poll() is None, "the creator ended before its temporary store appeared"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-migration: the temporary file is being built
    proc.wait(30)
    assert not db.exists()  # nothing half-built under the real name
    ensure_sqlite_store(f"sqlite:///{db}", (tmp_path / "art").as_uri())
    assert _usable(db)
