"""`clipmill lineage`: the tree from an evaluation back to the crawl, on a real pipeline run.

The full walk needs a store in which a whole pipeline ran (crawl, decontaminate, teacher,
curate, train, evaluate). It reads a COPY of the MLflow store of a `make demo` checkout:
$LINEAGE_DEMO_ROOT, or this checkout when `make demo` ran here (skipped otherwise).
Bad references are refused with a message naming them, on any store."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tasks import PROJECT_ROOT
from tests.operate.conftest import project_env

DEMO = Path(os.environ.get("LINEAGE_DEMO_ROOT", PROJECT_ROOT))


def _lineage(ref: str, root: Path, store: Path) -> subprocess.CompletedProcess[str]:
    env = project_env(root, CLIPMILL_MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "tasks", "lineage", ref],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = DEMO / "mlflow.db"
    if not store.exists():
        pytest.skip(f"no pipeline run to trace: {store} absent (run `make demo`)")
    copy = tmp_path_factory.mktemp("lineage") / "mlflow.db"
    shutil.copy(store, copy)
    return copy


def _query(store: Path, sql: str) -> list[tuple[str, ...]]:
    with sqlite3.connect(store) as db:
        return [tuple(str(c) for c in row) for row in db.execute(sql)]


def test_lineage_of_an_evaluation_walks_back_to_the_crawl(demo_store: Path) -> None:
    rows = _query(
        demo_store,
        "select run_uuid from runs r join tags t using (run_uuid) where t.key = 'clipmill.stage' "
        "and t.value = 'evaluate' and r.status = 'FINISHED' and exists (select 1 from tags p "
        "where p.run_uuid = r.run_uuid and p.key = 'mlflow.parentRunId') "
        "order by r.start_time desc limit 1",
    )
    assert rows, "the demo store has no evaluate run under a pipeline run"
    (evaluation,) = rows[0]
    proc = _lineage(evaluation, DEMO, demo_store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tree = proc.stdout
    versions = _query(demo_store, "select name, version, run_id from model_versions")
    order = ["evaluation " + evaluation, "model version models:/", "training run ", "uid list "]
    order += ["DVC md5 ", "curate run ", "curate params (", "crawl run "]
    positions = [tree.find(text) for text in order]
    assert all(p >= 0 for p in positions), (order, tree[:4000])
    assert positions == sorted(positions), tree[:4000]
    # the model versions shown are the registry's, with the training run that made each
    for name, version, run_id in versions:
        line = f"model version models:/{name}/{version}\n"
        if line in tree:
            after = tree[tree.index(line) :]
            assert f"training run {run_id}" in after.splitlines()[1], after[:500]
    crawl_runs = {
        r[0]
        for r in _query(
            demo_store,
            "select run_uuid from tags where key = 'clipmill.stage' and value = 'crawl'",
        )
    }
    assert any(f"crawl run {run}" in tree for run in crawl_runs)


def test_lineage_of_a_model_version_starts_at_its_training_run(demo_store: Path) -> None:
    name, version, run_id = _query(
        demo_store, "select name, version, run_id from model_versions limit 1"
    )[0]
    proc = _lineage(f"{name}/{version}", DEMO, demo_store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"model version models:/{name}/{version}"
    assert run_id in lines[1] and "training run" in lines[1]


def test_lineage_refuses_a_reference_naming_it(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    for ref, says in [
        ("not-a-run", "neither an MLflow run id"),
        ("0" * 32, "not found in the tracking store"),
        ("no-such-model/3", "not found in the tracking store"),
    ]:
        proc = _lineage(ref, tmp_path, store)
        assert proc.returncode == 1, proc.stdout
        assert ref in proc.stderr and says in proc.stderr, proc.stderr[-2000:]
