"""Figures people look at: confusion matrix, per-class recall, retrieval examples, ROC curve.

Each function returns a matplotlib Figure; `save` writes it to the output folder and logs it to
the active MLflow run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(matrix: np.ndarray, classnames: Sequence[str], title: str) -> Any:
    plt = _plt()
    n = len(classnames)
    size = min(4 + 0.25 * n, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), [c[:20] for c in classnames], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [c[:20] for c in classnames], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    return fig


def recall_figure(recall: np.ndarray, classnames: Sequence[str], title: str) -> Any:
    plt = _plt()
    order = np.argsort(np.nan_to_num(recall, nan=-1))
    fig, ax = plt.subplots(figsize=(7, min(2 + 0.18 * len(classnames), 24)))
    ax.barh(range(len(order)), np.nan_to_num(recall[order]), color="tab:blue")
    ax.set_yticks(range(len(order)), [classnames[i][:30] for i in order], fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_xlabel("recall")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def retrieval_figure(
    images: Sequence[Any], top_texts: Sequence[Sequence[tuple[str, bool]]], title: str
) -> Any:
    """One row per query image: the image, then its top captions (green = a true caption)."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(
        n, 2, figsize=(9, 2.2 * n), squeeze=False, gridspec_kw={"width_ratios": [1, 3]}
    )
    for row, (img, texts) in enumerate(zip(images, top_texts, strict=True)):
        axes[row, 0].imshow(img)
        axes[row, 0].axis("off")
        axes[row, 1].axis("off")
        for j, (text, ok) in enumerate(texts):
            axes[row, 1].text(
                0,
                0.8 - 0.25 * j,
                f"{j + 1}. {text[:70]}",
                color="green" if ok else "red",
                fontsize=8,
            )
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> Any:
    """curves: name -> (fpr, tpr, auc); log-scaled FPR so the low-FPR region is visible."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{name} (AUC {auc:.3f})")
    grid = np.logspace(-4, 0, 50)
    ax.plot(grid, grid, "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: Any, out_dir: Path, name: str) -> Path:
    """PNG under <out>/plots/ and the same file in the active MLflow run (`plots/<name>`).

    Rendered once: the written PNG is logged as the artifact (mlflow.log_figure would render
    the figure a second time; with ~26 figures, half of the figures' time in a demo's evaluate,
    the 90-class confusion matrices the largest)."""
    from tasks.tracking import log_artifact

    path = out_dir / "plots" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    log_artifact(path, str(PurePosixPath("plots", name).parent))
    _plt().close(fig)
    return path
