"""hash_batch converts each image to grey once for both hashes (issue 12: decontaminate's cost is
~19 hashed views per eval image): the hashes must stay those imagehash gives on the RGB image."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

from tasks.decontam.hashing import hash_batch


def _encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _images() -> list[bytes]:
    """RGB and grey JPEGs, an RGBA and a palette PNG with transparency: every decode path."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (61, 47, 3), dtype=np.uint8), "RGB")
    smooth = Image.fromarray(
        (np.add.outer(np.arange(80), np.arange(120)) % 256).astype(np.uint8), "L"
    )
    rgba = Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA")
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.info["transparency"] = 3
    return [
        _encoded(rgb, "JPEG"),
        _encoded(smooth, "JPEG"),
        _encoded(smooth.convert("RGB").resize((256, 256)), "JPEG"),
        _encoded(rgba, "PNG"),
        _encoded(pal, "PNG"),
    ]


def test_hashes_are_imagehash_of_the_rgb_image() -> None:
    import imagehash

    from tasks.imaging.rgb import decode_rgb

    images = _images()
    out = hash_batch(pa.table({"image": pa.array(images, pa.binary())})).to_pylist()
    for data, row in zip(images, out, strict=True):
        rgb = decode_rgb(data)
        assert row["phash"] == str(imagehash.phash(rgb))
        assert row["dhash"] == str(imagehash.dhash(rgb))
        assert row["image_reason"] is None
    assert len({r["phash"] for r in out}) > 1  # the images differ, so must their hashes


def test_bad_images_keep_their_reasons() -> None:
    table = pa.table({"image": pa.array([b"", b"not an image"], pa.binary())})
    rows = hash_batch(table).to_pylist()
    assert [r["image_reason"] for r in rows] == ["image_missing", "image_undecodable"]
    assert all(r["phash"] is None and r["dhash"] is None for r in rows)
