"""The docs/RELIABILITY.md generator on a small hand-made log: the expected tables, a rerun
replacing its case, and any lost or duplicated sample or failed case flagged loudly (exit 1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults import report
from tests.faults.reliability import record


def _line(stage: str, door: str, case: str, outcome: str, lost: int, dup: int, kills: int) -> str:
    return json.dumps(
        {
            "stage": stage,
            "door": door,
            "case": case,
            "outcome": outcome,
            "uids_lost": lost,
            "uids_duplicated": dup,
            "kills": kills,
            "time": "2026-12-07T00:00:00Z",
        }
    )


CLEAN = [
    _line("crawl", "cli", "sigkill seed 1", "failed: flaky", 0, 0, 1),
    _line("crawl", "cli", "sigkill seed 1", "passed", 0, 0, 2),  # its rerun: replaces the line
    _line("crawl", "dvc", "sigkill seed 2", "passed", 0, 0, 3),
    _line("curate", "cli", "sigterm", "passed", 0, 0, 1),
    _line("crawl", "stage", "test_hostile_url_list", "passed", 0, 0, 0),
    _line("train", "library", "test_pickle", "skipped: no torch", 0, 0, 0),
]


def test_clean_log_gives_the_expected_tables(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(CLEAN) + "\n\n")
    out = tmp_path / "RELIABILITY.md"
    assert report.main(["--log", str(log), "--out", str(out)]) == 0
    text = out.read_text()
    assert (
        "**Samples lost: 0. Samples duplicated: 0.** 5 cases: 4 passed, 0 failed, 1 skipped."
        in (text)
    )
    assert "NOT RELIABLE" not in text
    per_door = text.split("## Kills survived per stage and door")[1].split("## Every case")[0]
    assert [ln for ln in per_door.splitlines() if ln.startswith("| ")] == [
        "| stage | door | cases | passed | kills | kills survived | lost | duplicated |",
        "| crawl | cli | 1 | 1 | 2 | 2 | 0 | 0 |",
        "| crawl | dvc | 1 | 1 | 3 | 3 | 0 | 0 |",
        "| crawl | stage | 1 | 1 | 0 | 0 | 0 | 0 |",
        "| curate | cli | 1 | 1 | 1 | 1 | 0 | 0 |",
        "| train | library | 1 | 0 | 0 | 0 | 0 | 0 |",
    ]
    every = text.split("## Every case")[1]
    assert [ln for ln in every.splitlines() if ln.startswith("| ")] == [
        "| stage | door | case | outcome | kills | lost | duplicated |",
        "| crawl | cli | `sigkill seed 1` | passed | 2 | 0 | 0 |",
        "| crawl | dvc | `sigkill seed 2` | passed | 3 | 0 | 0 |",
        "| crawl | stage | `test_hostile_url_list` | passed | 0 | 0 | 0 |",
        "| curate | cli | `sigterm` | passed | 1 | 0 | 0 |",
        "| train | library | `test_pickle` | skipped: no torch | 0 | 0 | 0 |",
    ]


def test_lost_or_duplicated_samples_are_flagged_loudly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    bad = [
        _line("recaption", "dvc", "sigkill | seed 3", "failed: 2 uids lost", 2, 0, 1),
        _line("train", "cli", "sigkill seed 4", "passed", 0, 1, 1),
    ]
    log.write_text("\n".join(CLEAN + bad) + "\n")
    out = tmp_path / "RELIABILITY.md"
    assert report.main(["--log", str(log), "--out", str(out)]) == 1
    text = out.read_text()
    head = text.split("## Kills survived")[0]
    assert "**NOT RELIABLE: 2 SAMPLES LOST, 1 DUPLICATED, 1 CASES FAILED.**" in head
    assert "recaption / dvc / sigkill \\| seed 3: 2 SAMPLES LOST, 0 DUPLICATED" in head
    assert "train / cli / sigkill seed 4: 0 SAMPLES LOST, 1 DUPLICATED" in head
    assert (
        "| recaption | dvc | `sigkill \\| seed 3` | **failed: 2 uids lost** | 1 | **2** | 0 |"
        in (text)
    )
    assert "| recaption | dvc | 1 | 0 | 1 | 0 | 2 | 0 |" in text  # a kill not survived
    err = capsys.readouterr().err
    assert err.count("PROBLEM") == 3 and "SAMPLES LOST" in err


def test_a_malformed_log_is_an_error_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log.jsonl"
    log.write_text(CLEAN[0] + "\n{not json\n")
    assert report.main(["--log", str(log), "--out", str(tmp_path / "r.md")]) == 2
    assert f"{log}:2" in capsys.readouterr().err
    assert (
        report.main(["--log", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "r.md")]) == 2
    )
    assert not (tmp_path / "r.md").exists()


def test_the_hook_records_a_real_run_of_opted_in_tests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """record() through tests/hostile/recording.py in a child pytest: pass, fail and skip."""
    import subprocess
    import sys

    from tasks import PROJECT_ROOT

    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / "conftest.py").write_text(
        "from tests.hostile.recording import pytest_runtest_makereport  # noqa: F401\n"
    )
    (folder / "test_opted.py").write_text(
        "import pytest\n"
        "RELIABILITY_STAGE = 'crawl'\n"
        "RELIABILITY_DOOR = 'cli'\n"
        "RELIABILITY_DOORS = {'test_lib': 'library'}\n"
        "def test_ok(): pass\n"
        "def test_lib(): assert 1 == 2, 'wrong'\n"
        "@pytest.mark.parametrize('stage', ['curate'])\n"
        "def test_staged(stage): pytest.skip('not here')\n"
    )
    log = tmp_path / "log.jsonl"
    env = {"CLIPMILL_RELIABILITY_LOG": str(log), "PYTHONPATH": str(PROJECT_ROOT)}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=tmp_path,
        env={**__import__("os").environ, **env},
        capture_output=True,
        check=False,
        timeout=120,
    )
    got = {(c.stage, c.door, c.case.split("::")[1], c.outcome[:6]) for c in report.load(log)}
    assert got == {
        ("crawl", "cli", "test_ok", "passed"),
        ("crawl", "library", "test_lib", "failed"),
        ("curate", "cli", "test_staged[curate]", "skippe"),
    }
    monkeypatch.delenv("CLIPMILL_RELIABILITY_LOG", raising=False)
    record("x", "y", "z", "passed", 0, 0, 0)  # unset: writes nothing anywhere
    assert len(report.load(log)) == 3


def test_uncounted_samples_are_never_read_as_none(tmp_path: Path) -> None:
    """A case that failed before it could compare records -1: flagged, not summed as -1."""
    log = tmp_path / "log.jsonl"
    log.write_text(_line("curate", "ray-worker", "kill", "failed: no worker", -1, -1, 0) + "\n")
    out = tmp_path / "RELIABILITY.md"
    assert report.main(["--log", str(log), "--out", str(out)]) == 1
    text = out.read_text()
    assert " -1 " not in text and "| -1 |" not in text
    assert "curate / ray-worker / kill: UNCOUNTED SAMPLES LOST, UNCOUNTED DUPLICATED" in text
    assert "| curate | ray-worker | 1 | 0 | 0 | 0 | 0 (+1 cases uncounted) |" in text
    assert "| **failed: no worker** | 0 | **unknown** | **unknown** |" in text
