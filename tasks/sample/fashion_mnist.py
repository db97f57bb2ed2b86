"""Fashion-MNIST test set from the Debian package's IDX files: an eval set that never meets the site."""

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
