"""benchmarks/distill_screen.py's decision arithmetic: levers are ranked by the paired difference
over seeds and its standard error, not by the ratio of two noisy means alone."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent.parent / "benchmarks"


def _screen() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_distill_screen", BENCH / "distill_screen.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_summary_by_hand() -> None:
    screen = _screen()
    per_seed = {"alone": [0.10, 0.20, 0.30], "kd": [0.13, 0.21, 0.35]}
    out = screen.paired_summary(per_seed, "alone")
    kd = out["kd"]
    # differences 0.03, 0.01, 0.05: mean 0.03, stdev 0.02, standard error 0.02 / sqrt(3)
    assert kd["diff"] == pytest.approx(0.03)
    assert kd["diff_se"] == pytest.approx(0.02 / math.sqrt(3))
    assert kd["ratio"] == pytest.approx((0.69 / 3) / 0.2)
    assert kd["wins"] == 3 and kd["n"] == 3
    assert out["alone"]["diff"] == 0.0 and out["alone"]["ratio"] == 1.0


def test_one_lucky_seed_lifts_the_ratio_but_not_the_wins() -> None:
    """A single outlier seed raises the mean ratio; the paired view shows it (1 win of 3)."""
    screen = _screen()
    out = screen.paired_summary({"a": [0.1, 0.1, 0.1], "b": [0.09, 0.09, 0.3]}, "a")
    assert out["b"]["ratio"] > 1.5
    assert out["b"]["wins"] == 1
    assert out["b"]["diff_se"] > out["b"]["diff"] / 2  # the difference is within 2 SE of zero


def test_distilled_vs_alone_keeps_the_previous_entry_and_pairs_seeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/train_distill.py: the new entry nests the one it replaces as `previous`, passes
    the same seed to both sides and reports the paired difference with its standard error."""
    import argparse
    import json

    spec = importlib.util.spec_from_file_location("bench_td", BENCH / "train_distill.py")
    assert spec and spec.loader
    td = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(td)
    results = tmp_path / "train_methods.json"
    results.write_text(json.dumps({"results": {"distilled_vs_alone": {"ratio": 1.34}}}))
    monkeypatch.setattr(td, "RESULTS", results)
    values = {"alone": [0.10, 0.20, 0.30], "kd": [0.15, 0.22, 0.37]}
    calls: list[tuple[str, int, list[str]]] = []

    def fake(root: Path, name: str, seed: int, steps: int, extra: list[str], reuse: bool) -> float:
        calls.append((name, seed, extra))
        return values[name][seed]

    monkeypatch.setattr(td, "train_and_eval", fake)
    monkeypatch.setattr(td, "scoreboard_sets", lambda path: ["a", "b"])
    args = argparse.Namespace(
        steps=150,
        seeds=[0, 1, 2],
        student="model=clipmill-tiny-vit batch_size=32",
        mode="offline",
        online="distill.w0=1.0",
        tag="kd",
        reuse=False,
        root=tmp_path,
    )
    out = td.distilled_vs_alone(args)
    assert [(n, s) for n, s, _ in calls] == [(n, s) for s in (0, 1, 2) for n in ("alone", "kd")]
    assert "distill.mode=offline" in calls[1][2] and "distill.w0=1.0" in calls[1][2]
    assert not any(o.startswith("distill.") for o in calls[0][2])
    assert out["previous"] == {"ratio": 1.34}
    assert out["ratio"] == pytest.approx((0.74 / 3) / 0.2)
    # differences 0.05, 0.02, 0.07: mean 0.0467, stdev 0.0252
    assert out["paired_diff_mean"] == pytest.approx(0.14 / 3)
    assert out["paired_diff_se"] == pytest.approx(0.025166 / math.sqrt(3), rel=1e-3)
