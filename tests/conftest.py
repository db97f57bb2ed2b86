"""Shared fixtures: one Ray per test session, an isolated MLflow store, the quiet offline env,
and a temporary project root for the whole session.

Isolation: a test must never write into the checkout's own outputs (`data/`, `metrics/`,
`mlflow.db`, `mlartifacts/`, `mlruns/`): a `make test` in a clone where `make demo` ran once
replaced the demo's `metrics/evaluate.json` with a tiny test model's. So, at import, before any
test module imports `tasks`, `isolate()` (tests/support/isolation.py) keeps `tasks.PROJECT_ROOT`
on the checkout (code, dvc.yaml, committed params: what tests read) and points the settings'
root (CLIPMILL_ROOT, with a copy of `params/` and `dvc.yaml`), the MLflow store and its artifacts
at a temporary folder; it drops the CLIPMILL_* / MLFLOW_* settings of the caller's shell. Stage
runs in this process and the subprocesses tests start (`clipmill run ...`, which inherit the
environment) write metrics, runs, `data/` outputs and the LanceDB pool there. `session_settings`
restores those settings before every test.

A guard checks it: the checkout's output paths are snapshotted (mtime, size) at session start
and the session fails, naming every changed path, if any of them changed (tests/test_isolation.py
runs stage tests in a fresh pytest to prove the point, and plants a leak to see the guard fail).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

for _key, _value in {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

from tests.support.isolation import (  # noqa: E402
    CHECKOUT,
    SESSION_KEYS,
    changed_paths,
    isolate,
    snapshot,
)

TEST_ROOT = isolate()  # before any test module imports `tasks`
# The settings every test starts from (restored before each: see `session_settings`).
SESSION_ENV = {k: os.environ[k] for k in SESSION_KEYS}

import pytest  # noqa: E402

_guard: dict[str, object] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    _guard["before"] = snapshot(CHECKOUT)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the session when a test wrote into the checkout's own outputs."""
    before = _guard.get("before")
    if not isinstance(before, dict):
        return
    changed = changed_paths(before, snapshot(CHECKOUT))
    if changed:
        _guard["changed"] = changed
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    shutil.rmtree(TEST_ROOT, ignore_errors=True)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    changed = _guard.get("changed")
    if changed:
        assert isinstance(changed, list)
        terminalreporter.section("tests wrote into the project", sep="!", red=True, bold=True)
        terminalreporter.write_line(
            f"tests must write under the temporary root {TEST_ROOT}, but these paths of the "
            f"checkout {CHECKOUT} were created, removed or changed during the session:"
        )
        for path in changed[:50]:
            terminalreporter.write_line(f"  {path}")
        if len(changed) > 50:
            terminalreporter.write_line(f"  ... and {len(changed) - 50} more")


# Folders that module-, class- and package-scoped fixtures made with `tmp_path_factory`, by
# fixture: removed once the fixture's own teardown ran (servers stopped first), unless a test of
# the module failed. With function folders removed as their tests pass (pyproject's retention
# policy), a run holds at most the session fixtures' data plus one module's: CI's disk filled up
# when every folder lived to the end of the session.
_fixture_folders: dict[int, tuple[list[Path], int]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef, request):  # type: ignore[no-untyped-def]
    if fixturedef.scope in ("function", "session"):
        return (yield)
    base = request.config._tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    failed_before = request.session.testsfailed
    result = yield  # its dependencies were set up before this hook: only its own folders count
    made = [path for path in base.iterdir() if path not in before]
    if made:
        _fixture_folders[id(fixturedef)] = (made, failed_before)
    return result


def pytest_fixture_post_finalizer(fixturedef, request) -> None:  # type: ignore[no-untyped-def]
    folders, failed_before = _fixture_folders.pop(id(fixturedef), ([], 0))
    if request.session.testsfailed == failed_before:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(autouse=True)
def session_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the session's temporary root and MLflow store, whatever the test
    before it did: `mlflow.set_tracking_uri` writes MLFLOW_TRACKING_URI into os.environ, so one
    test's private store would otherwise become every later test's (and their settings')."""
    from tasks.settings import get_settings

    for key, value in SESSION_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("CLIPMILL_MLFLOW_TRACKING_URI", "CLIPMILL_DATA_ROOT", "CLIPMILL_LANCEDB_URI"):
        monkeypatch.delenv(key, raising=False)
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def test_root() -> Path:
    """The session's temporary project root (settings' root unless a test sets its own)."""
    return TEST_ROOT


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for the whole session; stages join it instead of starting their own."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=256 * 1024 * 1024,
            include_dashboard=False,
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    """A private MLflow SQLite store per test, so runs never leak between tests or into the repo's."""
    from tasks.settings import get_settings

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("CLIPMILL_MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CLIPMILL_MLFLOW_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield uri
    get_settings.cache_clear()
