"""The leak report: per eval set and model, how many of the set's images are in that model's
training data, and how well the filter that protected it did on the planted copies.

A model's training data is what its training run could read: the `shards` of the `params.yaml`
in its folder minus the uids of its `exclude_uids` list (docs/CONTRACTS.md). Two counts per set:
- `found`: eval images that the `decontaminate` stage matched to a row still in the training
  data (flagged_uids.parquet joined with the training uids). 0 whenever the model excluded that
  list: what decontamination found never reaches training;
- `planted_in_training`: eval images whose PLANTED copy (the sample stage's ground truth,
  planted_uids.parquet) is in the training data, flagged or not: the leaks the filter missed.
`filter_planted_recall` is the planted-copy recall of the `decontaminate` stage (its
summary.json) when the model excluded its list, NaN when nothing filtered the model's data.
The student also passed curate's own decontaminate step (hash + embedding gate); its recall is in
curate's metrics (`decontam_recall`), not repeated here.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from tasks.io.paths import is_uri, resolve_path

FLAGGED = "flagged_uids.parquet"
PLANTED = "planted_uids.parquet"
SUMMARY = "summary.json"


def training_spec(ref: str) -> tuple[str, str | None] | None:
    """(shards, exclude_uids) from the model folder's params.yaml; None when the model is no
    local folder with a params.yaml (an MLflow URI, a random model): its data is unknown here."""
    import yaml

    if is_uri(ref) or ref.startswith(("models:/", "runs:/", "random:")):
        return None
    path = resolve_path(ref) / "params.yaml"
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not data.get("shards"):
        return None
    return str(data["shards"]), data.get("exclude_uids")


def read_uids(path: Path) -> set[str]:
    """The `uid` column of a parquet file; a clear error naming the file without one."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise FileNotFoundError(f"leak report: {path} does not exist")
    schema = pq.read_schema(path)
    if "uid" not in schema.names:
        raise ValueError(f"leak report: {path} has no `uid` column (columns: {schema.names})")
    return {str(u) for u in pq.read_table(path, columns=["uid"]).column("uid").to_pylist() if u}


def training_uids(shards: str, exclude: str | None) -> set[str]:
    """Sample keys with an image in the shards (a folder of *.tar or a glob), minus the excluded
    uids: what the training data loader could yield (tasks/train/data.py)."""
    from tasks.io.wds import IMAGE_EXTS, sample_keys

    root = resolve_path(shards)
    tars = sorted(root.glob("*.tar")) if root.is_dir() else sorted(map(Path, glob.glob(str(root))))
    if not tars:
        raise FileNotFoundError(f"leak report: no training shards at {shards!r} ({root})")
    keys = {k for tar in tars for k in sample_keys(tar, IMAGE_EXTS)}
    return keys - read_uids(resolve_path(exclude)) if exclude else keys


def leak_counts(
    train: set[str], flagged: Any, planted: Any | None, sets: list[str]
) -> dict[str, dict[str, int]]:
    """Per set: `found` (distinct eval images with a flagged copy in `train`) and
    `planted_in_training` (distinct eval images with a planted copy in `train`)."""
    found: dict[str, set[str]] = {s: set() for s in sets}
    for uid, name, eval_id in zip(
        flagged.column("uid").to_pylist(),
        flagged.column("eval_set").to_pylist(),
        flagged.column("eval_id").to_pylist(),
        strict=True,
    ):
        if uid in train and name in found:
            found[name].add(eval_id)
    seeded: dict[str, set[str]] = {s: set() for s in sets}
    if planted is not None:
        for uid, ids in zip(
            planted.column("uid").to_pylist(), planted.column("eval_ids").to_pylist(), strict=True
        ):
            if uid not in train:
                continue
            for eval_id in ids or []:
                name = eval_id.split("/", 1)[0]
                if name in seeded:
                    seeded[name].add(eval_id)
    return {s: {"found": len(found[s]), "planted_in_training": len(seeded[s])} for s in sets}


def _recall(folder: Path) -> float:
    summary = folder / SUMMARY
    if not summary.is_file():
        return float("nan")
    value = json.loads(summary.read_text()).get("decontam_recall")
    return float(value) if value is not None else float("nan")


def audit(models: dict[str, str], decontaminate_dir: str, sets: list[str]) -> dict[str, Any]:
    """model name -> its leak report (`models`: name -> reference); see the module docstring."""
    import pyarrow.parquet as pq

    folder = resolve_path(decontaminate_dir)
    if not (folder / FLAGGED).is_file():
        raise FileNotFoundError(
            f"leak report: {folder / FLAGGED} does not exist (run the decontaminate stage first, "
            "or set leakage.decontaminate_dir to null)"
        )
    flagged = pq.read_table(folder / FLAGGED, columns=["uid", "eval_set", "eval_id"])
    planted = pq.read_table(folder / PLANTED) if (folder / PLANTED).is_file() else None
    out: dict[str, Any] = {}
    for name, ref in models.items():
        spec = training_spec(ref)
        if spec is None:
            out[name] = {"training_data": "unknown (no params.yaml with shards in the model)"}
            continue
        shards, exclude = spec
        train = training_uids(shards, exclude)
        protected = exclude is not None and resolve_path(exclude).parent == folder
        report: dict[str, Any] = {
            "sets": leak_counts(train, flagged, planted, sets),
            "training_rows": len(train),
            "filter": "decontaminate" if protected else "none",
            "filter_planted_recall": _recall(folder) if protected else float("nan"),
        }
        report["found_total"] = sum(v["found"] for v in report["sets"].values())
        report["planted_in_training_total"] = sum(
            v["planted_in_training"] for v in report["sets"].values()
        )
        out[name] = report
    return out


def as_table(reports: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, set): what data/evaluate/leakage.json holds."""
    rows = []
    for model, r in reports.items():
        for name, c in r.get("sets", {}).items():
            rows.append(
                {
                    "model": model,
                    "dataset": name,
                    "eval_images_in_training": c["found"],
                    "planted_copies_in_training": c["planted_in_training"],
                    "filter": r["filter"],
                    "filter_planted_recall": r["filter_planted_recall"],
                }
            )
    return rows
