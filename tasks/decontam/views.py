"""Evaluation images as decontamination sees them: where they are (CLIP_benchmark tars, any
split), their `<set>/<key>` ids, the view that makes them comparable with pool images (the crawl's
resize + encode, plus crops), and pixel distances that tell copies from look-alikes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.imaging.resize import ResizeParams
from tasks.io.wds import IMAGE_EXTS, read_images, sample_keys

CROP_POSITIONS = (0.0, 0.5, 1.0)  # crop offsets along each axis: start, centre, end


@dataclass(frozen=True)
class EvalView:
    """How an eval image is looked at before it is hashed and embedded (a Ray Data flat_map).

    "crawl": through the crawl's own decode + resize + encode (tasks.imaging.resize), so it is
    compared with pool images in the form the crawl stored them (border-padded to 256 px and
    re-encoded as JPEG by default); "raw": as stored. `crops` adds, per kept fraction, nine crops
    (3x3 positions) taken before the resize, as a re-posted crop of the image would be: those rows
    are hashed only (`embed` False); the whole view keeps variant "full".
    """

    mode: str = "crawl"
    resize: ResizeParams = ResizeParams()
    crops: tuple[float, ...] = ()

    def __call__(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        full = {**row, "variant": "full", "embed": True}
        if not row["image"]:
            return [full]
        try:
            img = self._decode(row["image"])
            out = [full if self.mode == "raw" else {**full, "image": self._encode(img)}]
            for keep in self.crops:
                for x in CROP_POSITIONS:
                    for y in CROP_POSITIONS:
                        out.append(
                            {
                                **row,
                                "image": self._encode(crop(img, keep, x, y)),
                                "variant": f"crop{keep:g}@{x:g},{y:g}",
                                "embed": False,
                            }
                        )
        except Exception:  # undecodable: hash_batch records the reason on the whole view
            return [full]
        return out

    def _decode(self, data: bytes) -> Any:
        from tasks.imaging.resize import decode
        from tasks.imaging.rgb import decode_rgb

        if self.mode == "raw":
            return decode_rgb(data)
        return decode(data, self.resize)[0]

    def _encode(self, img: Any) -> bytes:
        import io

        from tasks.imaging.resize import encode, resize

        if self.mode == "raw":
            buf = io.BytesIO()
            img.save(buf, "PNG")
            return buf.getvalue()
        return encode(resize(img, self.resize), self.resize)


def crop(img: Any, keep: float, x: float, y: float) -> Any:
    """`keep` of each side, the window placed at fraction x, y of the room left (0 = left/top)."""
    w, h = max(1, round(img.width * keep)), max(1, round(img.height * keep))
    left, top = round((img.width - w) * x), round((img.height - h) * y)
    return img.crop((left, top, left + w, top + h))


def eval_shards(eval_dir: Path) -> dict[Path, list[tuple[str, str]]]:
    """Every eval tar of the `test` split -> [(sample key, "")]; an image's id is `<set>/<key>`.

    Only `test` is evaluated; a `train` split (fashion_mnist's, for the linear probe) reuses the
    keys s0000000... and is no eval data, so it is left out.
    """
    out: dict[Path, list[tuple[str, str]]] = {}
    for tar in sorted(eval_dir.glob("*/test/*.tar")):
        out[tar] = [(k, "") for k in sample_keys(tar, IMAGE_EXTS)]
    return out


def eval_prefixes(shards: dict[Path, list[tuple[str, str]]], eval_dir: Path) -> dict[str, str]:
    """shard -> `<set>/`: eval sets reuse sample keys (s0000000 is in every set)."""
    return {str(tar): tar.relative_to(eval_dir).parts[0] + "/" for tar in shards}


def with_eval_ids(features: pa.Table) -> pa.Table:
    """The eval image id is its `<set>/<key>` uid."""
    return features.append_column("id", features.column("uid"))


def read_eval_images(eval_dir: Path, ids: set[str]) -> dict[str, bytes]:
    """Image bytes of the wanted eval ids (`<set>/<key>`)."""
    out: dict[str, bytes] = {}
    for tar in eval_shards(eval_dir):
        prefix = tar.relative_to(eval_dir).parts[0] + "/"
        if not any(i.startswith(prefix) for i in ids):
            continue
        wanted = {i.removeprefix(prefix) for i in ids if i.startswith(prefix)}
        for key, data, _ in read_images(tar, wanted):
            out[prefix + key] = data
    return out


def thumbnail(data: bytes, side: int = 32) -> Any:
    """side x side RGB thumbnail (box filter) as float32, for look-alike checks."""
    import numpy as np
    from PIL import Image

    from tasks.imaging.rgb import decode_rgb

    img = decode_rgb(data).resize((side, side), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32)


def pixel_distances(
    pairs: list[tuple[bytes | None, bytes | None]], view: EvalView
) -> list[float | None]:
    """Mean absolute RGB difference (0-255) of 32x32 thumbnails of each (pool image, eval image),
    the eval image seen through `view` (its whole view, as the pool stores images); None when
    either image is missing or undecodable. Independent of the detector's hashes and embeddings,
    so it can tell look-alikes of an eval image from unrelated images among the flagged."""
    whole = replace(view, crops=())
    out: list[float | None] = []
    for pool_img, eval_img in pairs:
        if not pool_img or not eval_img:
            out.append(None)
            continue
        try:
            viewed = whole({"uid": "", "image": eval_img, "text": ""})[0]["image"]
            out.append(float(abs(thumbnail(pool_img) - thumbnail(viewed)).mean()))
        except Exception:
            out.append(None)
    return out
