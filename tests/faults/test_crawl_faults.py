"""Crawl killed with SIGKILL under `dvc repro` and under the Prefect pipeline flow
(`python -m flows.pipeline --stages crawl`, which runs `dvc repro` per stage) resumes through the
same door: DVC's `persist` keeps the finished shards, the rerun downloads only the rest, and the
result has exactly the uids of the input list, none lost, none duplicated; DVC then versions the
output (a third repro does nothing) and a params change under DVC replaces the output instead of
refusing it. A Ray shard worker (`ray::stream_shard`) killed mid-shard is retried by Ray
(`download.max_retries`) and the crawl completes unaided.

(The command-line door is here and in tests/crawl/test_resume.py.)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tasks import PROJECT_ROOT
from tasks.crawl.records import make_uid
from tests.crawl.outputs import shard_uids
from tests.crawl.servers import ThreadServer, bad_app
from tests.faults.reliability import lost_and_duplicated, record

N_URLS = 60
SHARD = 10


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    s = ThreadServer(bad_app)
    yield s
    s.close()


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _env(root: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLIPMILL_", "MLFLOW_", "DVC_", "PREFECT_"))
    }
    env.update(
        PREFECT_HOME=str(root / ".prefect"),  # the flow door: its own ephemeral Prefect
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        CLIPMILL_ROOT=str(root),
        CLIPMILL_MLFLOW_TRACKING_URI=f"sqlite:///{root / 'mlflow.db'}",
        CLIPMILL_MLFLOW_ARTIFACT_ROOT=(root / "art").as_uri(),
        CLIPMILL_LANCEDB_URI=str(root / "lancedb"),
        CLIPMILL_RAY_NUM_CPUS="1",
        CLIPMILL_RAY_OBJECT_STORE_MB="128",
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    return env


def _project(root: Path, base: str) -> list[str]:
    """A git + DVC repo holding the code, a URL list, params and dvc.yaml's crawl stage."""
    for code in ("tasks", "flows"):  # the flow door runs `python -m flows.pipeline` here
        shutil.copytree(
            PROJECT_ROOT / code, root / code, ignore=shutil.ignore_patterns("__pycache__")
        )
    urls = [f"{base}delay/150/i{i}.jpg" for i in range(N_URLS)]
    (root / "inputs").mkdir()
    (root / "inputs/urls.txt").write_text("\n".join(urls) + "\n")
    params = yaml.safe_load((PROJECT_ROOT / "params/crawl.yaml").read_text())
    params["inputs"].update(
        sources=["urls"],
        url_lists=["inputs/urls.txt"],
        sample_site_dir="",
        archives_index="",
        shard_size=SHARD,
    )
    params["policy"]["allow_addresses"] = [base.rstrip("/")]  # the test server's origin only
    params["download"].update(shards_in_flight=1, connections_per_shard=2)
    params["output"].update(progress=False)
    (root / "params").mkdir()
    (root / "params/crawl.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stage = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["crawl"]
    stage["deps"] = ["tasks/crawl", "inputs/urls.txt"]
    assert stage["outs"][0] == {"data/crawl": {"persist": True}}  # what the project declares
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"crawl": stage}}))
    env = _env(root)
    (root / ".gitignore").write_text("mlflow.db\nart/\nlancedb/\nmlruns/\n.prefect/\n")
    who = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    for cmd in (
        ["git", "init", "-q"],
        [_bin("dvc"), "init", "-q"],
        ["git", "add", "-A"],
        ["git", *who, "commit", "-q", "-m", "copy"],
    ):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return urls


def _done(out: Path) -> int:
    shards = out / "shards"
    if not shards.exists():
        return 0
    return len(
        [p for p in shards.glob("*.done") if p.name[:5].isdigit() and p.name.count(".") == 1]
    )


DOORS = ("dvc", "prefect")  # `dvc repro crawl`, or the pipeline flow running it


def _door(door: str) -> list[str]:
    if door == "dvc":
        return [_bin("dvc"), "repro", "crawl"]
    if door == "prefect":
        return [sys.executable, "-m", "flows.pipeline", "--stages", "crawl"]
    raise ValueError(f"door {door!r}: expected one of {DOORS}")


RAY_BOOT_FAILED = "Ray failed to start"  # a local Ray timing out on a loaded machine


def _repro(root: Path, door: str = "dvc", tries: int = 3) -> subprocess.CompletedProcess[str]:
    """Run the door until it succeeds; only a local Ray that timed out while starting (not what
    is under test) is retried, any other failure fails the test."""
    for _ in range(tries):
        proc = subprocess.run(
            _door(door),
            cwd=root,
            env=_env(root),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode == 0:
            return proc
        text = f"{proc.stdout}\n{proc.stderr}"
        assert RAY_BOOT_FAILED in text, _why(text)
    raise AssertionError(f"{_door(door)}: no success in {tries} tries:\n{text[-3000:]}")


def _why(text: str) -> str:
    """What a failed run said: its error lines (the stage's own output can be far above the
    tail when the flow door prints Prefect's logs after it), then its tail."""
    errors = [line for line in text.splitlines() if "Error" in line or "error:" in line]
    return "\n".join(errors[-20:]) + "\n...\n" + text[-2500:]


def _start_until_shards(root: Path, door: str, shards: int) -> subprocess.Popen[bytes]:
    """Start the door and wait until `shards` shards are done; a start that died because the
    local Ray timed out while booting is started again (up to 3 times)."""
    out = root / "data/crawl"
    for _ in range(3):
        proc = subprocess.Popen(
            _door(door),
            cwd=root,
            env=_env(root),
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while _done(out) < shards and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is None:
            return proc
        text = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        assert RAY_BOOT_FAILED in text, _why(text)
    raise AssertionError(f"{_door(door)}: Ray failed to start 3 times")


@pytest.mark.slow  # over a minute per door; the stages' DVC and Prefect doors run by default
@pytest.mark.parametrize("door", DOORS)
def test_sigkill_under_a_dvc_door_then_the_same_door_resumes(
    tmp_path: Path, server: ThreadServer, door: str
) -> None:
    root = tmp_path / "project"
    root.mkdir()
    urls = _project(root, server.base)
    out = root / "data/crawl"
    proc = _start_until_shards(root, door, 2)
    # dvc (and the flow with its ephemeral Prefect server), the clipmill it started and Ray
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    at_kill = _done(out)
    assert 2 <= at_kill < N_URLS // SHARD, "the kill must land mid-run"

    # What a kill inside an atomic write leaves (planted, as the kill may land elsewhere).
    (out / "shards/.00000.tar.killed.tmp").write_bytes(b"half a tar")
    _repro(root, door)  # persist kept the finished shards: they are not downloaded again
    assert not list(out.rglob("*.tmp"))  # swept: DVC must not version it
    metrics = json.loads((root / "metrics/crawl.json").read_text())
    assert metrics["plan_reused"] == 1 and metrics["shards_skipped"] >= at_kill
    tar_uids, parquet_uids = shard_uids(out)
    expected = sorted(make_uid(u) for u in urls)
    _record(door, "sigkill after 2 shards", expected, tar_uids, 1)
    assert tar_uids == parquet_uids == expected  # none lost, none duplicated
    from tasks.pool import open_pool

    pool = open_pool(str(root / "lancedb")).to_arrow().column("uid").to_pylist()
    assert sorted(pool) == expected

    # DVC versions the result: the lock holds the output's hash, a third repro does nothing.
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["crawl"]["outs"][0]["path"] == "data/crawl"
    again = _repro(root)
    assert "didn't change" in again.stdout or "up to date" in again.stdout, again.stdout
    if door != "dvc":
        return

    # A params change under DVC: DVC judged the output stale, the crawl replaces it (no refusal).
    params = yaml.safe_load((root / "params/crawl.yaml").read_text())
    params["inputs"]["shard_size"] = 30
    (root / "params/crawl.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _repro(root)
    assert _done(out) == 2 and shard_uids(out)[0] == expected


def _cli(root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.cli", "run", "crawl"],
        cwd=root,
        env=_env(root),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish(root: Path, tries: int = 3) -> None:
    """Rerun until done (the issue's protocol): on a machine loaded by other jobs a local Ray
    can time out while starting, which is not the resume under test; any other failure, or
    three in a row, fails the test."""
    for _ in range(tries):
        proc = _cli(root)
        out, _ = proc.communicate(timeout=300)
        text = out.decode()
        if proc.returncode == 0:
            return
        assert "Ray failed to start" in text, text[-3000:]
    raise AssertionError(f"no successful rerun in {tries} tries:\n{text[-3000:]}")


def _record(door: str, case: str, expected: list[str], got: list[str], kills: int) -> None:
    """The case's line for docs/RELIABILITY.md (tests/faults/reliability.py)."""
    lost, duplicated = lost_and_duplicated(expected, got)
    outcome = "passed" if (lost, duplicated) == (0, 0) else "failed: uids lost or duplicated"
    record("crawl", door, case, outcome, lost, duplicated, kills)


def _check_complete(
    root: Path, urls: list[str], door: str = "cli", case: str = "", kills: int = 1
) -> None:
    from tasks.pool import open_pool

    out = root / "data/crawl"
    tar_uids, parquet_uids = shard_uids(out)
    expected = sorted(make_uid(u) for u in urls)
    _record(door, case, expected, tar_uids, kills)
    assert tar_uids == parquet_uids == expected  # none lost, none duplicated
    assert not list(out.rglob("*.tmp"))
    pool = open_pool(str(root / "lancedb")).to_arrow().column("uid").to_pylist()
    assert sorted(pool) == expected


@pytest.mark.parametrize(
    "seed", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(3, marks=pytest.mark.slow)]
)
def test_sigkill_at_a_random_point_then_cli_resumes(
    tmp_path: Path, server: ThreadServer, seed: int
) -> None:
    """SIGKILL the CLI at a seeded random moment (planning, mid-shard, between shards), rerun:
    the result is the whole input list, once."""
    import random

    urls = _project(tmp_path, server.base)
    proc = _cli(tmp_path)
    time.sleep(random.Random(seed).uniform(3.0, 12.0))
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    _finish(tmp_path)
    _check_complete(tmp_path, urls, "cli", f"sigkill seed {seed}", int(killed))


def test_sigterm_stops_cleanly_and_the_rerun_completes(
    tmp_path: Path, server: ThreadServer
) -> None:
    """SIGTERM to the CLI mid-run: it exits promptly, every shard marked done is whole and
    readable, nothing half-written remains under a final name; the rerun completes it."""
    urls = _project(tmp_path, server.base)
    out = tmp_path / "data/crawl"
    proc = _cli(tmp_path)
    deadline = time.monotonic() + 180
    while _done(out) < 1 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    finally:  # whatever the driver left of its Ray processes goes with its session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    for marker in (out / "shards").glob("*.done"):
        if marker.name.count(".") != 1:
            continue
        base = marker.with_suffix("")
        assert pq.read_table(base.with_suffix(".parquet")).num_rows == SHARD
        with tarfile.open(base.with_suffix(".tar")) as tar:
            assert len(tar.getnames()) == 3 * SHARD
        assert json.loads(Path(f"{base}_stats.json").read_text())["count"] == SHARD
    _finish(tmp_path)
    _check_complete(tmp_path, urls, "cli", "sigterm")


def _kill_a_shard_worker(root: Path) -> tuple[subprocess.Popen[bytes], list[str], str]:
    """Start the CLI in `root`; once a first shard is done, SIGKILL the Ray worker running a
    shard task. Returns the finished process, what was killed, and its output."""
    from tests.faults.cases import ray_workers

    out = root / "data/crawl"
    proc = _cli(root)
    killed: list[str] = []
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and not killed and time.monotonic() < deadline:
            if _done(out) >= 1:
                for pid, name in ray_workers(proc.pid):
                    if name.startswith("stream_shard"):
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                            killed.append(name)
                        break
            time.sleep(0.02)
        text, _ = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, killed, text.decode(errors="replace")


def test_a_killed_ray_shard_worker_is_retried_and_the_crawl_completes(
    tmp_path: Path, server: ThreadServer
) -> None:
    """SIGKILL the Ray worker running a shard (`ray::stream_shard`) once a first shard is done:
    Ray retries the shard task (`download.max_retries`, default 3), the retried shard rewrites
    its files whole, and the crawl succeeds unaided (no rerun) with every uid once."""
    for attempt in range(3):  # a local Ray timing out while booting is not what is under test
        root = tmp_path / f"try{attempt}"
        root.mkdir()
        urls = _project(root, server.base)
        proc, killed, log = _kill_a_shard_worker(root)
        if killed or proc.returncode == 0 or RAY_BOOT_FAILED not in log:
            break
    if not killed or proc.returncode != 0:
        why = "no shard worker seen" if not killed else "the crawl did not survive the kill"
        record("crawl", "ray-worker", "sigkill a shard worker", f"failed: {why}", -1, -1, 0)
    assert killed, f"no ray::stream_shard worker seen running:\n{log[-3000:]}"
    assert proc.returncode == 0, f"the crawl did not survive the worker's death:\n{log[-3000:]}"
    _check_complete(root, urls, "ray-worker", "sigkill a shard worker", len(killed))
