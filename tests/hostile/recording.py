"""Record every case of a hostile or resource-bound test module in the reliability log.

A module opts in by naming its stage and door:
    RELIABILITY_STAGE = "crawl"          # the stage the cases attack
    RELIABILITY_DOOR = "cli"             # how they reach it: cli, stage (run_stage), library
    RELIABILITY_DOORS = {"test_x": "cli"}  # optional: another door for some tests
A parametrized test with a `stage` parameter is recorded under that stage. The hook below
(imported by the conftest of each folder holding such modules) writes one line per test through
tests/faults/reliability.py's `record`, with the test's real outcome (passed, failed: why,
skipped: why), so a failing case shows in docs/RELIABILITY.md instead of vanishing. Hostile
inputs kill nothing and every sample is accounted for by the test's own assertions: kills,
samples lost and duplicated are recorded as 0.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import pytest

from tests.faults.reliability import record


def _outcome(rep: pytest.TestReport) -> str:
    if rep.passed:
        return "passed"
    if rep.skipped:
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        return f"skipped: {reason.removeprefix('Skipped: ')}"
    crash = getattr(rep.longrepr, "reprcrash", None)
    why = (crash.message if crash is not None else str(rep.longrepr)).splitlines()
    # An assertion carrying a log tail: its last error line says more than its first line.
    errors = [ln.strip() for ln in why if "Error:" in ln]
    line = errors[-1] if errors else (why[0] if why else "error")
    return f"failed: {line[:200]}"


def case_of(item: pytest.Item) -> tuple[str, str, str] | None:
    """(stage, door, case) of a test whose module opted in, else None."""
    module = getattr(item, "module", None)
    stage = getattr(module, "RELIABILITY_STAGE", None)
    if module is None or stage is None:
        return None
    callspec = getattr(item, "callspec", None)
    if callspec is not None and isinstance(callspec.params.get("stage"), str):
        stage = callspec.params["stage"]
    name = getattr(item, "originalname", item.name)
    door = getattr(module, "RELIABILITY_DOORS", {}).get(name) or getattr(
        module, "RELIABILITY_DOOR", "library"
    )
    return str(stage), str(door), f"{module.__name__.rsplit('.', 1)[-1]}::{item.name}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[Any]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    found = case_of(item)
    if found is None:
        return
    # One line per test: its call, or its setup when the call never ran (skipped or errored).
    if rep.when == "call" or (rep.when == "setup" and not rep.passed):
        record(*found, _outcome(rep), uids_lost=0, uids_duplicated=0, kills=0)
