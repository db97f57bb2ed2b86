"""Perceptual hashes (64-bit pHash and dHash, hex) and exact digests of images, and Hamming
matching between two sets of hashes (faiss binary range search)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa


def hash_hex(h: Any) -> str:
    """An imagehash value as its 16-character hex string (what pool columns store)."""
    return str(h)


def hex_to_u64(values: list[str | None]) -> np.ndarray:
    """Hex hashes -> uint64 (0 where missing; callers mask missing rows themselves)."""
    return np.array([int(v, 16) if v else 0 for v in values], dtype=np.uint64)


def hash_codes(values: list[str | None]) -> np.ndarray:
    """uint64 hashes -> faiss' binary code layout (8 uint8 per row)."""
    return hex_to_u64(values).astype(">u8").view(np.uint8).reshape(-1, 8)


def hamming_pairs(
    a: np.ndarray, b: np.ndarray, max_distance: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i in a, j in b, distance) with Hamming distance <= max_distance (faiss binary range search)."""
    import faiss

    index = faiss.IndexBinaryFlat(64)
    index.add(np.ascontiguousarray(b))
    lims, dist, ids = index.range_search(
        np.ascontiguousarray(a), max_distance + 1
    )  # radius is exclusive
    per_query: np.ndarray = np.diff(np.asarray(lims, dtype=np.int64))
    rows = np.repeat(np.arange(len(a)), per_query)
    return rows, ids.astype(np.int64), dist.astype(np.int64)


def hash_batch(batch: pa.Table, known: dict[str, tuple[str, str]] | None = None) -> pa.Table:
    """sha256 of the stored bytes + pHash + dHash (64-bit, hex); a reason when the image is bad.

    `known` (sha256 -> (pHash, dHash), tasks/decontam/stored.py known_hashes) skips decoding
    the images whose bytes were hashed before: same bytes, same hashes."""
    from tasks.decontam.fasthash import hash_greys
    from tasks.imaging.rgb import decode_rgb

    sha: list[str | None] = []
    greys: dict[int, Any] = {}  # row -> its grey image, hashed together below
    ph: list[str | None] = []
    dh: list[str | None] = []
    reasons: list[str | None] = []
    for data in batch.column("image").to_pylist():
        if not data:
            sha.append(None)
            ph.append(None)
            dh.append(None)
            reasons.append("image_missing")
            continue
        sha.append(hashlib.sha256(data).hexdigest())
        if known and sha[-1] in known:
            ph.append(known[sha[-1]][0])
            dh.append(known[sha[-1]][1])
            reasons.append(None)
            continue
        try:
            img = decode_rgb(data)
        except Exception:
            ph.append(None)
            dh.append(None)
            reasons.append("image_undecodable")
            continue
        # both hashes start from the grey image, converted once here; the batch's greys are
        # hashed at once (fasthash: imagehash's pHash and dHash, bit for bit, in a third of
        # the time) and filled in below
        greys[len(ph)] = img.convert("L")
        ph.append(None)
        dh.append(None)
        reasons.append(None)
    for i, (p, d) in zip(greys, hash_greys(list(greys.values())), strict=True):
        ph[i], dh[i] = p, d
    return (
        batch.append_column("image_sha256", pa.array(sha, pa.string()))
        .append_column("phash", pa.array(ph, pa.string()))
        .append_column("dhash", pa.array(dh, pa.string()))
        .append_column("image_reason", pa.array(reasons, pa.string()))
    )
