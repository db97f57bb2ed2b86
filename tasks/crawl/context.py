"""Per-run wiring derived from params: the served site, URL maps, the address allow-list.

Only values a run derives (its own server's address, the resolved output folder) live here;
settings are read from the params' sections wherever they are used, never copied.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.crawl.gather import archive_index
from tasks.crawl.localsite import prefix_mapper, serve_local_site
from tasks.crawl.params import CrawlParams
from tasks.io.paths import resolve_uri

log = logging.getLogger(__name__)
DEFAULT_SITE_BASE = (
    "http://sample.clipmill.test/"  # canonical prefix of the sample site (docs/CONTRACTS.md)
)


@dataclass(frozen=True)
class CrawlContext:
    """What one run derives from its params and surroundings; picklable, sent to shard tasks."""

    output_dir: str  # output.output_dir resolved against the project root
    served_base: str | None  # where the stage serves the sample site, if it does
    site_base: str  # canonical prefix of the served site (archives' base_url)
    url_map: tuple[tuple[str, str], ...]  # canonical prefix -> fetch prefix, longest first
    archives: dict[str, Any] | None
    allow_addresses: tuple[
        str, ...
    ]  # policy.allow_addresses + the origin of the stage's own server

    def to_fetch(self, url: str) -> str:
        return prefix_mapper(dict(self.url_map))(url)

    def to_canonical(self, url: str) -> str:
        return prefix_mapper({dst: src for src, dst in self.url_map})(url)


def build_context(p: CrawlParams, stack: contextlib.ExitStack) -> CrawlContext:
    """Serve the sample site when configured, and derive everything a crawl run needs."""
    inputs = p.inputs
    archives = None
    if inputs.archives_index and Path(resolve_uri(inputs.archives_index)).exists():
        archives = archive_index(inputs.archives_index)
    site_base = (archives or {}).get("base_url") or DEFAULT_SITE_BASE
    site_base = site_base.rstrip("/") + "/"
    url_map = dict(inputs.url_map)
    allow = list(p.policy.allow_addresses)
    served = None
    if inputs.sample_site_dir:
        served = stack.enter_context(serve_local_site(resolve_uri(inputs.sample_site_dir)))
        url_map.setdefault(site_base, served)
        # Our own server, started by this stage on loopback: allowed by its exact origin
        # (host and port), never as all of 127.0.0.1 (Prefect, MLflow, Ray listen there too).
        allow.append(served.rstrip("/"))
        log.info("serving %s at %s (canonical %s)", inputs.sample_site_dir, served, site_base)
    return CrawlContext(
        output_dir=resolve_uri(p.output.output_dir),
        served_base=served,
        site_base=site_base,
        url_map=tuple(sorted(url_map.items(), key=lambda kv: -len(kv[0]))),
        archives=archives,
        allow_addresses=tuple(dict.fromkeys(allow)),
    )
