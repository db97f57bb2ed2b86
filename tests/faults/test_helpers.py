"""The pieces the fault suites rely on, tested on their own (fast): the outcome log, the uid
accounting, the sweep of what killed writes leave, and the cleanup of interrupted folder writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.io.atomic import sweep_temp
from tests.faults.harness import half_written
from tests.faults.reliability import ENV, lost_and_duplicated, read, record


def test_record_appends_one_line_per_case_and_nothing_when_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "sub" / "reliability.jsonl"
    monkeypatch.delenv(ENV, raising=False)
    record("curate", "cli", "sigkill seed 1", "passed", 0, 0, 1)
    assert not log.exists()
    monkeypatch.setenv(ENV, str(log))
    record("curate", "cli", "sigkill seed 1", "passed", 0, 0, 1)
    record("train", "dvc", "sigterm", "failed: half-written", -1, -1, 1)
    lines = read(log)
    assert [(r["stage"], r["door"], r["case"]) for r in lines] == [
        ("curate", "cli", "sigkill seed 1"),
        ("train", "dvc", "sigterm"),
    ]
    assert lines[1]["outcome"].startswith("failed") and lines[0]["kills"] == 1
    assert all(json.loads(raw) for raw in log.read_text().splitlines())


def test_lost_and_duplicated_count_against_the_uninterrupted_run() -> None:
    assert lost_and_duplicated(["a", "b", "c"], ["c", "a", "b"]) == (0, 0)
    assert lost_and_duplicated(["a", "b", "c"], ["a", "a", "c"]) == (1, 1)
    assert lost_and_duplicated(["a"], ["a", "z"]) == (0, 1)  # a row the whole run lacks


def test_sweep_removes_what_killed_writes_leave_and_nothing_else(tmp_path: Path) -> None:
    keep = [tmp_path / "shards/00000.tar", tmp_path / "report/funnel.json", tmp_path / "x.tmpl"]
    stale_files = [tmp_path / "shards/.00001.tar.abc123.tmp", tmp_path / "summary.json.tmp"]
    stale_dir = tmp_path / ".ties.tmp_k2j3"
    for path in [*keep, *stale_files, stale_dir / "model.safetensors"]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert half_written(tmp_path) == sorted(
        p.relative_to(tmp_path).as_posix() for p in [*stale_files, stale_dir]
    )
    assert sweep_temp(tmp_path) == 3
    assert half_written(tmp_path) == [] and all(p.exists() for p in keep)
    assert sweep_temp(tmp_path / "missing") == 0


def test_an_interrupted_model_folder_write_leaves_no_temporary_folder(tmp_path: Path) -> None:
    """What SIGTERM (SystemExit from `clipmill run`'s handler) does mid-write: the temporary
    folder goes, the previous folder stays."""
    import torch

    from tasks.clip.statedict import open_weights, write_model_folder
    from tests.support.tinymodel import save_tiny_model

    base = open_weights(save_tiny_model(tmp_path / "base", seed=0))

    class Stop(dict):  # a state whose tensors are read mid-write, as a signal would land
        def __getitem__(self, key: str) -> torch.Tensor:
            raise SystemExit(143)

    (tmp_path / "out/merged").mkdir(parents=True)
    (tmp_path / "out/merged/old").write_text("previous")
    with pytest.raises(SystemExit):
        write_model_folder(tmp_path / "out/merged", base, Stop(), "params: {}\n")
    assert half_written(tmp_path / "out") == []
    assert (tmp_path / "out/merged/old").read_text() == "previous"
