"""The fault cases every stage suite runs, written once: SIGKILL at a seeded random moment then
rerun until done (CLI or `dvc repro`), SIGTERM then a clean stop, a Ray worker killed mid-stage.
Each compares with an uninterrupted run (the `reference` fixture of the suite) and records its
outcome with tests/faults/reliability.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.faults.harness import (
    DVC_DOORS,
    StageProject,
    dvc_lock_out,
    dvc_noop,
    half_written,
    kill_at_random,
    reap,
)
from tests.faults.reliability import lost_and_duplicated, record
from tests.faults.stages import Result, Spec


@dataclass
class Reference:
    """An uninterrupted run: its result, how long it ran, how long before it started working."""

    result: Result
    seconds: float
    working_after: float


def reference(spec: Spec, root: Path) -> Reference:
    """Run the stage once, uninterrupted, through the CLI."""
    project = spec.build(root)
    proc = project.start("cli")
    started = time.monotonic()
    working_after = -1.0
    while proc.poll() is None:
        if working_after < 0 and (root / spec.started).exists():
            working_after = time.monotonic() - started
        time.sleep(0.05)
    seconds = time.monotonic() - started
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    reap(proc)
    if proc.returncode != 0:  # e.g. Ray timing out on a loaded machine: the protocol reruns
        seconds = project.finish("cli")
        working_after = 0.0
    assert (root / spec.out).exists(), out[-3000:]
    return Reference(spec.result(project), seconds, max(working_after, 0.0))


def compare(spec: Spec, ref: Result, got: Result) -> tuple[int, int]:
    """Assert `got` is the uninterrupted run's result; returns (uids lost, uids duplicated)."""
    lost, duplicated = lost_and_duplicated(ref.uids, got.uids)
    assert (lost, duplicated) == (0, 0), f"{spec.stage}: {lost} uids lost, {duplicated} duplicated"
    assert got.files.keys() == ref.files.keys(), (
        f"{spec.stage}: files differ: only in the resumed run "
        f"{sorted(got.files.keys() - ref.files.keys())}, only in the uninterrupted one "
        f"{sorted(ref.files.keys() - got.files.keys())}"
    )
    changed = sorted(k for k in ref.files if ref.files[k] != got.files[k])
    assert not changed, f"{spec.stage}: contents differ from an uninterrupted run: {changed}"
    assert got.pool == ref.pool, f"{spec.stage}: the pool's columns differ"
    return lost, duplicated


def _recorded(
    spec: Spec, door: str, case: str, kills: int, body: Callable[[], tuple[int, int]]
) -> None:
    """Run `body` (returns lost, duplicated); record its outcome whatever it was."""
    try:
        lost, duplicated = body()
    except BaseException as exc:
        record(spec.stage, door, case, f"failed: {str(exc)[:300]}", -1, -1, kills)
        raise
    record(spec.stage, door, case, "passed", lost, duplicated, kills)


def sigkill_case(spec: Spec, door: str, seed: int, tmp: Path, ref: Reference) -> None:
    """SIGKILL the stage (its whole process group) at a seeded random moment while it works;
    rerun the same door until done; the result equals the uninterrupted run's. Under DVC the
    resumed output is then versioned: the lock names it and a third repro does nothing."""
    kills = 0
    scale = 1.0
    project: StageProject | None = None
    for attempt in range(4):  # a kill after the stage already finished proves nothing: again
        root = tmp / f"try{attempt}"
        root.mkdir()
        project = spec.build(root)
        if door in DVC_DOORS:
            project.init_dvc()
        window = max(ref.seconds - ref.working_after, 1.0) * scale
        landed = kill_at_random(
            project,
            door,
            seed * 100 + attempt,
            window,
            ready=lambda r=root: (r / spec.started).exists(),  # type: ignore[misc]
        )
        if landed:
            kills += 1
            break
        scale /= 2
    assert project is not None and kills == 1, f"{spec.stage}: no kill landed mid-run"
    case = f"sigkill seed {seed}"

    def body() -> tuple[int, int]:
        assert project is not None
        for rel in spec.planted:  # what a kill inside a write leaves: the rerun sweeps it
            path = project.root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"half written")
        project.finish(door)
        got = spec.result(project)
        result = compare(spec, ref.result, got)
        assert not half_written(project.root / "data"), half_written(project.root / "data")
        if door in DVC_DOORS:
            assert dvc_lock_out(project.root, spec.stage)["path"] == spec.out
            assert dvc_noop(project), "a third dvc repro ran the stage again"
        return result

    _recorded(spec, door, case, kills, body)


def sigterm_case(spec: Spec, tmp: Path, ref: Reference, seed: int = 7) -> None:
    """SIGTERM to the stage process mid-run (what an orchestrator's cancel sends): it exits
    promptly and leaves nothing half-written (no temporary file or folder anywhere under data/);
    the rerun completes it with the uninterrupted run's result."""
    root = tmp / "sigterm"
    root.mkdir()
    project = spec.build(root)
    proc = project.start("cli")
    terms = 0
    try:
        deadline = time.monotonic() + 300
        while not (root / spec.started).exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the stage never started working"
            time.sleep(0.05)
        window = max(ref.seconds - ref.working_after, 1.0)
        time.sleep(random.Random(seed).uniform(0.1, 0.5) * window)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            terms = 1
        proc.wait(90)  # prompt: a stage ignoring SIGTERM fails here
    finally:
        with contextlib.suppress(Exception):
            if proc.poll() is None:
                proc.kill()
        reap(proc)
        proc.wait(30)

    def body() -> tuple[int, int]:
        left = half_written(root / "data")
        assert not left, f"{spec.stage}: SIGTERM left half-written files: {left}"
        if terms:
            assert proc.returncode != 0, "a stage stopped by SIGTERM must not report success"
        project.finish("cli")
        return compare(spec, ref.result, spec.result(project))

    _recorded(spec, "cli", "sigterm", terms, body)


def ray_workers(pid: int, exclude: tuple[str, ...] = ("IDLE",)) -> list[tuple[int, str]]:
    """(pid, name) of the Ray worker processes (`ray::<task or actor>`) under process `pid` (the
    stage's driver: its raylet's workers are its descendants) that run something (idle workers
    and Ray's own agents left out, as are actors still in their constructor: the kill must hit
    a worker at work)."""
    import psutil

    found = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for proc in children:
        try:
            cmd = " ".join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if not cmd.startswith("ray::"):
            continue
        name = cmd.split()[0][len("ray::") :]
        if any(x in name for x in (*exclude, "DashboardAgent", "RuntimeEnvAgent", "__init__")):
            continue
        found.append((proc.pid, name))
    return found


def ray_worker_case(
    spec: Spec,
    tmp: Path,
    ref: Reference,
    wanted: tuple[str, ...],
    ready: Callable[[Path], bool] | None = None,
    shows: str = "",
) -> None:
    """SIGKILL one Ray worker process (a task or actor whose name holds one of `wanted`) while
    the stage runs, once `ready(root)` holds (e.g. a checkpoint exists): Ray retries the task /
    restarts the actor (Ray Train restarts its worker group from the last checkpoint), the
    stage completes on its own (no rerun), its output holds the regex `shows` (e.g. that it
    resumed) and its result equals the uninterrupted run's."""
    import re

    root = tmp / "rayworker"
    root.mkdir()
    project = spec.build(root)
    proc = project.start("cli")
    killed: list[str] = []
    try:
        deadline = time.monotonic() + 400
        while proc.poll() is None and not killed and time.monotonic() < deadline:
            if ready is not None and not ready(root):
                time.sleep(0.02)
                continue
            for pid, name in ray_workers(proc.pid):
                if any(w in name for w in wanted):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(name)
                    break
            time.sleep(0.02)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        reap(proc)
    text = out.decode(errors="replace")

    def body() -> tuple[int, int]:
        assert killed, f"{spec.stage}: no Ray worker matching {wanted} seen to kill"
        assert proc.returncode == 0, (
            f"the stage did not survive the worker's death:\n{text[-3000:]}"
        )
        assert not shows or re.search(shows, text), f"no {shows!r} in:\n{text[-3000:]}"
        return compare(spec, ref.result, spec.result(project))

    # a stable case name (the log keeps the last line per case); which worker it hit is in the
    # test's output when it fails
    _recorded(spec, "ray-worker", "sigkill a busy Ray worker", len(killed), body)
