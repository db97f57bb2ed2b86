"""A curate run says how far its embedding pass is, in plain lines when no terminal is attached
(DVC and Prefect capture the output); counted on the driver as Ray Data's batches arrive."""

from __future__ import annotations

import re

import pytest

from .test_stage import _params

LINE = re.compile(r"^curate: embedding (pool|eval) images [\d,]+/[\d,]+ \(\d+%\), [\d.,]+ images/s")


def test_curate_prints_progress_lines_for_its_embedding_passes(
    hand_pool, tmp_path, ray_session, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from tasks.curate.stage import run
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_PROGRESS", "lines")  # what a log (not a terminal) gets
    monkeypatch.setenv("CLIPMILL_PROGRESS_INTERVAL_S", "0")  # every batch: the run is tiny
    get_settings.cache_clear()
    try:
        run(_params(hand_pool, tmp_path / "out", steps=["decontaminate", "clip_score", "balance"]))
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()
    err = capsys.readouterr().err.splitlines()
    pool = [line for line in err if line.startswith("curate: embedding pool images")]
    assert pool and all(LINE.match(line) for line in pool), err[-20:]
    # the pass ends with every image of the pool's shards counted
    last = re.match(r"curate: embedding pool images ([\d,]+)/([\d,]+)", pool[-1])
    assert last is not None and last.group(1) == last.group(2)
    assert pool[-1].endswith(tuple(f"done in {n} s" for n in range(90))) or "min" in pool[-1]
    assert any(line.startswith("curate: embedding eval images") for line in err), err[-20:]
