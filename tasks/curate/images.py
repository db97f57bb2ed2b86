"""Read samples (image bytes + text/json) from webdataset tar shards, by shard and uid."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def iter_tar_samples(path: str | Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; webdataset groups members by the name before the first dot."""
    current: str | None = None
    parts: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            key, _, ext = name.partition(".")
            if key != current:
                if current is not None:
                    yield current, parts
                current, parts = key, {}
            fh = tar.extractfile(member)
            if fh is not None:
                parts[ext.lower()] = fh.read()
    if current is not None:
        yield current, parts


def image_bytes(parts: dict[str, bytes]) -> bytes | None:
    for ext in IMAGE_EXTS:
        if ext in parts:
            return parts[ext]
    return None


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


def read_samples(
    shard: str | Path, uids: set[str] | None = None
) -> Iterator[tuple[str, bytes, dict[str, bytes]]]:
    """(uid, image bytes, all parts) for the wanted uids of one shard (all when uids is None)."""
    for key, parts in iter_tar_samples(shard):
        if uids is not None and key not in uids:
            continue
        data = image_bytes(parts)
        if data is not None:
            yield key, data, parts
