"""SIGKILL a crawl mid-run, start it again: the result has exactly the uids of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tasks import PROJECT_ROOT
from tasks.pool import open_pool
from tests.crawl.outputs import shard_uids

N_URLS = 60
SHARD = 10


def _params(tmp: Path, base: str, name: str) -> Path:
    urls = tmp / "urls.parquet"
    if not urls.exists():
        import pandas as pd

        pd.DataFrame(
            {
                "url": [f"{base}delay/150/i{i}.jpg" for i in range(N_URLS)],
                "caption": [f"image number {i}" for i in range(N_URLS)],
            }
        ).to_parquet(urls)
    params = yaml.safe_load((PROJECT_ROOT / "params/crawl.yaml").read_text())
    params["inputs"].update(
        sources=["urls"],
        url_lists=[str(urls)],
        sample_site_dir="",
        archives_index="",
        shard_size=SHARD,
    )
    params["policy"]["allow_addresses"] = ["127.0.0.1"]
    params["download"].update(shards_in_flight=1, connections_per_shard=2)
    params["output"].update(
        output_dir=str(tmp / name), lancedb_uri=str(tmp / f"{name}_lancedb"), progress=False
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CLIPMILL_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "CLIPMILL_MLFLOW_ARTIFACT_ROOT": (tmp / "art").as_uri(),
        "CLIPMILL_ROOT": str(tmp),
        "CLIPMILL_RAY_NUM_CPUS": "1",
        "CLIPMILL_RAY_OBJECT_STORE_MB": "128",
    }


def _cli(params: Path, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "run", "crawl", "-p", str(params)],
        cwd=PROJECT_ROOT,
        env=_env(tmp),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _done(out: Path) -> int:
    shards = out / "shards"
    return (
        len([p for p in shards.glob("*.done") if p.name[:5].isdigit() and p.name.count(".") == 1])
        if shards.exists()
        else 0
    )


# Not marked slow although it takes ~40-120 s: it is an acceptance test CI must run.
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, bad_server):
    killed = _params(tmp_path, bad_server.base, "killed")
    proc = _cli(killed, tmp_path)
    deadline = time.monotonic() + 120
    while _done(tmp_path / "killed") < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:] if proc.stdout else ""
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started, mid-shard
    proc.wait(30)
    at_kill = _done(tmp_path / "killed")
    assert 2 <= at_kill < N_URLS // SHARD, "the kill must land mid-run"

    again = _cli(killed, tmp_path)
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out.decode()[-3000:]
    metrics = json.loads((tmp_path / "metrics/crawl.json").read_text())
    assert metrics["shards_skipped"] >= at_kill and metrics["plan_reused"] == 1

    clean = _params(tmp_path, bad_server.base, "clean")
    ref = _cli(clean, tmp_path)
    out, _ = ref.communicate(timeout=180)
    assert ref.returncode == 0, out.decode()[-3000:]

    tar_k, parquet_k = shard_uids(tmp_path / "killed")
    tar_c, parquet_c = shard_uids(tmp_path / "clean")
    assert tar_k == tar_c and parquet_k == parquet_c  # same uids, none duplicated, none lost
    assert len(tar_k) == len(set(tar_k)) == N_URLS
    pool = open_pool(str(tmp_path / "killed_lancedb")).to_arrow().column("uid").to_pylist()
    assert sorted(pool) == tar_c
