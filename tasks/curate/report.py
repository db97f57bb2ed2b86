"""The curate report: funnel, entry-count histogram before/after balancing, kept/dropped grids."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import atomic_write_json


def _save(fig: Any, out_dir: Path, name: str) -> Path:
    from tasks.tracking import log_artifact, log_figure

    path = out_dir / name
    fig.savefig(path, dpi=100, bbox_inches="tight")
    log_figure(fig, f"curate_{name}")
    log_artifact(path, "report")
    return path


def funnel_figure(funnel: list[dict[str, Any]]) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.5 * len(funnel)))
    names = [f["step"] for f in funnel]
    ax.barh(names[::-1], [f["left"] for f in funnel][::-1], color="tab:blue")
    for y, f in enumerate(funnel[::-1]):
        top = sorted(f["dropped"].items(), key=lambda kv: -kv[1])[:3]
        ax.text(
            f["left"], y, "  " + ", ".join(f"-{v} {k}" for k, v in top), va="center", fontsize=8
        )
    ax.set_xlabel("pairs left after the step")
    ax.set_title("curation funnel (drops by reason)")
    return fig


def histogram_figure(before: np.ndarray, after: np.ndarray, t: int) -> Any:
    """Number of entries with a given match count, log-log: the head is flattened at t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(int(before.max(initial=1)), 2)
    bins = np.unique(np.logspace(0, np.log10(top + 1), 40).astype(int)).tolist()
    ax.hist(before[before > 0], bins=bins, histtype="step", label="before", log=True)
    ax.hist(after[after > 0], bins=bins, histtype="step", label="after", log=True)
    ax.axvline(t, color="k", linestyle="--", label=f"t = {t}")
    ax.set_xscale("log")
    ax.set_xlabel("texts matching the entry")
    ax.set_ylabel("entries")
    ax.legend()
    ax.set_title("MetaCLIP entry counts before / after balancing")
    return fig


def grid_figure(images: list[tuple[bytes, str]], title: str) -> Any:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cols = 4
    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (data, caption) in zip(axes.ravel(), images, strict=False):
        try:
            ax.imshow(Image.open(io.BytesIO(data)).convert("RGB"))
        except Exception:
            ax.text(0.5, 0.5, "undecodable", ha="center")
        ax.set_title(" ".join(caption.split())[:28], fontsize=7)
    fig.suptitle(title)
    return fig


def example_groups(
    reasons: list[str], uids: list[str], per_group: int, seed: int
) -> dict[str, list[str]]:
    """uids to show: up to `per_group` kept, and per step up to `per_group` it dropped."""
    groups: dict[str, list[str]] = {}
    for uid, r in zip(uids, reasons, strict=True):
        groups.setdefault("kept" if r == "kept" else f"dropped_{r.split(':')[0]}", []).append(uid)
    rng = random.Random(seed)
    return {g: rng.sample(sorted(v), min(per_group, len(v))) for g, v in sorted(groups.items())}


def entry_counts_figure(counts: Any) -> Any:
    """The balance step's EntryCounts artifact as the before/after histogram."""
    return histogram_figure(counts.before, counts.after, counts.t)


def caption_scores_figure(value: tuple[np.ndarray, np.ndarray, float]) -> Any:
    """clip_score's raw and synthetic caption scores (teacher cosine) with the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw, synthetic, threshold = value
    fig, ax = plt.subplots(figsize=(6, 4))
    raw, synthetic = raw[~np.isnan(raw)], synthetic[~np.isnan(synthetic)]
    both = np.concatenate([raw, synthetic])
    bins = np.linspace(both.min(), both.max(), 40).tolist() if both.size else 10
    ax.hist(raw, bins=bins, histtype="step", label=f"raw caption ({raw.size})")
    ax.hist(synthetic, bins=bins, histtype="step", label=f"synthetic caption ({synthetic.size})")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.3f}")
    ax.set_xlabel("teacher CLIP score (cosine)")
    ax.set_ylabel("rows reaching clip_score")
    ax.legend()
    ax.set_title("CLIP score of the raw and the synthetic caption")
    return fig


# Artifact name -> figure of it (saved as `<name>.png`): steps hand artifacts back in their
# StepResult; the report draws those it knows, artifacts.json lists every one by step.
FIGURES: dict[str, Callable[[Any], Any]] = {
    "entry_counts": entry_counts_figure,
    "caption_scores": caption_scores_figure,
}


def _log_inputs(out_dir: Path, recorded: dict[str, Any]) -> Path:
    """inputs.json, also as MLflow params `curate.inputs.*` when a run is active."""
    import mlflow

    from tasks.tracking import flatten

    path = out_dir / "inputs.json"
    atomic_write_json(path, recorded)
    if recorded and mlflow.active_run() is not None:
        mlflow.log_params({k: str(v) for k, v in flatten(recorded, "curate.inputs").items()})
    return path


def write_report(
    out_dir: Path,
    funnel: list[dict[str, Any]],
    artifacts: dict[str, dict[str, Any]],
    grids: dict[str, list[tuple[bytes, str]]],
    recorded: dict[str, Any] | None = None,
) -> list[Path]:
    """funnel.json/png, a figure per known step artifact, example grids, inputs.json; index.json
    lists the figures. `artifacts` is step name -> {artifact name: value}."""
    import matplotlib.pyplot as plt

    from tasks.tracking import log_artifact

    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "funnel.json", funnel)
    written = [_save(funnel_figure(funnel), out_dir, "funnel.png")]
    drawn: dict[str, list[str]] = {}
    for step, items in artifacts.items():
        for name, value in items.items():
            if name in FIGURES:
                written.append(_save(FIGURES[name](value), out_dir, f"{name}.png"))
            drawn.setdefault(step, []).append(name)
    atomic_write_json(out_dir / "artifacts.json", drawn)
    for name, images in grids.items():
        if images:
            written.append(_save(grid_figure(images, name), out_dir, f"grid_{name}.png"))
    plt.close("all")
    log_artifact(_log_inputs(out_dir, recorded or {}), "report")
    atomic_write_json(out_dir / "index.json", [p.name for p in written])
    return written
