"""fasthash gives imagehash's pHash and dHash bit for bit (issue 12: Pillow's LANCZOS resizes
were most of the hashing time): random, smooth, flat and two-tone images, the crawl's 256 x 256
JPEGs, and sizes where Pillow resamples the height first (the probe sends those to Pillow)."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pytest
from PIL import Image

from tasks.decontam import fasthash
from tasks.decontam.fasthash import hash_greys, resample


def _reference(grey: Image.Image) -> tuple[str, str]:
    return str(imagehash.phash(grey)), str(imagehash.dhash(grey))


def _greys(seed: int, n: int, sizes: list[tuple[int, int]]) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        kind = i % 5
        if kind == 0:
            a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        elif kind == 1:
            a = (np.add.outer(np.arange(h), np.arange(w)) * int(rng.integers(1, 5)) % 256).astype(
                np.uint8
            )
        elif kind == 2:
            a = np.full((h, w), int(rng.integers(0, 256)), np.uint8)  # flat: median ties
        elif kind == 3:
            a = np.where(rng.random((h, w)) < 0.3, 255, 0).astype(np.uint8)  # clip-art-like
        else:  # a smooth picture through the crawl's JPEG round trip
            small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
            buf = io.BytesIO()
            small.resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=95)
            a = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
        out.append(Image.fromarray(a, "L"))
    return out


def test_crawl_sized_images_hash_as_imagehash() -> None:
    greys = _greys(0, 120, [(256, 256)])
    assert hash_greys(greys) == [_reference(g) for g in greys]
    assert len({h for h, _ in hash_greys(greys)}) > 50  # the images differ, so do their hashes


@pytest.mark.parametrize(
    "sizes",
    [[(28, 28), (100, 100), (32, 32), (9, 9)], [(300, 40), (17, 500), (257, 256), (1123, 794)]],
)
def test_other_sizes_hash_as_imagehash(sizes: list[tuple[int, int]]) -> None:
    """Mixed sizes in one batch, tall ones among them (Pillow >= 13 resamples their height
    first: fasthash must fall back to Pillow there, or match it)."""
    greys = _greys(1, 24, sizes)
    assert hash_greys(greys) == [_reference(g) for g in greys]


def test_resample_is_pillows_lanczos_where_it_claims() -> None:
    rng = np.random.default_rng(2)
    for shape, size in [((256, 256), (32, 32)), ((256, 256), (9, 8)), ((60, 200), (31, 17))]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a, "L").resize(size, Image.Resampling.LANCZOS))
        assert np.array_equal(resample(a[None], size)[0], ref)
    # the probe's verdict on a size holds for other images of that size (a wrong pass order
    # changes hundreds of pixels): the tall size Pillow >= 13 resamples height first included
    for shape, size in [((358, 108), (32, 32)), ((256, 256), (9, 8))]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        ref = np.asarray(Image.fromarray(a, "L").resize(size, Image.Resampling.LANCZOS))
        same = np.array_equal(resample(a[None], size)[0], ref)
        assert fasthash._matches_pillow(shape, size) == same
