"""Start-up cost of the `clipmill` command: the door imports nothing heavy before it knows it must.

Every `clipmill run train` pays its process start; a bare open_clip script pays only torch and
open_clip (benchmarks/train_overhead.py `bare_open_clip_whole`). The CLI module, the runner, the
registry and the train stage's module import their heavy packages inside the functions that use
them: MLflow when the run opens, Ray only when the params need it, torch and open_clip when the
stage builds a model, Prefect and DVC never (they are doors above the CLI). A module-level
`import mlflow` or `import torch` slipped into one of them fails these tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Packages that take from 0.1 to 5 CPU-seconds to import on our 2-core machine.
HEAVY = (
    "torch",
    "torchvision",
    "open_clip",
    "transformers",
    "mlflow",
    "sqlalchemy",
    "ray",
    "prefect",
    "dvc",
    "lancedb",
    "pandas",
    "pyarrow",
    "numpy",
    "matplotlib",
    "PIL",
    "webdataset",
)


def _heavy_after(code: str) -> list[str]:
    """The HEAVY packages loaded after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport json, sys\nprint('HEAVY' + json.dumps(sorted(set({HEAVY!r}) & set(sys.modules))))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.rsplit("HEAVY", 1)[1])


@pytest.mark.parametrize(
    "modules",
    [
        "tasks.cli",  # the console script's module
        "tasks.cli, tasks.runner, tasks.registry",  # the runner every door calls
        "tasks.cli, tasks.train.stage, tasks.train.params",  # the train stage's module
        # local mode's training process is forked from here before MLflow opens
        "tasks.cli, tasks.train.local",
    ],
)
def test_importing_the_door_loads_no_heavy_package(modules: str) -> None:
    assert _heavy_after(f"import {modules}") == []


def test_validating_train_params_loads_no_heavy_package() -> None:
    """`clipmill params show train` resolves the stage and validates its YAML (what `run` does
    before opening MLflow or starting Ray): still nothing heavy."""
    code = (
        "import contextlib, io\n"
        "from tasks.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['params', 'show', 'train', '-s', 'num_workers=0']) == 0\n"
    )
    assert _heavy_after(code) == []


def test_probe_sees_a_heavy_import() -> None:
    """The probe itself works: a module that does import a heavy package is reported."""
    assert _heavy_after("import tasks.cli, yaml, numpy") == ["numpy"]
