"""The benchmark scripts' own logic: what they compare and how they decide (no timings here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_semdedup_reference_is_the_max_over_earlier_members() -> None:
    """SemDeDup's triu-max (blocked) equals the stage's exact path and a plain double loop."""
    from tasks.curate.steps.semdedup import exact_cluster_dups

    curate = _load("curate")
    rng = np.random.default_rng(0)
    x = curate.clustered_vectors(300, 16, rng)
    m = curate.semdedup_reference_max_sim(x, block=64)
    sims = x @ x.T
    expected = np.array([0.0] + [sims[j, :j].max() for j in range(1, len(x))])
    np.testing.assert_allclose(m, np.maximum(expected, 0.0), atol=1e-5)
    dup, _, best = exact_cluster_dups(x, 0.01)
    np.testing.assert_array_equal(m > 0.99, dup)
    assert dup.sum() > 0  # the planted twins are there to be found


def _row(rows: int, ref: float | None, stage: float, ann: float, recall: float = 1.0) -> dict:
    return {
        "rows": rows,
        "semdedup_exact_s": ref,
        "stage_exact_s": stage,
        "ann_s": ann,
        "speedup": ref / ann if ref is not None else None,
        "recall_at_10": recall,
    }


def test_ann_default_starts_where_it_beats_both_exact_paths_from_then_on() -> None:
    curate = _load("curate")
    sweep = [
        _row(1000, 2.0, 1.0, 3.0),  # slower
        _row(2000, 4.0, 3.0, 2.0),  # faster than both
        _row(4000, 9.0, 5.0, 6.0),  # beats SemDeDup's but not the stage's exact path
        _row(8000, 30.0, 20.0, 10.0),
        _row(16000, None, 80.0, 30.0),  # reference not timed: the stage's exact path decides
    ]
    out = curate.summarize_semdedup_sweep(sweep, 16, 0.01, 16, 100)
    assert out["_semdedup_cluster_detail"]["ann_wins_from_rows"] == 8000
    head = out["semdedup_vs_cluster_exact"]
    assert head["ratio"] == pytest.approx(3.0)  # the largest size with SemDeDup's search timed
    low_recall = [*sweep[:-1], _row(16000, None, 80.0, 30.0, recall=0.9)]
    out = curate.summarize_semdedup_sweep(low_recall, 16, 0.01, 16, 100)
    assert out["_semdedup_cluster_detail"]["ann_wins_from_rows"] is None


def test_eval_compare_reports_every_difference_and_refuses_one_sided_metrics(
    tmp_path: Path,
) -> None:
    bench = _load("eval_vs_clip_benchmark")
    sets = [("digits", "zeroshot_classification")]
    theirs, ours = tmp_path / "theirs", tmp_path / "ours"
    (theirs / "local-dir:teacher").mkdir(parents=True)
    (ours / "teacher").mkdir(parents=True)

    def write(folder: Path, metrics: dict) -> None:
        (folder / "digits_zeroshot_classification.json").write_text(
            json.dumps({"metrics": metrics})
        )

    write(theirs / "local-dir:teacher", {"acc1": 0.5, "acc5": float("nan")})
    write(ours / "teacher", {"acc1": 0.502, "acc5": float("nan")})
    diffs = bench.compare(sets, theirs, ours, "teacher")
    assert diffs == {
        "teacher/digits/acc1": pytest.approx(0.2),
        "teacher/digits/acc5": 0.0,
    }
    write(ours / "teacher", {"acc1": 0.5})
    with pytest.raises(SystemExit, match="metrics only one tool wrote"):
        bench.compare(sets, theirs, ours, "teacher")
