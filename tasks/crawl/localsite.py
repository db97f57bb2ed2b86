"""Serve the sample website on 127.0.0.1 for the duration of a crawl, and map its URLs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def serve_local_site(site_dir: str | Path, port: int = 0) -> Iterator[str]:
    """Yield the base URL (ending in /) of `site_dir` served on 127.0.0.1."""
    site_dir = Path(site_dir)
    if not (site_dir / "index.html").is_file():
        raise FileNotFoundError(
            f"sample site not found: {site_dir}/index.html is missing (run `clipmill run sample` first, "
            "or set inputs.sample_site_dir='' and give site.seeds / inputs.url_lists / archives)"
        )
    from tasks.io.serve import serve_site

    with serve_site(site_dir, port=port) as base:
        yield str(base).rstrip("/") + "/"


def prefix_mapper(mapping: dict[str, str]) -> functools.partial[str]:
    """A function replacing the first matching prefix (longest first) of a URL."""
    items = tuple(sorted(mapping.items(), key=lambda kv: -len(kv[0])))
    return functools.partial(_map_prefix, items)


def _map_prefix(items: tuple[tuple[str, str], ...], url: str) -> str:
    for src, dst in items:
        if url.startswith(src):
            return dst + url[len(src) :]
    return url
