"""The fault-injection harness shared by the per-stage suites: a throw-away project root per
stage (params file, inputs, optionally git + DVC with the stage copied from the project's
dvc.yaml), the stage started through a door (`clipmill run <stage>` or `dvc repro <stage>`) in
its own process group, a signal at a seeded random moment, reruns until done, and a comparison
of what the stage left with an uninterrupted run's output.

Why subprocesses and process groups: SIGKILL must hit the real stage process and everything it
started (Ray's raylet, GCS and workers), as a crash or an OOM kill would; a process group per run
is what `os.killpg` takes down at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks import PROJECT_ROOT

# Files a run writes beside its outputs that never compare equal between two runs (wall-clock
# timings, figures carrying a creation date): checked for existence only.
VOLATILE_NAMES = frozenset({"summary.json", "index.json"})
VOLATILE_SUFFIXES = (".png",)


DVC_DOORS = (
    "dvc",
    "prefect",
)  # doors that run the stage through `dvc repro` (the flow does, per stage)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def set_dotted(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`data` with every `a.b.c: value` of `overrides` set (what `-s a.b.c=value` does)."""
    for key, value in overrides.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return data


@dataclass
class StageProject:
    """A temporary project root running one stage; `out` is its DVC output (relative path)."""

    root: Path
    stage: str
    out: str
    deps: list[str] = field(default_factory=list)  # DVC deps (relative paths) of the stage

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CLIPMILL_", "MLFLOW_", "DVC_", "PREFECT_"))
        }
        env.update(
            PREFECT_HOME=str(self.root / ".prefect"),  # the flow door: its own ephemeral Prefect
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
            CLIPMILL_ROOT=str(self.root),
            CLIPMILL_MLFLOW_TRACKING_URI=f"sqlite:///{self.root / 'mlflow.db'}",
            CLIPMILL_MLFLOW_ARTIFACT_ROOT=(self.root / "art").as_uri(),
            CLIPMILL_LANCEDB_URI=str(self.root / "lancedb"),
            CLIPMILL_RAY_NUM_CPUS="2",
            CLIPMILL_RAY_OBJECT_STORE_MB="128",
            CLIPMILL_FEATURE_STORE=str(self.root / "features"),
            OMP_NUM_THREADS="1",
            DVC_NO_ANALYTICS="1",
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            HF_HUB_OFFLINE="1",
            PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        )
        return env

    def write_params(self, overrides: dict[str, Any]) -> None:
        """Every committed params file (other stages' sections are read too), this stage's with
        `overrides` applied."""
        shutil.copytree(PROJECT_ROOT / "params", self.root / "params", dirs_exist_ok=True)
        path = self.root / "params" / f"{self.stage}.yaml"
        data = yaml.safe_load(path.read_text())
        path.write_text(yaml.safe_dump(set_dotted(data, overrides), sort_keys=False))

    def command(self, door: str) -> list[str]:
        if door == "cli":
            return [_bin("clipmill"), "run", self.stage]
        if door == "dvc":
            return [_bin("dvc"), "repro", self.stage]
        if door == "prefect":  # the pipeline flow (Prefect's ephemeral mode), `dvc repro` per stage
            return [sys.executable, "-m", "flows.pipeline", "--stages", self.stage]
        raise ValueError(f"door {door!r}: expected 'cli', 'dvc' or 'prefect'")

    def declared_out(self) -> Any:
        """The stage's output entry exactly as the project's dvc.yaml declares it."""
        stage = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"][self.stage]
        for out in stage["outs"]:
            name = out if isinstance(out, str) else next(iter(out))
            if name == self.out:
                return out
        raise AssertionError(f"dvc.yaml stage {self.stage}: no output {self.out}")

    def init_dvc(self) -> None:
        """git + DVC in the root, with the stage's cmd, params and output entry (its `persist`
        included) as the project declares them; deps are this project's inputs."""
        stage = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"][self.stage]
        stage = {
            "cmd": stage["cmd"],
            "deps": self.deps,
            "params": [{f"params/{self.stage}.yaml": None}],
            "outs": [self.declared_out()],
        }
        (self.root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {self.stage: stage}}))
        ignore = [
            "mlflow.db",
            "art/",
            "lancedb/",
            "mlruns/",
            "features/",
            "data/train_runs/",
            ".prefect/",
        ]
        (self.root / ".gitignore").write_text("\n".join(ignore) + "\n")
        who = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
        for cmd in (
            ["git", "init", "-q"],
            [_bin("dvc"), "init", "-q"],
            ["git", "add", "-A"],
            ["git", *who, "commit", "-q", "-m", "inputs"],
        ):
            subprocess.run(cmd, cwd=self.root, env=self.env(), check=True, capture_output=True)

    def start(self, door: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.command(door),
            cwd=self.root,
            env=self.env(),
            start_new_session=True,  # its own process group: the stage and all it started
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def finish(self, door: str, tries: int = 3) -> float:
        """Run the door until it succeeds (the issue's protocol); returns the last run's seconds.
        A local Ray timing out while starting on a loaded machine is not what is under test and is
        retried; any other failure, or `tries` in a row, fails the test."""
        text = ""
        for _ in range(tries):
            started = time.monotonic()
            proc = self.start(door)
            out, _ = proc.communicate(timeout=600)
            reap(proc)
            text = out.decode(errors="replace")
            if proc.returncode == 0:
                return time.monotonic() - started
            assert "Ray failed to start" in text or "GCS" in text, text[-4000:]
        raise AssertionError(f"{self.command(door)}: no success in {tries} tries:\n{text[-4000:]}")


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Whatever the run left in its process group (Ray's processes) goes with it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_at_random(
    project: StageProject,
    door: str,
    seed: int,
    seconds: float,
    sig: int = signal.SIGKILL,
    ready: Callable[[], bool] | None = None,
) -> bool:
    """Start the door, wait a seeded random share (10-90 %) of `seconds` (an uninterrupted run's
    duration) after `ready()` holds (or from the start), send `sig` to the whole process group.
    Returns whether the signal landed on a running stage."""
    proc = project.start(door)
    try:
        if ready is not None:
            deadline = time.monotonic() + 300
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(random.Random(seed).uniform(0.1, 0.9) * seconds)
        landed = proc.poll() is None
        if landed:
            os.killpg(proc.pid, sig)
        proc.wait(120)
        return landed
    finally:
        if proc.poll() is None:
            proc.kill()
        reap(proc)
        proc.wait(30)


def digest_tree(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> dict[str, str]:
    """relative path -> sha256 of every file under `root`; volatile files map to "" (present,
    content not compared)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if skip(path):
            continue
        if path.name in VOLATILE_NAMES or path.suffix in VOLATILE_SUFFIXES:
            out[rel] = ""
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def half_written(root: Path) -> list[str]:
    """What a write cut short leaves: temporary files and folders (`*.tmp`, `.tmp_*`,
    `.<name>.tmp_*`, `.bucket-*`), relative to `root`."""
    found = []
    for path in root.rglob("*"):
        name = path.name
        if (
            name.endswith(".tmp")
            or ".tmp_" in name
            or ".tmp-" in name
            or name.startswith(".bucket-")
        ):
            found.append(path.relative_to(root).as_posix())
    return sorted(found)


def dvc_lock_out(root: Path, stage: str) -> dict[str, Any]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs: list[dict[str, Any]] = lock["stages"][stage]["outs"]
    return outs[0]


def dvc_noop(project: StageProject) -> bool:
    """A third `dvc repro` does nothing: DVC versioned the resumed output as its own."""
    proc = subprocess.run(
        [_bin("dvc"), "repro", project.stage],
        cwd=project.root,
        env=project.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return "didn't change" in proc.stdout or "up to date" in proc.stdout


def cmd_line(cmd: list[str]) -> str:
    return shlex.join(cmd)
