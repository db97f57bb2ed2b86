"""Near-duplicates of eval images, planted on the site so decontamination can be measured.

Each transformation keeps the image recognisably the same picture, as re-posts on the web do:
a resize, a crop, a JPEG re-encode, or a small colour shift. Parameters come from seeded coins.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from itertools import zip_longest

from PIL import Image

from tasks.sample.heldout import EvalRecord
from tasks.sample.items import seeded_order, stable_unit

PRIMARY_SETS = ("fashion_mnist", "emoji_groups", "tuxpaint_categories", "openclipart_categories")


@dataclass(frozen=True)
class Planted:
    """An eval image put on the site after a transformation."""

    data: bytes
    ext: str
    alt: str  # the eval item's first caption (or class name): text leaks along with the image
    eval_set: str
    eval_key: str
    transformation: str
    source: str
    item_id: str
    other_eval_keys: tuple[str, ...]  # "set/key" of the same image in other eval sets

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def site_path(self) -> str:
        return f"gallery/community/uploads/{self.sha256[:16]}.{self.ext}"

    def row(self) -> dict:
        return {
            "site_path": self.site_path,
            "eval_set": self.eval_set,
            "eval_key": self.eval_key,
            "transformation": self.transformation,
            "source": self.source,
            "item_id": self.item_id,
            "other_eval_keys": list(self.other_eval_keys),
            "alt": self.alt,
            "sha256": self.sha256,
        }


def _coin(key: str, name: str) -> float:
    return stable_unit("planted", key, name)


def _encode(im: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _flatten(im: Image.Image) -> Image.Image:
    """RGB on white: what a JPEG re-encode of a transparent image looks like."""
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGB", im.size, (255, 255, 255))
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def resize(im: Image.Image, key: str) -> tuple[bytes, str]:
    """Down to 50-80 % (small images up 2-3x instead)."""
    factor = 2 + _coin(key, "up") if min(im.size) < 64 else 0.5 + 0.3 * _coin(key, "down")
    size = (max(1, round(im.width * factor)), max(1, round(im.height * factor)))
    return _encode(im.resize(size, Image.Resampling.LANCZOS)), "png"


def crop(im: Image.Image, key: str) -> tuple[bytes, str]:
    """Keep 80-92 % of each side at a seeded offset."""
    keep = 0.8 + 0.12 * _coin(key, "keep")
    w, h = max(1, round(im.width * keep)), max(1, round(im.height * keep))
    x = round((im.width - w) * _coin(key, "x"))
    y = round((im.height - h) * _coin(key, "y"))
    return _encode(im.crop((x, y, x + w, y + h))), "png"


def jpeg(im: Image.Image, key: str) -> tuple[bytes, str]:
    """Re-encode as JPEG at quality 55-85."""
    quality = 55 + round(30 * _coin(key, "q"))
    return _encode(_flatten(im), "JPEG", quality=quality), "jpg"


def color_shift(im: Image.Image, key: str) -> tuple[bytes, str]:
    """Add a small offset (3-12 levels, either sign) to each colour channel."""
    alpha = im.convert("RGBA").getchannel("A") if im.mode in ("RGBA", "LA", "P") else None
    rgb = im.convert("RGB")
    bands = []
    for i, band in enumerate(rgb.split()):
        shift = round(3 + 9 * _coin(key, f"s{i}")) * (1 if _coin(key, f"sign{i}") < 0.5 else -1)
        bands.append(band.point(lambda v, s=shift: min(255, max(0, v + s))))
    out = Image.merge("RGB", bands)
    if alpha is not None:
        out.putalpha(alpha)
    return _encode(out), "png"


TRANSFORMS: dict[str, Callable[[Image.Image, str], tuple[bytes, str]]] = {
    "resize": resize,
    "crop": crop,
    "jpeg": jpeg,
    "color_shift": color_shift,
}


def transform(data: bytes, name: str, key: str) -> tuple[bytes, str]:
    """Apply the named transformation to encoded image bytes; return (bytes, extension)."""
    with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as im:
        warnings.simplefilter("ignore", UserWarning)  # palette-with-transparency conversion notes
        im.load()
        return TRANSFORMS[name](im, key)


def choose(
    sets: dict[str, list[EvalRecord]], count: int, transforms: tuple[str, ...], seed: int
) -> list[Planted]:
    """`count` images of the primary eval sets, transformed in turn by each of `transforms`."""
    also: dict[tuple[str, str], list[str]] = {}
    for name in sorted(sets):
        for r in sets[name]:
            also.setdefault((r.source, r.item_id), []).append(f"{name}/{r.key}")
    candidates = {f"{r.eval_set}/{r.key}": r for name in PRIMARY_SETS for r in sets.get(name, [])}
    queues = [
        seeded_order([f"{name}/{r.key}" for r in sets.get(name, [])], seed, "planted")
        for name in PRIMARY_SETS
    ]
    chosen = [ref for round_ in zip_longest(*queues) for ref in round_ if ref][:count]
    out = []
    for i, ref in enumerate(sorted(chosen)):  # sets take turns: each is represented
        r = candidates[ref]
        name = transforms[i % len(transforms)]
        data, ext = transform(r.image, name, f"{seed}:{ref}")
        alt = r.captions[0] if r.captions else (r.classname or "")
        others = tuple(k for k in also[(r.source, r.item_id)] if k != ref)
        out.append(Planted(data, ext, alt, r.eval_set, r.key, name, r.source, r.item_id, others))
    return out
