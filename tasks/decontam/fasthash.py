"""pHash and dHash of many grey images at once, bit for bit imagehash's (issue 12).

Where the time went: hashing a 256 x 256 view costs ~0.75 ms, of which ~0.65 ms are Pillow's
two LANCZOS resizes (to 32 x 32 for pHash, to 9 x 8 for dHash): its 8-bit resampler is a scalar
integer loop. Both are separable convolutions with fixed integer weights, so a batch of images
of one size is resized by two float64 matrix products per hash (BLAS) that give the very bytes
Pillow gives:

- the weights are Pillow's (src/libImaging/Resample.c `precompute_coeffs` with the LANCZOS
  filter, then `normalize_coeffs_8bpc`: doubles rounded to integers of 22 fractional bits),
  computed with the same double arithmetic and the same libm `sin`;
- each pass sums integer weight x uint8 pixel products: every product and partial sum is an
  integer below 2^53, so float64 sums are exact whatever order BLAS adds them in; the result is
  rounded (+2^21, floor of / 2^22) and clipped to 0..255 per pass, as Pillow's `clip8` does;
- Pillow runs the horizontal pass first, except (Pillow >= 13) when the height shrinks much more
  than the width; images are square here (the crawl's 256 x 256), where it is horizontal first.
  `resample_checked` still compares each new (input size, output size) with Pillow on a random
  probe image once per process and falls back to Pillow for that size if they differ, so another
  Pillow can only make this slower, never give other hashes.

The DCT, median and bit packing then follow imagehash 4.3 on the whole batch (scipy's DCT along
one axis of a stack is the same per-row transform; tests/decontam/test_fasthash.py compares every
hash with imagehash on random and real images).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

PRECISION_BITS = 22  # Pillow's 8-bit resampler: 32 - 8 - 2 fractional bits of its weights
PHASH_SIDE = 32  # imagehash.phash: hash_size 8 x highfreq_factor 4
HASH_SIDE = 8  # bits per side of both 64-bit hashes
LANCZOS_SUPPORT = 3.0  # Pillow's LANCZOS filter support (a = 3)


def _sinc(x: float) -> float:
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


def _lanczos(x: float) -> float:
    if -3.0 <= x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@lru_cache(maxsize=64)
def lanczos_weights(in_size: int, out_size: int) -> np.ndarray:
    """(in_size, out_size) float64 matrix of Pillow's integer LANCZOS weights (22 fractional
    bits) for resampling one axis from in_size to out_size pixels (box = the whole axis)."""
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = LANCZOS_SUPPORT * filterscale
    ss = 1.0 / filterscale
    weights = np.zeros((in_size, out_size), dtype=np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_lanczos((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        if ww != 0.0:
            k = [w / ww for w in k]
        for x, w in enumerate(k):
            fixed = (
                int(-0.5 + w * (1 << PRECISION_BITS))
                if w < 0
                else int(0.5 + w * (1 << PRECISION_BITS))
            )
            weights[xmin + x, xx] = float(fixed)
    weights.flags.writeable = False
    return weights


BLOCK_OUTPUTS = 8  # output pixels per matrix product of a pass: their taps span few inputs


@lru_cache(maxsize=64)
def weight_blocks(in_size: int, out_size: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The weights cut in blocks of BLOCK_OUTPUTS outputs: (first input, end input, first
    output, end output, weights of those inputs x outputs). A LANCZOS tap spans ~6 x the scale,
    so a block of 8 of 32 outputs reads 104 of 256 inputs: the zeros of the whole matrix are
    not multiplied (2.5x fewer products than one dense product for 256 -> 32)."""
    weights = lanczos_weights(in_size, out_size)
    blocks = []
    for lo_out in range(0, out_size, BLOCK_OUTPUTS):
        hi_out = min(lo_out + BLOCK_OUTPUTS, out_size)
        used = np.flatnonzero(np.any(weights[:, lo_out:hi_out] != 0.0, axis=1))
        lo, hi = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
        block = np.ascontiguousarray(weights[lo:hi, lo_out:hi_out])
        blocks.append((lo, hi, lo_out, hi_out, block))
    return tuple(blocks)


def _pass(rows: np.ndarray, in_size: int, out_size: int) -> np.ndarray:
    """One resampling pass along the last axis of a (R, in_size) float64 matrix."""
    out = np.empty((len(rows), out_size), dtype=np.float64)
    for lo, hi, lo_out, hi_out, block in weight_blocks(in_size, out_size):
        out[:, lo_out:hi_out] = rows[:, lo:hi] @ block  # (matmul's out= a slice: no BLAS)
    return _clip8(out)


def _clip8(sums: np.ndarray) -> np.ndarray:
    """Pillow's rounding of a pass: (sum + 2^21) >> 22, clipped to 0..255 (float64 in/out)."""
    out = np.floor((sums + float(1 << (PRECISION_BITS - 1))) * (1.0 / (1 << PRECISION_BITS)))
    return np.clip(out, 0.0, 255.0, out=out)


def resample(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, H, W) uint8 or float64 grey images -> (N, h, w) float64 LANCZOS resamples, size =
    (w, h), horizontal pass first: Pillow's bytes for the sizes it resamples horizontally first."""
    n, h, w = stack.shape
    out_w, out_h = size
    t = stack.astype(np.float64, copy=False)
    if out_w != w:
        t = _pass(t.reshape(n * h, w), w, out_w).reshape(n, h, out_w)
    if out_h != h:
        cols = np.ascontiguousarray(t.transpose(0, 2, 1)).reshape(-1, h)
        t = _pass(cols, h, out_h).reshape(n, out_w, out_h).transpose(0, 2, 1)
    return t


_VERIFIED: dict[tuple[int, int, int, int], bool] = {}  # (H, W, h, w) -> resample == Pillow's


def _matches_pillow(shape: tuple[int, int], size: tuple[int, int]) -> bool:
    """Whether `resample` gives Pillow's bytes for this size pair, on a random probe image
    (a wrong pass order or weight changes hundreds of its pixels); checked once per process."""
    key = (*shape, size[1], size[0])
    if key not in _VERIFIED:
        from PIL import Image

        probe = np.random.default_rng(12).integers(0, 256, shape, dtype=np.uint8)
        ref = np.asarray(Image.fromarray(probe, "L").resize(size, Image.Resampling.LANCZOS))
        _VERIFIED[key] = bool(np.array_equal(resample(probe[None], size)[0], ref))
    return _VERIFIED[key]


def resample_checked(stack: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`resample`, or Pillow image by image where this Pillow resamples that size otherwise."""
    if _matches_pillow(stack.shape[1:], size):
        return resample(stack, size)
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.fromarray(g, "L").resize(size, Image.Resampling.LANCZOS))
            for g in stack.astype(np.uint8)
        ]
    ).astype(np.float64)


def packed_hex(bits: np.ndarray) -> list[str]:
    """(N, 8, 8) booleans -> imagehash's hex strings (row-major bits, 16 hex digits each)."""
    packed = np.packbits(bits.reshape(len(bits), -1), axis=1)
    return [row.tobytes().hex() for row in packed]


CHUNK_IMAGES = (
    16  # images per matrix product: 16 x 256 x 256 float64 = 8 MB (measured: 4 and 64 slower)
)


def hash_stack(stack: np.ndarray) -> tuple[list[str], list[str]]:
    """(pHashes, dHashes) of (N, H, W) uint8 grey images of one size: imagehash.phash and
    imagehash.dhash of each, as hex; CHUNK_IMAGES at a time (a whole crawl batch of 256 in float64,
    134 MB, cost more in page faults and cache misses than the products themselves)."""
    ph: list[str] = []
    dh: list[str] = []
    for start in range(0, len(stack), CHUNK_IMAGES):
        p, d = _hash_chunk(stack[start : start + CHUNK_IMAGES])
        ph += p
        dh += d
    return ph, dh


def _hash_chunk(stack: np.ndarray) -> tuple[list[str], list[str]]:
    import scipy.fftpack

    if len(stack) == 0:
        return [], []
    stack = stack.astype(np.float64)  # once for both hashes (exact: small integers)
    small = resample_checked(stack, (PHASH_SIDE, PHASH_SIDE)).astype(np.uint8)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=1), axis=2)
    low = dct[:, :HASH_SIDE, :HASH_SIDE]
    med = np.median(low.reshape(len(low), -1), axis=1)
    grid = resample_checked(stack, (HASH_SIDE + 1, HASH_SIDE))
    return (
        packed_hex(low > med[:, None, None]),
        packed_hex(grid[:, :, 1:] > grid[:, :, :-1]),
    )


def hash_greys(greys: list[Any]) -> list[tuple[str, str]]:
    """(pHash, dHash) hex of each grey image (PIL "L" or 2-D uint8 array), batched by size."""
    arrays = [np.asarray(g, dtype=np.uint8) for g in greys]
    out: list[tuple[str, str]] = [("", "")] * len(arrays)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, a in enumerate(arrays):
        by_shape.setdefault(a.shape, []).append(i)
    for idx in by_shape.values():
        ph, dh = hash_stack(np.stack([arrays[i] for i in idx]))
        for i, p, d in zip(idx, ph, dh, strict=True):
            out[i] = (p, d)
    return out
