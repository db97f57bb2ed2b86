"""benchmarks/train_methods.py's own logic (no timings): keys are merged, not overwritten."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_methods.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train_methods", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_merge_keeps_other_keys_and_replaces_measured_ones(tmp_path: Path) -> None:
    bench = _load()
    path = tmp_path / "train_methods.json"
    old = {
        "machine": "m0",
        "date": "d0",
        "setup": {"a": 1},
        "results": {"other": {"ours": 1}, "flip_50": {"ours": 0}},
    }
    path.write_text(json.dumps(old))
    flip = bench.entry(3.0, 2.0, "samples/s", 1.4)
    out = bench.merge(path, "m1", {"b": 2}, {"flip_50": flip})
    assert out["results"] == {"other": {"ours": 1}, "flip_50": flip}
    assert out["setup"] == {"a": 1, "b": 2} and out["machine"] == "m1"
    assert flip["ratio"] == 1.5 and flip["met"] is True
    assert bench.entry(1.0, 2.0, "samples/s", 1.0)["met"] is False
    fresh = bench.merge(tmp_path / "none.json", "m", {}, {"aclip_50": flip})
    assert fresh["results"] == {"aclip_50": flip}


def test_measures_cover_the_issue_keys() -> None:
    assert {"flip_50", "aclip_50"} <= set(_load().MEASURES)
