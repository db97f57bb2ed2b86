"""Tux Paint stamps: one Item per stamp image, descriptions in many languages from its .txt file."""

from __future__ import annotations

from pathlib import Path

from tasks.sample.debian import find_path
from tasks.sample.items import Item


def read_descriptions(txt: Path) -> dict[str, str]:
    """First line = English; then `lang.utf8=text` lines (lang as in locales: de, pt_BR, ...)."""
    lines = txt.read_text(encoding="utf-8", errors="replace").splitlines()
    out: dict[str, str] = {}
    if lines and "=" not in lines[0].split(" ")[0]:
        out["en"] = " ".join(lines[0].split())
    for line in lines[1:] if out else lines:
        key, sep, text = line.partition("=")
        if sep and key.endswith(".utf8") and text.strip():
            out.setdefault(key[: -len(".utf8")], " ".join(text.split()))
    return out


def load_tuxpaint(pkg: Path) -> list[Item]:
    """Stamps with a description; PNG preferred over SVG; mirror images without text are skipped."""
    root = find_path(pkg, "stamps", "tuxpaint-stamps-default", want_dir=True)
    items = []
    for txt in sorted(root.rglob("*.txt")):
        stem = txt.with_suffix("")
        png, svg = stem.with_suffix(".png"), stem.with_suffix(".svg")
        image = png if png.exists() else svg if svg.exists() else None
        texts = read_descriptions(txt)
        if image is None or "en" not in texts:
            continue
        rel = stem.relative_to(root)
        english = [texts["en"], *[texts[k] for k in ("en_GB", "en_AU", "en_CA") if k in texts]]
        items.append(
            Item(
                source="tuxpaint",
                item_id=rel.as_posix(),
                image=str(image),
                ext=image.suffix[1:],
                category=rel.parts[0],
                subcategory="/".join(rel.parts[:-1]),
                alts=texts,
                title=rel.name.replace("_", " ").replace("-", " "),
                captions=tuple(dict.fromkeys(english)),
                group=rel.as_posix(),
                raster=image.suffix == ".png",
            )
        )
    return items
