"""Fashion-MNIST from the Debian package's IDX files: the test split (an eval set that never meets
the site) and a seeded, class-balanced subset of the 60k train images (the linear probe's train split)."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.io.clipbench import Sample
from tasks.sample.debian import find_path

CLASSNAMES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)  # the label order of the IDX files


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format): magic, dims, then big-endian unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def load_test_samples(pkg: Path, max_items: int) -> list[Sample]:
    """The test split as PNG samples with class labels, first `max_items` (0 = all 10,000)."""
    images = read_idx(find_path(pkg, "t10k-images-idx3-ubyte*", "dataset-fashion-mnist"))
    labels = read_idx(find_path(pkg, "t10k-labels-idx1-ubyte*", "dataset-fashion-mnist"))
    n = len(labels) if not max_items else min(max_items, len(labels))
    return [Sample(png_bytes(images[i]), "png", int(labels[i])) for i in range(n)]


def balanced_subset(labels: np.ndarray, max_items: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset with (almost) equal counts per class (0 = all).

    Each class gets `max_items // n_classes`, the first `max_items % n_classes` classes one
    more, capped by its size; within a class the images are a seeded random choice. Balanced
    rather than uniformly random so a small subset still trains every class of the probe.
    """
    if not max_items or max_items >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes = np.unique(labels)
    rng = np.random.default_rng([seed, 0xFA5])  # own stream: other seeded choices stay unchanged
    chosen: list[np.ndarray] = []
    for n, c in enumerate(classes):
        quota = max_items // len(classes) + (n < max_items % len(classes))
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[:quota])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def load_train_samples(pkg: Path, max_items: int, seed: int) -> list[Sample]:
    """The train split as PNG samples: a seeded class-balanced subset of `max_items` (0 = all 60k).

    Written as the `train` split of the fashion_mnist eval set, for the linear probe only: no
    model is evaluated on it, and decontamination guards the `test` split.
    """
    images = read_idx(find_path(pkg, "train-images-idx3-ubyte*", "dataset-fashion-mnist"))
    labels = read_idx(find_path(pkg, "train-labels-idx1-ubyte*", "dataset-fashion-mnist"))
    if len(images) != len(labels):
        raise ValueError(
            f"{pkg}: Fashion-MNIST train files disagree: {len(images)} images, {len(labels)} labels"
        )
    return [
        Sample(png_bytes(images[i]), "png", int(labels[i]))
        for i in balanced_subset(labels, max_items, seed)
    ]
