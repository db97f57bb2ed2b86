"""Decode image bytes to RGB the one way every hash and embedding of an image sees them."""

from __future__ import annotations

import io
from typing import Any


def decode_rgb(data: bytes) -> Any:
    """A PIL RGB image, transparency composited onto white; raises on undecodable bytes.

    Dropping alpha instead would turn transparent clip-art and emoji into shapes on black,
    which hash alike and collide across unrelated images.
    """
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB")
    return img.convert("RGB")
