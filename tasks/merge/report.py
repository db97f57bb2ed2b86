"""The comparison people look at: held-out top-1 averaged over tasks for every method, OPCM's
mean and spread over arrival orders, each expert on its own task, and the base; a JSON file in
the output folder and a bar plot in the stage's MLflow run."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from tasks.clip.statedict import LazyWeights
from tasks.merge.params import MergeParams


def reference_scores(
    scorer: Any, base: LazyWeights, models: list[LazyWeights]
) -> dict[str, dict[str, float]]:
    """Per-set scores of the base and of each expert (one model in memory at a time)."""
    out = {"base": scorer.per_set({k: base.get(k) for k in base.names()})}
    for i, model in enumerate(models):
        out[f"expert{i}"] = scorer.per_set({k: model.get(k) for k in model.names()})
    return out


def summarise(scores: dict[str, dict[str, float]], expert_sets: list[str]) -> dict[str, Any]:
    """Average over tasks per model; OPCM orders' mean and standard deviation; experts on their
    own task (when params say which task each expert was fine-tuned for)."""
    average = {name: sum(s.values()) / len(s) for name, s in scores.items()}
    out: dict[str, Any] = {"average": average, "per_set": scores}
    opcm = [v for k, v in average.items() if k == "opcm" or k.startswith("opcm_order")]
    if opcm:
        out["opcm_orders"] = len(opcm)
        out["opcm_orders_mean"] = statistics.fmean(opcm)
        out["opcm_orders_std"] = statistics.pstdev(opcm) if len(opcm) > 1 else 0.0
    own = [
        scores[f"expert{i}"][task]
        for i, task in enumerate(expert_sets)
        if f"expert{i}" in scores and task in scores[f"expert{i}"]
    ]
    if own:
        out["experts_own_task_mean"] = statistics.fmean(own)
    return out


def log_comparison(
    scores: dict[str, dict[str, float]], params: MergeParams, out_root: Path
) -> dict[str, Any]:
    """Write comparison.json, log the plot; return flat metrics."""
    summary = summarise(scores, list(params.heldout.expert_sets))
    out_root.mkdir(parents=True, exist_ok=True)
    from tasks.io.atomic import atomic_write_text

    atomic_write_text(out_root / "comparison.json", json.dumps(summary, indent=1) + "\n")
    _plot(summary)
    flat = {f"{name}.heldout_average": v for name, v in summary["average"].items()}
    for key in ("opcm_orders_mean", "opcm_orders_std", "experts_own_task_mean"):
        if key in summary:
            flat[key] = summary[key]
    return flat


def _plot(summary: dict[str, Any]) -> None:
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.tracking import log_figure

    names = list(summary["average"])
    values = [summary["average"][n] for n in names]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 3.5))
    ax.bar(
        names, values, color=["grey" if n.startswith(("base", "expert")) else "C0" for n in names]
    )
    if "experts_own_task_mean" in summary:
        ax.axhline(summary["experts_own_task_mean"], color="C3", ls="--", label="experts, own task")
        ax.legend()
    if "opcm_orders_std" in summary:
        ax.set_title(
            f"held-out top-1, mean over tasks (OPCM over {summary['opcm_orders']} orders: "
            f"{summary['opcm_orders_mean']:.3f} +- {summary['opcm_orders_std']:.3f})"
        )
    ax.set_ylabel("zero-shot top-1")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    log_figure(fig, "merge_comparison.png")
    plt.close(fig)
