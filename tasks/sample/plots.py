"""Figures people look at in MLflow: pairs per source, and a grid of a few real pairs."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pairs_per_source(counts: dict[str, Any]) -> Any:
    """Bar chart: image-text pairs on the crawlable site per source, and eval set sizes."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    pairs = counts["pairs"]
    ax1.bar(list(pairs), list(pairs.values()), color="#4a7fb5")
    ax1.set_title("img tags with alt text on the crawlable site")
    ax1.tick_params(axis="x", rotation=30)
    evals = counts["eval"]
    ax2.bar(list(evals), list(evals.values()), color="#c0803a")
    ax2.set_title("eval set sizes (held out of the site)")
    ax2.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return fig


def pair_grid(out: Path, n: int = 12) -> Any:
    """A few (image, alt) pairs per source, picked evenly from the ground-truth table."""
    import pyarrow.parquet as pq
    from PIL import Image

    plt = _plt()
    rows = pq.read_table(out / "metadata" / "site_images.parquet").to_pylist()
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        content = r["kind"] == "item" or (r["kind"] == "gimp" and (r["path"] or "").count("/") >= 3)
        if content and r["alt"] and r["path"].endswith(".png"):  # gimp/images/x.png: nav icons
            by_source.setdefault(r["source"], []).append(r)
    per = max(1, n // max(1, len(by_source)))
    picked = [r for rs in by_source.values() for r in rs[:: max(1, len(rs) // per)][:per]]
    cols = 4
    nrows = max(1, (len(picked) + cols - 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(12, 3.4 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, picked, strict=False):
        with Image.open(out / "site" / row["path"]) as im:
            im.thumbnail((256, 256))
            ax.imshow(im.convert("RGBA"))
        title = f"[{row['source']}/{row['lang']}] {row['alt']}"
        ax.set_title("\n".join(textwrap.wrap(title, 32)[:3]), fontsize=8)
    fig.tight_layout()
    return fig
