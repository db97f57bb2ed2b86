"""Decode safely, normalise to RGB and resize/encode with img2dataset's modes and conventions.

A library module below the stages: crawl stores every image through it, curate's
decontamination looks at eval images through it, both with the same `ResizeParams` section
(crawl's `resize` section in params/crawl.yaml), so the two can never disagree.

Safety: the pixel count is read from the header and checked before any pixel is decoded, so a
tiny file declaring 50,000 x 50,000 pixels never allocates gigabytes. JPEGs are decoded with
libjpeg's DCT scaling ("draft") straight to the smallest power-of-two size still >= the target,
which is the main reason this resizer is cheaper than decode-everything-then-shrink.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from tasks.base import ParamsSection

ResizeMode = Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"]
Encoding = Literal["jpg", "webp", "png"]

MAGIC: tuple[tuple[bytes, int, str], ...] = (  # (signature, offset, format)
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
    (b"\x00\x00\x01\x00", 0, "ico"),
)
WHITE = (255, 255, 255)  # img2dataset pads borders and flattens alpha onto white

# Error class -> what it means: the faults an image itself can have. The crawl counts them
# among its own error classes (tasks/crawl/errors.py), so the names are part of its contract.
IMAGE_ERROR_CLASSES: dict[str, str] = {
    "not_an_image": "the bytes do not start with a known image signature",
    "unsupported_format": "a real image format this crawler does not rasterise (SVG)",
    "decompression_bomb": "the declared pixel count exceeds the limit",
    "decode_error": "the image is truncated or corrupt",
    "image_too_small": "smaller than the minimum size",
    "image_too_large": "more pixels than max_image_area (img2dataset's check)",
    "aspect_ratio": "longer side over shorter side above max_aspect_ratio",
}


class ImageError(Exception):
    """An image refused or undecodable, with its error class; callers record it and move on."""

    def __init__(self, error_class: str, detail: str = "") -> None:
        if error_class not in IMAGE_ERROR_CLASSES:
            raise ValueError(f"unknown image error class {error_class!r}")
        super().__init__(f"{error_class}: {detail}" if detail else error_class)
        self.error_class = error_class
        self.detail = detail


class ResizeParams(ParamsSection):
    """How images are decoded, resized and encoded: crawl's `resize` section, read by curate too.

    The two decode limits belong here because the resizer enforces them while decoding (before
    any pixel is allocated); an image the crawl would refuse is refused the same way elsewhere.
    """

    # One field, one line, one comment: the contract test reads them this way.
    # fmt: off
    resize_mode: ResizeMode = "border"  # img2dataset's resize modes
    image_size: int = Field(default=256, ge=8, le=8192)  # px target of the resize
    resize_only_if_bigger: bool = False  # never upscale when true
    encode_format: Encoding = "jpg"  # output image encoding
    encode_quality: int = Field(default=95, ge=1, le=100)  # JPEG/WebP quality (PNG: compress level = quality // 10)
    max_image_pixels: int = Field(default=120_000_000, ge=1)  # width*height above this = decompression bomb
    min_image_size: int = Field(default=0, ge=0)  # px; images whose smaller side is below are refused
    max_image_area: int = Field(default=0, ge=0)  # px; images with width*height above are refused as image_too_large, img2dataset's max_image_area (0 = no limit)
    max_aspect_ratio: float = Field(default=0.0, ge=0.0)  # images with longer/shorter side above are refused as aspect_ratio, img2dataset's max_aspect_ratio (0 = no limit)
    # fmt: on


@dataclass
class Processed:
    """The encoded output image and the sizes before and after."""

    data: bytes
    width: int
    height: int
    original_width: int
    original_height: int
    source_format: str


def sniff(body: bytes) -> str | None:
    """Image format from the first bytes, None when they are not a known image signature."""
    for sig, offset, fmt in MAGIC:
        if body[offset : offset + len(sig)] == sig:
            return fmt if fmt != "webp" or body[:4] == b"RIFF" else None
    return None


def to_rgb(img: Any) -> Any:
    """Any Pillow mode -> RGB: alpha flattened on white, 16-bit scaled, CMYK/palette converted."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype("uint8"), "L")
    elif img.mode == "F":
        img = img.convert("L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba)  # an RGBA mask means its alpha band: no copies
        return background
    return img if img.mode == "RGB" else img.convert("RGB")


def target_size(w: int, h: int, cfg: ResizeParams) -> tuple[int, int]:
    """Size before padding/cropping: smallest side (keep_ratio, center_crop) or largest side = size."""
    s = cfg.image_size
    if cfg.resize_mode == "no":
        return w, h
    side = min(w, h) if cfg.resize_mode in ("keep_ratio", "center_crop") else max(w, h)
    if cfg.resize_only_if_bigger and side <= s:
        return w, h
    scale = s / side
    return max(1, round(w * scale)), max(1, round(h * scale))


def _open_checked(body: bytes, cfg: ResizeParams) -> Any:
    from PIL import Image

    fmt = sniff(body)
    if fmt is None:
        head = body[:512].lstrip().lower()
        if head.startswith((b"<svg", b"<?xml")) and b"<svg" in body[:4096].lower():
            raise ImageError("unsupported_format", "SVG (vector) image")
        raise ImageError("not_an_image", f"first bytes {body[:8]!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(body))
        except Image.DecompressionBombError as exc:
            raise ImageError("decompression_bomb", str(exc)) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageError("decode_error", f"{type(exc).__name__}: {exc}") from None
    w, h = img.size
    if w * h > cfg.max_image_pixels:
        raise ImageError("decompression_bomb", f"{w}x{h} = {w * h} px > {cfg.max_image_pixels}")
    if min(w, h) < max(1, cfg.min_image_size):
        raise ImageError("image_too_small", f"{w}x{h} < {cfg.min_image_size}")
    if cfg.max_image_area and w * h > cfg.max_image_area:
        raise ImageError("image_too_large", f"{w}x{h} = {w * h} px > {cfg.max_image_area}")
    if cfg.max_aspect_ratio and max(w, h) / min(w, h) > cfg.max_aspect_ratio:
        raise ImageError(
            "aspect_ratio", f"{w}x{h}: ratio {max(w, h) / min(w, h):.2f} > {cfg.max_aspect_ratio}"
        )
    return img


EXIF_FORMATS = frozenset({"jpeg", "mpo", "webp", "tiff"})  # formats that carry orientation
SHRINKABLE = frozenset({"L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "1"})


def _shrink_native(img: Any, cfg: ResizeParams) -> Any:
    """Integer box-reduce a large image in its own mode before any RGB conversion.

    Converting a 10000 x 10000 image to RGB first would allocate 300 MB per decode thread;
    reducing by the largest integer factor that keeps both sides >= the target costs a fraction.
    """
    if cfg.resize_mode == "no" or img.mode not in SHRINKABLE:
        return img
    w, h = img.size
    tw, th = target_size(w, h, cfg)
    factor = min(w // max(tw, 1), h // max(th, 1))
    if factor < 2:
        return img
    if img.mode == "1":
        img = img.convert("L")
    return img.reduce(factor)


COMPOSITE_FIRST_MAX_PIXELS = 16_000_000  # 48 MB of RGB per decode thread at most


def _normalise(img: Any, cfg: ResizeParams) -> Any:
    """Upright decoded image -> RGB, shrunk by an integer factor when far larger than the target.

    Colour images with alpha are flattened onto white before shrinking, as img2dataset does:
    shrinking RGBA makes Pillow premultiply and un-premultiply every pixel, which costs more
    than the flattening itself (measured on the sample site: -9% on large RGBA PNGs). Grey with
    alpha (LA) is cheaper to shrink first, in two bands instead of three. Past
    COMPOSITE_FIRST_MAX_PIXELS the shrink comes first to bound memory.
    """
    rgba = img.mode == "RGBA" or (img.mode == "P" and "transparency" in img.info)
    if rgba and img.size[0] * img.size[1] <= COMPOSITE_FIRST_MAX_PIXELS:
        return _shrink_native(to_rgb(img), cfg)
    return to_rgb(_shrink_native(img, cfg))


def decode(body: bytes, cfg: ResizeParams) -> tuple[Any, int, int, str]:
    """Bytes -> (RGB image upright, original width, original height, source format)."""
    from PIL import Image, ImageOps

    img = _open_checked(body, cfg)
    ow, oh = img.size
    fmt = (img.format or "").lower()
    prev = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our own limit was checked above
        if fmt == "jpeg" and cfg.resize_mode != "no":
            tw, th = target_size(ow, oh, cfg)
            side = min(tw, th)  # both sides stay >= the target whatever the EXIF rotation
            img.draft("RGB", (side, side))
        if getattr(img, "is_animated", False):
            img.seek(0)  # animated GIF / WebP / APNG: the first frame
        img.load()
        if fmt in EXIF_FORMATS or "exif" in img.info:  # skip the EXIF parse where none can be
            img = ImageOps.exif_transpose(img) or img
        img = _normalise(img, cfg)
    except ImageError:
        raise
    except Exception as exc:  # truncated data, bad chunks, unsupported codecs
        raise ImageError("decode_error", f"{type(exc).__name__}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = prev
    return img, ow, oh, fmt


def resize(img: Any, cfg: ResizeParams) -> Any:
    """img2dataset's modes: no, keep_ratio, keep_ratio_largest, center_crop, border (white pad)."""
    from PIL import Image

    w, h = img.size
    tw, th = target_size(w, h, cfg)
    if (tw, th) != (w, h):
        method = Image.Resampling.BOX if tw * th < w * h else Image.Resampling.LANCZOS
        img = img.resize(
            (tw, th), method, reducing_gap=3.0 if method == Image.Resampling.BOX else None
        )
    s = cfg.image_size
    if cfg.resize_mode == "center_crop" and (tw > s or th > s):
        left, top = (tw - s) // 2, (th - s) // 2
        img = img.crop((left, top, left + min(s, tw), top + min(s, th)))
    elif cfg.resize_mode == "border" and (tw, th) != (s, s) and tw <= s and th <= s:
        canvas = Image.new("RGB", (s, s), WHITE)
        canvas.paste(img, ((s - tw) // 2, (s - th) // 2))
        img = canvas
    return img


_ENCODERS: dict[str, tuple[str, Any]] = {  # our format name -> (Pillow format, save kwargs builder)
    "jpg": ("JPEG", lambda q: {"quality": q}),
    "webp": ("WEBP", lambda q: {"quality": q, "method": 4}),
    "png": ("PNG", lambda q: {"compress_level": min(9, q // 10)}),
}


def encode(img: Any, cfg: ResizeParams) -> bytes:
    fmt, kwargs = _ENCODERS[cfg.encode_format]
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs(cfg.encode_quality))
    return buf.getvalue()


def process_image(body: bytes, cfg: ResizeParams) -> Processed:
    """Bytes of a downloaded image -> the encoded, resized output (ImageError on any fault)."""
    img, ow, oh, fmt = decode(body, cfg)
    out = resize(img, cfg)
    try:
        data = encode(out, cfg)
    except (OSError, ValueError) as exc:
        raise ImageError("decode_error", f"encode: {type(exc).__name__}: {exc}") from None
    return Processed(data, out.size[0], out.size[1], ow, oh, fmt)
