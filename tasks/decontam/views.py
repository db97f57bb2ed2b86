"""Evaluation images as decontamination sees them: where they are (CLIP_benchmark tars, any
split), their `<set>/<key>` ids, the view that makes them comparable with pool images (the crawl's
resize + encode, plus crops), and pixel distances that tell copies from look-alikes."""

from __future__ import annotations

from collections.abc import Sequence
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
            if self.mode != "raw":
                img = neutral_as_grey(img)
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
        resized = resize(img, self.resize)
        # a grey view (neutral_as_grey) is resampled in one band, then encoded as the RGB image
        # the three-band path makes: the encoder sees the same pixels, so writes the same bytes
        return encode(resized if resized.mode == "RGB" else resized.convert("RGB"), self.resize)


def neutral_as_grey(img: Any) -> Any:
    """An RGB image whose every pixel has R = G = B as the same picture in mode "L", else `img`.

    Why: fashion_mnist's 2,000 grey 28 x 28 images are ~70% of the eval views, each crop
    upscaled to 256 x 256 with LANCZOS; Pillow resamples each band on its own with the same
    integer weights, so one band gives what each of three identical bands would, at a third of
    the cost (resize's white border and the encoder get the RGB image back: same bytes;
    tests/decontam/test_fastviews.py compares the views' bytes with the three-band path). The
    check reads the decoded image before any resize (a 28 x 28 image: microseconds)."""
    import numpy as np

    if img.mode != "RGB":
        return img
    px = np.asarray(img)
    if not (np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 0], px[..., 2])):
        return img
    return img.getchannel(0)


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


CRAWL_RESIZE_SECTION = (
    "resize"  # the section of params/crawl.yaml the crawl view of eval images reads
)


def crawl_params_file() -> Path:
    """params/crawl.yaml under the settings' root: the one file the crawl stage runs with."""
    from tasks.settings import get_settings

    return get_settings().root / "params" / "crawl.yaml"


def crawl_resize() -> ResizeParams:
    """The crawl's resize + encode settings, read from its params file (never re-declared by the
    stages that view eval images as the crawl stored the pool); a fault there is a ParamsError
    naming that file and field."""
    from tasks.paramsfiles import read_section

    return read_section(crawl_params_file(), CRAWL_RESIZE_SECTION, ResizeParams)


def flagged_distances(
    n_rows: int,
    flagged: Sequence[tuple[int, str, str | Path, str]],
    eval_dir: Path,
    view: EvalView,
) -> list[float | None]:
    """Pixel distance (pixel_distances) of each flagged row's image to the eval image it was
    matched to, by row index (None for rows not flagged): what tells look-alikes from false
    positives in planted-copy reports. `flagged` = (row index, uid, shard path, eval id)."""
    by_shard: dict[str, set[str]] = {}
    for _, uid, shard, _ in flagged:
        by_shard.setdefault(str(shard), set()).add(uid)
    from tasks.io.crawlshards import read_images as read_crawl_images  # any crawl layout

    pool_imgs: dict[str, bytes] = {}
    for shard, wanted in by_shard.items():
        pool_imgs.update({u: data for u, data, _ in read_crawl_images(shard, wanted)})
    eval_imgs = read_eval_images(eval_dir, {ref for *_, ref in flagged})
    dist = pixel_distances(
        [(pool_imgs.get(u), eval_imgs.get(ref)) for _, u, _, ref in flagged], view
    )
    out: list[float | None] = [None] * n_rows
    for (i, *_), d in zip(flagged, dist, strict=True):
        out[i] = d
    return out
