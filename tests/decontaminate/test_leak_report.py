"""Evaluate's leak report on the decontaminate stage's outputs: a model that excluded the flagged
list has no eval image in its training data; the same model without the list has the planted one,
in every set holding its picture (the report can fail)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from .conftest import TinyCrawl


def _model(folder: Path, shards: Path, exclude: Path | None) -> str:
    """A model folder as far as the report reads it: params.yaml with shards and exclude_uids."""
    folder.mkdir(parents=True)
    params = {"shards": str(shards), "exclude_uids": str(exclude) if exclude else None}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    return str(folder)


def test_leak_counts_with_and_without_the_exclusion(outputs, tiny_crawl: TinyCrawl, tmp_path):
    from tasks.evaluate import leakage

    out, metrics = outputs
    models = {
        "protected": _model(
            tmp_path / "protected", tiny_crawl.shards, out / "flagged_uids.parquet"
        ),
        "raw": _model(tmp_path / "raw", tiny_crawl.shards, None),
        "unknown": str(tmp_path / "no_params"),
    }
    sets = ["toyset", "otherset", "thirdset"]
    report = leakage.audit(models, str(out), sets)
    safe, raw = report["protected"], report["raw"]
    assert safe["found_total"] == 0 and safe["planted_in_training_total"] == 0
    assert safe["filter"] == "decontaminate"
    assert safe["filter_planted_recall"] == metrics["decontam_recall"] == 1.0
    assert safe["training_rows"] == len(tiny_crawl.clean)
    assert raw["sets"] == {
        "toyset": {"found": 1, "planted_in_training": 1},
        "otherset": {"found": 1, "planted_in_training": 1},
        "thirdset": {"found": 0, "planted_in_training": 0},
    }
    assert raw["filter"] == "none" and math.isnan(raw["filter_planted_recall"])
    assert raw["training_rows"] == len(tiny_crawl.clean) + 1
    assert "unknown" in report["unknown"]["training_data"]
    rows = leakage.as_table(report)
    assert {(r["model"], r["dataset"], r["eval_images_in_training"]) for r in rows} >= {
        ("protected", "toyset", 0),
        ("raw", "toyset", 1),
    }


def test_evaluate_writes_the_leak_table(outputs, tiny_crawl: TinyCrawl, tmp_path):
    """The stage's hook: leakage.json next to the results, one row per model and set."""
    import json

    from tasks.evaluate.params import EvaluateParams
    from tasks.evaluate.stage import _leak_report

    out, _ = outputs
    ref = _model(tmp_path / "raw", tiny_crawl.shards, None)
    p = EvaluateParams(models=[ref], leakage_dir=str(out), output_dir=str(tmp_path / "eval"))
    reports = _leak_report(p, tmp_path / "eval", ["toyset"])
    assert reports["raw"]["sets"]["toyset"]["found"] == 1
    table = json.loads((tmp_path / "eval" / "leakage.json").read_text())
    assert len(table) == 1 and math.isnan(table[0].pop("filter_planted_recall"))
    assert table[0] == {
        "model": "raw",
        "dataset": "toyset",
        "eval_images_in_training": 1,
        "planted_copies_in_training": 1,
        "filter": "none",
    }
