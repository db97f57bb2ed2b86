"""Hand-made CLIP_benchmark-layout sets for the evaluate tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tests.support.wds import write_wds_set

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
RGB = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 20), (150, 30, 160), (250, 140, 0)]


def png(rgb: tuple[int, int, int], seed: int, size: int = 40) -> bytes:
    """A coloured square with a little seeded noise, as PNG bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(rgb)[None, None, :] + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(
        np.uint8
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="png")
    return buf.getvalue()


def make_classification(root: Path, per_class: int = 4, split: str = "test", seed: int = 0) -> Path:
    images, labels = [], []
    for c, rgb in enumerate(RGB):
        for j in range(per_class):
            images.append(png(rgb, seed * 1000 + c * 100 + j))
            labels.append(c)
    return write_wds_set(
        root,
        images,
        split=split,
        labels=labels,
        classnames=COLOURS,
        templates=["a photo of a {c} square.", "a {c} thing."],
    )


def make_retrieval(root: Path, n: int = 12, seed: int = 0) -> Path:
    images, captions = [], []
    for i in range(n):
        c = i % len(RGB)
        images.append(png(RGB[c], seed * 1000 + i))
        captions.append([f"a {COLOURS[c]} square number {i}", f"picture {i} in {COLOURS[c]}"])
    return write_wds_set(root, images, captions=captions)
