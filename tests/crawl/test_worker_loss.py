"""SIGKILL the Ray worker running a shard (`ray::stream_shard`) mid-shard: with retries
(download.max_retries) Ray reruns the shard and the crawl completes on its own with exactly the
uids of an uninterrupted run (every URL of the list: all succeed), none duplicated in the
shards or the pool; with max_retries=0 it fails with one line naming the shard.

(The driver killed is tests/crawl/test_resume.py; the reliability suite, tests/faults, has the
same worker kill among its cases.)
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tasks import PROJECT_ROOT
from tasks.crawl.records import make_uid
from tasks.pool import open_pool
from tests.crawl.outputs import shard_uids
from tests.faults.cases import ray_workers

N_URLS = 40
SHARD = 10
DELAY_MS = 300  # per image, 2 connections: a shard takes ~1.5 s, room to land the kill in it


def _urls(base: str, name: str) -> list[str]:
    return [f"{base}delay/{DELAY_MS}/wl-{name}-{i}.jpg" for i in range(N_URLS)]


def _params(tmp: Path, base: str, name: str, retries: int) -> Path:
    urls = tmp / f"{name}.txt"
    urls.write_text("\n".join(_urls(base, name)) + "\n")
    params = yaml.safe_load((PROJECT_ROOT / "params/crawl.yaml").read_text())
    params["inputs"].update(
        sources=["urls"],
        url_lists=[str(urls)],
        sample_site_dir="",
        archives_index="",
        shard_size=SHARD,
    )
    params["policy"]["allow_addresses"] = ["127.0.0.1"]
    params["download"].update(shards_in_flight=1, connections_per_shard=2, max_retries=retries)
    params["output"].update(
        output_dir=str(tmp / name), lancedb_uri=str(tmp / f"{name}_lancedb"), progress=False
    )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _cli(params: Path, tmp: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "CLIPMILL_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "CLIPMILL_MLFLOW_ARTIFACT_ROOT": (tmp / "art").as_uri(),
        "CLIPMILL_ROOT": str(tmp),
        "CLIPMILL_RAY_NUM_CPUS": "1",
        "CLIPMILL_RAY_OBJECT_STORE_MB": "128",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "run", "crawl", "-p", str(params)],
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _done(out: Path) -> int:
    shards = out / "shards"
    if not shards.exists():
        return 0
    return len([p for p in shards.glob("*.done") if p.name[:5].isdigit()])


def _kill_shard_worker(proc: subprocess.Popen, out: Path) -> int:
    """Wait until one shard is done and the next is under way, SIGKILL the `ray::stream_shard`
    process running it; return how many shards were done then."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        done = _done(out)
        workers = [pid for pid, name in ray_workers(proc.pid) if name == "stream_shard"]
        if done >= 1 and workers:
            time.sleep(0.4)  # into the next shard's downloads
            if _done(out) == done:
                os.kill(workers[0], signal.SIGKILL)
                return done
        time.sleep(0.05)
    output = proc.stdout.read().decode()[-3000:] if proc.stdout and proc.poll() is not None else ""
    pytest.fail(f"no shard worker to kill mid-shard (exit {proc.poll()}): {output}")


@pytest.mark.slow  # the same kill runs by default in tests/faults/test_crawl_faults.py
def test_worker_killed_mid_shard_is_rerun_and_nothing_is_duplicated(tmp_path, bad_server):
    name = "retried"
    proc = _cli(_params(tmp_path, bad_server.base, name, retries=3), tmp_path)
    try:
        at_kill = _kill_shard_worker(proc, tmp_path / name)
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log.decode()[-3000:]  # completed on its own, no rerun by hand
    assert at_kill < N_URLS // SHARD
    # the killed shard was downloaded again: some of its URLs were requested twice
    paths = [u.split("/", 3)[3] for u in _urls(bad_server.base, name)]
    assert any(bad_server.hits[f"/{p}"] >= 2 for p in paths)

    expected = sorted(make_uid(u) for u in _urls(bad_server.base, name))
    tar_uids, parquet_uids = shard_uids(tmp_path / name)
    assert tar_uids == parquet_uids == expected  # same uids as an uninterrupted run, once each
    pool = open_pool(str(tmp_path / f"{name}_lancedb")).to_arrow().column("uid").to_pylist()
    assert sorted(pool) == expected
    assert not list((tmp_path / name / "shards").glob("*.tmp"))
    assert not list((tmp_path / name / "shards").glob(".*.tmp"))


def test_without_retries_a_lost_worker_fails_naming_the_shard(tmp_path, bad_server):
    name = "no_retry"
    out = tmp_path / name
    proc = _cli(_params(tmp_path, bad_server.base, name, retries=0), tmp_path)
    try:
        at_kill = _kill_shard_worker(proc, out)
        log, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log.decode()
    assert proc.returncode != 0, text[-3000:]
    found = re.search(r"shard (\d{5}): its Ray worker died", text)
    assert found, text[-3000:]
    assert "download.max_retries=0" in text
    # the shard running at the kill: the first not done (or the one whose marker just landed)
    assert int(found.group(1)) in (at_kill - 1, at_kill)
    assert _done(out) < N_URLS // SHARD
