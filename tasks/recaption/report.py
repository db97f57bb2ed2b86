"""Recaption metrics and report: throughput, failure reasons, the teacher's CLIP-score
distributions of the alt texts and the new captions, and image grids with old and new captions
(rows the new caption helped most and least)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.recaption.params import RecaptionParams


def _stats(x: np.ndarray, name: str) -> dict[str, float]:
    if x.size == 0:
        return {}
    q = np.quantile(x, [0.1, 0.5, 0.9])
    return {
        f"{name}_mean": float(x.mean()),
        f"{name}_p10": float(q[0]),
        f"{name}_p50": float(q[1]),
        f"{name}_p90": float(q[2]),
    }


def _scores(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Alt-text and long-positive scores of the rows that have both."""
    alt = table["score_alt"].to_numpy(zero_copy_only=False).astype(np.float64)
    new = table["score_long_positive"].to_numpy(zero_copy_only=False).astype(np.float64)
    both = ~(np.isnan(alt) | np.isnan(new))
    return alt[both], new[both]


def summarise(
    table: pa.Table, rows: pa.Table, done: list[dict[str, Any]], seconds: float, resumed: int
) -> dict[str, Any]:
    """The stage's metrics (metrics/recaption.json and the MLflow run)."""
    from tasks.recaption.stage import reasons

    errors = table["error"].to_pylist()
    computed = sum(d["rows"] for d in done)
    alt, new = _scores(table)
    four = sum(
        1
        for lp, ln, sp, sn in zip(
            table["long_positive"].to_pylist(),
            table["long_negative"].to_pylist(),
            table["short_positive"].to_pylist(),
            table["short_negative"].to_pylist(),
            strict=True,
        )
        if lp and ln and sp and sn
    )
    metrics: dict[str, Any] = {
        "rows_selected": rows.num_rows,
        "rows_annotated": computed,
        "blocks": len(done) + resumed,
        "blocks_resumed": resumed,
        "rows_with_error": sum(e is not None for e in errors),
        "rows_with_all_four": four,
        "captions_per_s": computed / seconds if seconds > 0 and computed else 0.0,
        "pool_seconds": seconds,
        "actor_cpu_seconds": sum(d.get("cpu_seconds", 0.0) for d in done),
        "failures": dict(reasons(errors).most_common()),
        "scored_rows": int(alt.size),
        "share_new_caption_scores_higher": float((new > alt).mean()) if alt.size else 0.0,
        **_stats(alt, "score_alt"),
        **_stats(new, "score_long_positive"),
    }
    return metrics


def _figure_scores(alt: np.ndarray, new: np.ndarray) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(min(alt.min(), new.min()), max(alt.max(), new.max()), 40).tolist()
    ax.hist(alt, bins=bins, histtype="step", label="alt text")
    ax.hist(new, bins=bins, histtype="step", label="long positive")
    ax.set_xlabel("teacher CLIP score (cosine)")
    ax.set_ylabel("rows")
    ax.legend()
    ax.set_title("CLIP score of the alt text and of the new caption")
    return fig


def _grid(images: list[tuple[bytes, str, str]], title: str) -> Any:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    cols = 3
    n_rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(cols * 3.2, n_rows * 3.2), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (data, old, new) in zip(axes.ravel(), images, strict=False):
        try:
            ax.imshow(Image.open(io.BytesIO(data)).convert("RGB"))
        except Exception:  # noqa: BLE001 - a bad image is drawn as text, the grid goes on
            ax.text(0.5, 0.5, "undecodable", ha="center")
        ax.set_title(f"old: {old[:40]}\nnew: {new[:40]}", fontsize=6)
    fig.suptitle(title)
    return fig


def _examples(
    table: pa.Table, rows: pa.Table, p: RecaptionParams
) -> dict[str, list[tuple[bytes, str, str]]]:
    """The rows the new caption raised most / lowered most, with their images."""
    from tasks.io.paths import resolve_path
    from tasks.recaption.actor import read_block_images

    alt = table["score_alt"].to_numpy(zero_copy_only=False).astype(np.float64)
    new = table["score_long_positive"].to_numpy(zero_copy_only=False).astype(np.float64)
    gain = np.nan_to_num(new - alt, nan=0.0)
    order = np.argsort(-gain, kind="stable")
    k = p.report.examples
    groups = {"improved": order[:k], "worsened": order[::-1][:k]}
    uids = table["uid"].to_pylist()
    shard = dict(zip(rows["uid"].to_pylist(), rows["shard"].to_pylist(), strict=True))
    text = dict(zip(rows["uid"].to_pylist(), rows["text"].to_pylist(), strict=True))
    wanted = sorted({uids[i] for g in groups.values() for i in g})
    found = read_block_images(
        {"uid": wanted, "shard": [shard[u] for u in wanted]}, resolve_path(p.paths.crawl_dir)
    )
    lp = table["long_positive"].to_pylist()
    return {
        name: [(found[uids[i]], text[uids[i]] or "", lp[i] or "") for i in idx if uids[i] in found]
        for name, idx in groups.items()
    }


def write_report(table: pa.Table, rows: pa.Table, p: RecaptionParams, out_dir: Path) -> None:
    """Score histogram, example grids and a JSON of the examples; logged to the MLflow run."""
    from tasks.io.atomic import atomic_write_json
    from tasks.tracking import log_artifact

    out_dir.mkdir(parents=True, exist_ok=True)
    alt, new = _scores(table)
    figures: dict[str, Any] = {}
    if alt.size:
        figures["scores.png"] = _figure_scores(alt, new)
    examples = _examples(table, rows, p) if p.report.examples and table.num_rows else {}
    for name, items in examples.items():
        if items:
            figures[f"grid_{name}.png"] = _grid(
                items, f"new caption {name} the teacher's score most"
            )
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=100, bbox_inches="tight")
        log_artifact(out_dir / name, "report")
    listing = {
        n: [{"alt_text": o, "long_positive": lp} for _, o, lp in items]
        for n, items in examples.items()
    }
    atomic_write_json(out_dir / "examples.json", listing)
    log_artifact(out_dir / "examples.json", "report")
