"""Per-run wiring derived from params: the served site, URL maps, allow-list, download settings."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import PROJECT_ROOT
from tasks.crawl.downloader import DownloadConfig
from tasks.crawl.gather import archive_index, resolve_path
from tasks.crawl.http import HttpConfig
from tasks.crawl.localsite import prefix_mapper, serve_local_site
from tasks.crawl.params import CrawlParams
from tasks.crawl.resizer import ResizeConfig

log = logging.getLogger(__name__)
DEFAULT_SITE_BASE = (
    "http://sample.clipmill.test/"  # canonical prefix of the sample site (docs/CONTRACTS.md)
)


@dataclass
class CrawlContext:
    output_dir: str
    served_base: str | None  # where the stage serves the sample site, if it does
    site_base: str  # canonical prefix of the served site (archives' base_url)
    url_map: tuple[tuple[str, str], ...]  # canonical prefix -> fetch prefix, longest first
    archives: dict[str, Any] | None
    download: DownloadConfig

    def to_fetch(self, url: str) -> str:
        return prefix_mapper(dict(self.url_map))(url)

    def to_canonical(self, url: str) -> str:
        return prefix_mapper({dst: src for src, dst in self.url_map})(url)


def resolve_output(uri: str) -> str:
    return uri if "://" in uri or Path(uri).is_absolute() else str(PROJECT_ROOT / uri)


def http_config(p: CrawlParams, connections: int | None = None) -> HttpConfig:
    return HttpConfig(
        user_agent=p.user_agent,
        connections=connections or p.connections_per_shard,
        connections_per_host=p.connections_per_host,
        connect_timeout_s=p.connect_timeout_s,
        read_timeout_s=p.read_timeout_s,
        total_timeout_s=p.total_timeout_s,
        retries=p.retries,
        backoff_s=p.backoff_s,
        max_retry_after_s=p.max_retry_after_s,
        max_redirects=p.max_redirects,
        max_body_bytes=p.max_body_bytes,
    )


def download_config(p: CrawlParams, allow: tuple[str, ...]) -> DownloadConfig:
    resize = ResizeConfig(
        image_size=p.image_size,
        resize_mode=p.resize_mode,
        resize_only_if_bigger=p.resize_only_if_bigger,
        encode_format=p.encode_format,
        encode_quality=p.encode_quality,
        max_image_pixels=p.max_image_pixels,
        min_image_size=p.min_image_size,
    )
    return DownloadConfig(
        http=http_config(p),
        resize=resize,
        allow_addresses=allow,
        respect_robots_txt=p.respect_robots_txt,
        disallowed_header_directives=tuple(d.lower() for d in p.disallowed_header_directives),
        decode_threads=p.decode_threads,
    )


def build_context(p: CrawlParams, stack: contextlib.ExitStack) -> CrawlContext:
    """Serve the sample site when configured, and derive everything a crawl run needs."""
    archives = None
    if p.archives_index and Path(resolve_path(p.archives_index)).exists():
        archives = archive_index(p.archives_index)
    site_base = (archives or {}).get("base_url") or DEFAULT_SITE_BASE
    site_base = site_base.rstrip("/") + "/"
    url_map = dict(p.url_map)
    allow = list(p.allow_addresses)
    served = None
    if p.sample_site_dir:
        served = stack.enter_context(serve_local_site(resolve_path(p.sample_site_dir)))
        url_map.setdefault(site_base, served)
        allow.append("127.0.0.1")  # our own server, started by this stage, on loopback
        log.info("serving %s at %s (canonical %s)", p.sample_site_dir, served, site_base)
    return CrawlContext(
        output_dir=resolve_output(p.output_dir),
        served_base=served,
        site_base=site_base,
        url_map=tuple(sorted(url_map.items(), key=lambda kv: -len(kv[0]))),
        archives=archives,
        download=download_config(p, tuple(dict.fromkeys(allow))),
    )
