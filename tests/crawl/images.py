"""Test images made with Pillow: every awkward kind the downloader must handle."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg(w: int = 320, h: int = 200, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    return encode(Image.new("RGB", (w, h), color), "JPEG", quality=90)


def png_rgba(w: int = 64, h: int = 48) -> bytes:
    img = Image.new("RGBA", (w, h), (0, 0, 255, 0))
    img.paste((0, 0, 255, 255), (0, 0, w // 2, h))
    return encode(img, "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (120, 90), (0, 255, 255, 0)), "JPEG")


def palette_png() -> bytes:
    return encode(Image.new("RGB", (50, 40), (10, 200, 10)).convert("P"), "PNG")


def png16() -> bytes:
    return encode(Image.new("I;16", (40, 30), 40000), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (60, 60), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_jpeg() -> bytes:
    """A 200x100 JPEG whose EXIF says 'rotate 90': upright it is 100x200."""
    img = Image.new("RGB", (200, 100), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes())


def big_png(side: int = 10000) -> bytes:
    return encode(Image.new("1", (side, side), 1), "PNG")


def bomb_png(side: int = 40000) -> bytes:
    """A real decompression bomb: a valid 1-bit PNG of side x side zeros, a few hundred KB on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    parts = [comp.compress(row * 1000) for _ in range(side // 1000)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", b"".join(parts))
        + chunk(b"IEND", b"")
    )


# A ZIP local-file header carrying a shell script, appended to an image (a JPEG/ZIP polyglot).
POLYGLOT_PAYLOAD = b"PK\x03\x04" + b"\x00" * 26 + b"#!/bin/sh\ntouch /tmp/clipmill-pwned-polyglot\n"
