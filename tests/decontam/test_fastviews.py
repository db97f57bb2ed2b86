"""EvalView resamples grey pictures in one band (views.neutral_as_grey, issue 12): every view's
bytes must stay those of the three-band path (decode to RGB, crop, the crawl's resize, encode)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tasks.decontam.views import EvalView, crop, neutral_as_grey
from tasks.imaging.resize import ResizeParams, decode, encode, resize

CROPS = (0.82, 0.9)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _reference(data: bytes, cfg: ResizeParams) -> list[bytes]:
    """The views as EvalView made them before the one-band path: all in RGB."""
    img = decode(data, cfg)[0]
    views = [encode(resize(img, cfg), cfg)]
    for keep in CROPS:
        for x in (0.0, 0.5, 1.0):
            for y in (0.0, 0.5, 1.0):
                views.append(encode(resize(crop(img, keep, x, y), cfg), cfg))
    return views


def _grey_sources() -> list[bytes]:
    """Grey pictures along every resize path: upscaled (LANCZOS, square and padded), shrunk
    (BOX after reduce), grey with alpha (flattened on white), grey stored as RGB."""
    rng = np.random.default_rng(7)
    digits = rng.integers(0, 256, (28, 28), dtype=np.uint8)  # fashion_mnist's size and mode
    smooth = (np.add.outer(np.arange(300), np.arange(700)) % 256).astype(np.uint8)
    alpha = np.stack([digits, rng.integers(0, 256, (28, 28), dtype=np.uint8)], axis=-1)
    return [
        _png(Image.fromarray(digits, "L")),
        _png(Image.fromarray(digits[:, :17], "L")),
        _png(Image.fromarray(smooth, "L")),
        _png(Image.fromarray(alpha, "LA")),
        _png(Image.fromarray(np.repeat(digits[..., None], 3, axis=-1), "RGB")),
    ]


@pytest.mark.parametrize("size", [256, 224])
def test_grey_views_are_the_three_band_bytes(size: int) -> None:
    cfg = ResizeParams(image_size=size)
    view = EvalView(mode="crawl", resize=cfg, crops=CROPS)
    for data in _grey_sources():
        got = [r["image"] for r in view({"uid": "x", "image": data, "text": ""})]
        assert got == _reference(data, cfg)


def test_only_neutral_images_turn_grey() -> None:
    rng = np.random.default_rng(1)
    colour = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), "RGB")
    assert neutral_as_grey(colour) is colour
    grey = np.repeat(rng.integers(0, 256, (20, 30, 1), dtype=np.uint8), 3, axis=-1)
    grey[3, 4, 2] ^= 1  # one channel off by one: not neutral
    assert neutral_as_grey(Image.fromarray(grey, "RGB")).mode == "RGB"
    grey[3, 4, 2] ^= 1
    as_l = neutral_as_grey(Image.fromarray(grey, "RGB"))
    assert as_l.mode == "L" and np.array_equal(np.asarray(as_l), grey[..., 0])
