"""manifest.json: what the stage produced (counts) and the sha256 of every file it wrote."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_hashes(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (the manifest itself excluded), sorted."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def write_manifest(root: Path, counts: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    files = file_hashes(root)
    manifest = {
        "stage": "sample",
        "params": params,
        "counts": counts,
        "total_files": len(files),
        "total_bytes": sum((root / f).stat().st_size for f in files),
        "files": files,
    }
    (root / MANIFEST).write_text(
        json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    )
    return manifest


# File suffixes the sample site serves as images (what a crawler meets: GIF spacers, SVG and
# MNG sources too). Not tasks.io.wds.IMAGE_EXTS: that one lists the image members a webdataset
# sample may hold (what crawl's resizer writes and what readers pick), a different question.
SITE_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".mng")


def count_site(site_root: Path, rows: list[dict], disallowed: str) -> dict[str, Any]:
    """Image files, <img> tags, distinct live image URLs and pairs per source (crawlable part)."""
    files = {p.relative_to(site_root).as_posix() for p in site_root.rglob("*") if p.is_file()}
    images = {f for f in files if f.lower().endswith(SITE_IMAGE_SUFFIXES)}
    crawl_rows = [r for r in rows if not r["page"].startswith(disallowed)]
    live = [r for r in crawl_rows if r["path"] in images and not r["path"].startswith(disallowed)]
    pairs = Counter(
        "planted" if r["kind"] == "planted" else r["source"]
        for r in live
        if r["alt"] and r["kind"] != "nav"
    )
    return {
        "images": {
            "files": len(images),
            "img_tags": len(crawl_rows),
            "distinct_urls": len({r["path"] for r in live}),
            "with_alt": sum(bool(r["alt"]) for r in live),
        },
        "pairs": dict(sorted(pairs.items())),
    }
