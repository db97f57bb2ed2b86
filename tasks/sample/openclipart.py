"""OpenClipart: one Item per real SVG file, texts from its RDF block, image from the PNG package."""

from __future__ import annotations

import hashlib
import html
import os
import re
import struct
from collections import defaultdict
from pathlib import Path

from PIL import Image

from tasks.sample.debian import find_path
from tasks.sample.items import Item, seeded_order

_WORK = re.compile(r"<cc:Work\b[^>]*>(.*?)</cc:Work>", re.S)
_AGENT = re.compile(r"<cc:Agent\b.*?</cc:Agent>|<cc:Agent\b[^>]*/>", re.S)
_TITLE = re.compile(r"<dc:title>(.*?)</dc:title>", re.S)
_DESC = re.compile(r"<dc:description>(.*?)</dc:description>", re.S)
_SUBJECT = re.compile(r"<dc:subject>(.*?)</dc:subject>", re.S)
_LI = re.compile(r"<rdf:li>(.*?)</rdf:li>", re.S)
_TAG = re.compile(r"<[^>]+>")


def _clean(text: str) -> str:
    return " ".join(html.unescape(_TAG.sub(" ", text)).split())


def read_rdf(svg: Path) -> tuple[str, str, tuple[str, ...]]:
    """(title, description, keywords) of the work described by an SVG's RDF metadata."""
    head = svg.read_bytes()[:200_000].decode("utf-8", errors="replace")
    work = _WORK.search(head)
    if not work:
        return "", "", ()
    body = _AGENT.sub("", work.group(1))  # creator/publisher agents carry dc:title too
    title = _TITLE.search(body)
    desc = _DESC.search(body)
    subject = _SUBJECT.search(body)
    words = tuple(
        dict.fromkeys(
            w for w in (_clean(x) for x in _LI.findall(subject.group(1) if subject else "")) if w
        )
    )
    return _clean(title.group(1)) if title else "", _clean(desc.group(1)) if desc else "", words


MAX_PIXELS = 16_000_000  # larger renders (a few, up to 623 Mpx) stay on the site as noise only


def png_size(png: Path) -> tuple[int, int]:
    """Width and height from the PNG header, without decoding (some renders are huge)."""
    with png.open("rb") as fh:
        head = fh.read(24)
    return struct.unpack(">II", head[16:24])


def pixel_hash(png: Path) -> str:
    """Hash of decoded pixels: finds the package's pixel-identical copies saved as different files."""
    with Image.open(png) as im:
        im.load()
        palette = im.palette.tobytes() if im.mode == "P" and im.palette else b""
        return hashlib.sha1(f"{im.mode}{im.size}".encode() + palette + im.tobytes()).hexdigest()


def image_group(png: Path) -> tuple[str, bool]:
    """(group key, eval-eligible): pixel hash for normal renders, file hash for huge ones."""
    width, height = png_size(png)
    if width * height > MAX_PIXELS:
        return "file:" + hashlib.sha1(png.read_bytes()).hexdigest(), False
    return pixel_hash(png), True


def load_openclipart(svg_pkg: Path, png_pkg: Path, max_items: int = 0, seed: int = 0) -> list[Item]:
    """Every real SVG file becomes an Item; SVG symlinks become aliases (another category listing).

    With `max_items`, a seeded sample of files is read (decoding all PNGs is the slow part).
    """
    svg_root = find_path(svg_pkg, "svg", "openclipart-svg", want_dir=True)
    png_root = find_path(png_pkg, "png", "openclipart-png", want_dir=True)
    aliases: dict[Path, list[str]] = defaultdict(list)
    files: list[Path] = []
    for path in sorted(svg_root.rglob("*.svg")):
        if path.is_symlink():
            target = path.resolve()
            if target.is_file():
                aliases[target].append(path.relative_to(svg_root).with_suffix("").as_posix())
        elif path.is_file():
            files.append(path)
    if max_items and max_items < len(files):
        by_rel = {f.relative_to(svg_root).as_posix(): f for f in files}
        files = sorted(by_rel[r] for r in seeded_order(by_rel, seed, "cap")[:max_items])
    items = []
    for svg in files:
        rel = svg.relative_to(svg_root).with_suffix("")
        png = png_root / rel.with_suffix(".png")
        real_png = Path(os.path.realpath(png)) if png.exists() else None
        group, raster = image_group(real_png) if real_png else (f"svg:{rel.as_posix()}", False)
        title, desc, words = read_rdf(svg)
        captions = tuple(dict.fromkeys(c for c in (title, desc, ", ".join(words)) if c))
        parts = rel.parts
        items.append(
            Item(
                source="openclipart",
                item_id=rel.as_posix(),
                image=str(real_png or svg),
                ext="png" if real_png else "svg",
                category=parts[0] if len(parts) > 1 else "unsorted",
                subcategory="/".join(parts[:-1]) or "unsorted",
                alts={"en": title},
                title=desc or ", ".join(words),
                captions=captions,
                group=group,
                aliases=tuple(sorted(aliases.get(svg.resolve(), []))),
                raster=raster,
            )
        )
    return items
