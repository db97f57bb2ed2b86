"""A temporary project root for a test session, and the snapshot that proves the checkout's own
outputs were left alone (used by tests/conftest.py and tests/test_isolation.py).

`tasks.PROJECT_ROOT` (read once, when `tasks` is imported) stays the checkout: the code,
dvc.yaml and the committed params that tests read. The settings' root (CLIPMILL_ROOT, read from
the environment by tasks/settings.py whenever `get_settings()` is built) becomes a fresh
temporary folder holding a copy of `params/` and `dvc.yaml`, so stage runs in this process and
in every subprocess a test starts (`clipmill run ...` inherits the environment) write their
metrics, MLflow runs and artifacts, `data/` outputs and LanceDB pool there.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]  # the code under test: tasks/, params/, dvc.yaml
# The checkout's own outputs; no test may create or change any of them.
GUARDED = ("data", "metrics", "mlflow.db", "mlartifacts", "mlruns")
# Settings of the caller's shell that could send test output to a real store (an S3 data root,
# a tracking server): dropped, so the defaults under the temporary root apply.
DROPPED_PREFIXES = ("CLIPMILL_", "MLFLOW_")
# Test-suite settings, not a run's: kept (where the fault suites append their outcome lines,
# tests/faults/reliability.py).
KEPT_KEYS = ("CLIPMILL_RELIABILITY_LOG",)
# What a run reads from its root (copied into the test root; code is imported, not copied).
ROOT_FILES = ("params", "dvc.yaml")
# The environment variables `isolate` sets (tests/conftest.py restores them before each test).
SESSION_KEYS = ("CLIPMILL_ROOT", "MLFLOW_TRACKING_URI", "CLIPMILL_MLFLOW_ARTIFACT_ROOT")

_root: Path | None = None


def _make_test_root() -> Path:
    """A fresh root with a copy of the committed params and dvc.yaml: outputs go here."""
    root = Path(tempfile.mkdtemp(prefix="clipmill-tests-")).resolve()
    for name in ROOT_FILES:
        src = CHECKOUT / name
        if src.is_dir():
            shutil.copytree(src, root / name)
        elif src.is_file():
            shutil.copy2(src, root / name)
    return root


def isolate() -> Path:
    """Point this process's (and its children's) settings at a temporary root; once per process.

    Must run before any test module imports `tasks` (tests/conftest.py calls it at import).
    """
    global _root
    if _root is not None:
        return _root
    for key in [k for k in os.environ if k.startswith(DROPPED_PREFIXES) and k not in KEPT_KEYS]:
        del os.environ[key]
    os.environ["CLIPMILL_ROOT"] = str(CHECKOUT)
    import tasks  # PROJECT_ROOT is read once, at import: the checkout

    if tasks.PROJECT_ROOT != CHECKOUT:
        raise RuntimeError(
            f"tasks was imported with root {tasks.PROJECT_ROOT} before tests/conftest.py could "
            f"pin it to the checkout {CHECKOUT}; run pytest from the checkout"
        )
    root = _make_test_root()
    os.environ["CLIPMILL_ROOT"] = str(root)
    # Explicit, so bare `mlflow` calls in tests (which ignore our settings) land here too.
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["CLIPMILL_MLFLOW_ARTIFACT_ROOT"] = (root / "mlartifacts").as_uri()
    if "tasks.settings" in sys.modules:
        sys.modules["tasks.settings"].get_settings.cache_clear()
    _root = root
    return root


def snapshot(root: Path, names: tuple[str, ...] = GUARDED) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file and folder under `root/name`: a change to any shows.

    Metadata, not hashes: `data/` after a demo holds thousands of files, and every write (or a
    file created then removed) changes an mtime, of the file or of its folder.
    """
    state: dict[str, tuple[int, int]] = {}
    for name in names:
        top = root / name
        if not top.exists():
            continue
        paths = [top, *top.rglob("*")] if top.is_dir() else [top]
        for path in paths:
            try:
                st = path.lstat()
            except FileNotFoundError:  # removed while we walked: the diff reports it
                continue
            state[str(path.relative_to(root))] = (st.st_mtime_ns, st.st_size)
    return state


def changed_paths(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]
) -> list[str]:
    """Paths created, removed or modified between two snapshots, sorted."""
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
