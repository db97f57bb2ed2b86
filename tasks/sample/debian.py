"""Debian packages without root: `apt-get download` into a cache, `dpkg-deb -x` beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tasks.base import StageError

PACKAGES: dict[str, str] = {
    "openclipart-svg": "clip-art SVGs with RDF titles, descriptions and keywords",
    "openclipart-png": "PNG renders of the clip art",
    "fonts-noto-color-emoji": "the colour emoji font",
    "unicode-data": "emoji-test.txt (emoji names, groups, subgroups)",
    "unicode-cldr-core": "CLDR emoji annotations in many languages",
    "tuxpaint-stamps-default": "Tux Paint stamps with multilingual descriptions",
    "gimp-help-en": "the GIMP manual, a real HTML website",
    "dataset-fashion-mnist": "Fashion-MNIST IDX files",
    "wordnet-base": "WordNet 3.0 database files",
}
MARKER = ".clipmill-extracted.json"  # written last: its presence means the extraction is complete


class DebianError(StageError):
    """A package could not be fetched or unpacked; the message says what to do."""


def debs_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "debs"


def extracted_dir(cache_dir: Path) -> Path:
    return Path(cache_dir) / "extracted"


def find_deb(folder: Path, name: str) -> Path | None:
    """The cached .deb of a package (the highest file name when several versions are cached)."""
    found = sorted(folder.glob(f"{name}_*.deb"))
    return found[-1] if found else None


def _tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DebianError(f"`{name}` not found on PATH: {hint}")
    return path


def download(name: str, folder: Path) -> Path:
    """`apt-get download NAME` into the cache: no root needed, only apt's package lists."""
    folder.mkdir(parents=True, exist_ok=True)
    apt = _tool(
        "apt-get",
        f"the sample stage fetches Debian package {name!r} with `apt-get download`. Run it on "
        f"Debian/Ubuntu, or put {name}_*.deb (from packages.debian.org) into {folder} by hand.",
    )
    proc = subprocess.run(
        [apt, "download", name], cwd=folder, capture_output=True, text=True, timeout=1800
    )
    deb = find_deb(folder, name)
    if proc.returncode != 0 or deb is None:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DebianError(
            f"`apt-get download {name}` failed ({last[0]}). If apt does not know the package, "
            f"run `apt-get update` once as root, then run the stage again; or put "
            f"{name}_*.deb into {folder} by hand."
        )
    return deb


def extract(deb: Path, dest: Path) -> Path:
    """Unpack a .deb into `dest` once: a marker naming the .deb makes later calls free."""
    marker = dest / MARKER
    stamp = {"deb": deb.name, "size": deb.stat().st_size}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return dest
    dpkg = _tool(
        "dpkg-deb",
        "install the `dpkg` package (Debian/Ubuntu have it; elsewhere e.g. `brew install dpkg`).",
    )
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    proc = subprocess.run([dpkg, "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        why = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["unknown error"]
        raise DebianError(
            f"{deb}: cannot unpack this Debian package ({why[0]}); it is probably corrupt or "
            f"truncated: delete it (rm '{deb}') and run the stage again to download it afresh."
        )
    (tmp / MARKER).write_text(json.dumps(stamp))
    shutil.rmtree(dest, ignore_errors=True)
    try:
        tmp.rename(dest)
    except OSError:  # another process unpacked it meanwhile: keep theirs if it is complete
        shutil.rmtree(tmp, ignore_errors=True)
        if not (marker.exists() and json.loads(marker.read_text()) == stamp):
            raise
    return dest


def ensure_packages(names: list[str], cache_dir: Path, workers: int = 4) -> dict[str, Path]:
    """Download what is missing (sequentially: apt locks its cache), then unpack in parallel."""
    unknown = sorted(set(names) - set(PACKAGES))
    if unknown:
        raise DebianError(f"unknown package(s) {unknown}; known: {sorted(PACKAGES)}")
    folder = debs_dir(cache_dir)
    debs = {name: find_deb(folder, name) or download(name, folder) for name in names}
    out = extracted_dir(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        roots = pool.map(lambda n: extract(debs[n], out / n), names)
        return dict(zip(names, roots, strict=True))


def find_path(root: Path, pattern: str, package: str, want_dir: bool = False) -> Path:
    """Look a file up by pattern, since paths differ across Debian versions."""
    for hit in sorted(root.rglob(pattern)):
        if hit.is_dir() == want_dir:
            return hit
    raise DebianError(
        f"package {package!r} (unpacked in {root}) has no {'folder' if want_dir else 'file'} "
        f"matching {pattern!r}; the package layout changed: please report it"
    )
