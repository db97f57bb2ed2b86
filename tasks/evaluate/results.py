"""Results in CLIP_benchmark's JSON format: one file per (model, dataset, task).

The record has CLIP_benchmark's keys (`dataset`, `model`, `pretrained`, `task`, `metrics`,
`language`), so its `clip_benchmark build` command turns our files into its CSV as well.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.io import atomic_write_text


def record(
    dataset: str,
    arch: str,
    pretrained: str,
    task: str,
    metrics: dict[str, Any],
    language: str = "en",
) -> dict[str, Any]:
    """A set is named `wds/<name>`, as CLIP_benchmark names a webdataset set it was given."""
    return {
        "dataset": f"wds/{dataset}",
        "model": arch,
        "pretrained": pretrained,
        "task": task,
        "metrics": metrics,
        "language": language,
    }


def write_record(out_dir: str | Path, model_label: str, rec: dict[str, Any]) -> Path:
    """`<out>/<model>/<dataset>_<task>.json`; NaN stays NaN, as CLIP_benchmark's json.dump writes it."""
    slug = rec["dataset"].replace("wds/", "", 1).replace("/", "_")
    path = Path(out_dir) / model_label / f"{slug}_{rec['task']}.json"
    atomic_write_text(path, json.dumps(rec))
    return path
