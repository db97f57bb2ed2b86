"""The GIMP manual copied as it is: a real website with real <img alt> markup and real noise."""

from __future__ import annotations

import shutil
from pathlib import Path

from tasks.sample.debian import DebianError
from tasks.sample.htmlmeta import image_links
from tasks.sample.items import seeded_order
from tasks.sample.site import resolve


def find_manual(pkg: Path) -> Path:
    """The manual's root: the folder holding index.html next to an images/ folder."""
    for index in sorted(pkg.rglob("index.html")):
        if (index.parent / "images").is_dir():
            return index.parent
    raise DebianError(
        f"package 'gimp-help-en' (unpacked in {pkg}) has no manual folder with index.html"
    )


def copy_manual(pkg: Path, dest: Path, max_pages: int, seed: int) -> list[str]:
    """Copy every asset and the chosen pages (all, or index.html plus a seeded sample).

    With a cap, links to pages left out become broken links, as on any partially mirrored site.
    """
    root = find_manual(pkg)
    pages = sorted(p.relative_to(root).as_posix() for p in root.glob("*.html"))
    if max_pages and max_pages < len(pages):
        rest = [p for p in seeded_order(pages, seed, "gimp") if p != "index.html"]
        pages = sorted(["index.html", *rest[: max_pages - 1]])
    keep = set(pages)
    for src in sorted(root.rglob("*")):
        rel = src.relative_to(root).as_posix()
        if not src.is_file() or (rel.endswith(".html") and rel not in keep):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
    return [f"{dest.name}/{p}" for p in pages]


def gimp_rows(site_root: Path, pages: list[str], base_url: str) -> list[dict]:
    """Ground-truth rows for the manual's own <img> tags (read back from its HTML)."""
    rows = []
    for page in pages:
        text = (site_root / page).read_text(encoding="utf-8", errors="replace")
        for link in image_links(text):
            rows.append(
                {
                    "page": page,
                    "src": link["url"],
                    "path": resolve(page, link["url"], base_url),
                    "alt": link.get("alt"),
                    "title": link.get("title"),
                    "source": "gimp",
                    "item_id": "",
                    "lang": "en",
                    "kind": "gimp",
                }
            )
    return rows
