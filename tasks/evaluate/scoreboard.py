"""DataComp-style scoreboard: each task's main metric and their unweighted mean, per model."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tasks.evaluate.datasets import CLASSIFICATION, RETRIEVAL

DEFAULT_MAIN = {CLASSIFICATION: "acc1", RETRIEVAL: "mean_recall@1"}


@dataclass(frozen=True)
class Row:
    model: str
    dataset: str
    task: str
    metric: str
    value: float


def main_metric(task: str, dataset: str, overrides: Mapping[str, str]) -> str:
    return overrides.get(dataset, DEFAULT_MAIN[task])


def main_value(metrics: Mapping[str, float], metric: str) -> float:
    """`mean_recall@k` is derived (both directions averaged); anything else is read as is."""
    if metric.startswith("mean_recall@"):
        k = metric.split("@", 1)[1]
        return (metrics[f"image_retrieval_recall@{k}"] + metrics[f"text_retrieval_recall@{k}"]) / 2
    if metric not in metrics:
        raise KeyError(f"scoreboard metric {metric!r} not among {sorted(metrics)}")
    return float(metrics[metric])


def means(rows: list[Row]) -> dict[str, float]:
    """Unweighted mean of the main metrics per model (NaN values skipped)."""
    out: dict[str, list[float]] = {}
    for r in rows:
        if not math.isnan(r.value):
            out.setdefault(r.model, []).append(r.value)
    return {m: sum(v) / len(v) for m, v in out.items()}


def as_table(rows: list[Row]) -> dict[str, list[Any]]:
    """Columns for mlflow.log_table, with one `average` row per model."""
    table: dict[str, list[Any]] = {
        "model": [],
        "dataset": [],
        "task": [],
        "metric": [],
        "value": [],
    }
    for r in rows:
        for key, value in zip(table, (r.model, r.dataset, r.task, r.metric, r.value), strict=True):
            table[key].append(value)
    for model, mean in means(rows).items():
        for key, value in zip(
            table, (model, "average", "all", "unweighted mean", mean), strict=True
        ):
            table[key].append(value)
    return table


def log_table(rows: list[Row]) -> None:
    import mlflow

    if mlflow.active_run():
        mlflow.log_table(data=as_table(rows), artifact_file="scoreboard.json")
