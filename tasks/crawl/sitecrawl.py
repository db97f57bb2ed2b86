"""Site crawl from seed URLs: same-site links only, depth and page limits, robots.txt, per-host delay.

Breadth first, one depth level at a time: the pages of a level are fetched side by side
(`site.concurrency`), then handled in the order a one-page-at-a-time BFS would handle them. So
refs, links, duplicate bodies and the page budget come out the same whatever the concurrency or the
order fetches finish in; the crawl plan keeps an image's texts first seen first, so the order
decides which alt text an image keeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tasks.crawl.errors import CrawlError
from tasks.crawl.extract_warc import refs_from_page
from tasks.crawl.htmlimg import PageImages, decode_html, parse_page
from tasks.crawl.http import fetch, make_session
from tasks.crawl.params import HttpParams, PolicyParams, SiteParams
from tasks.crawl.records import ImageRef
from tasks.crawl.robots import RobotsCache
from tasks.crawl.security import UrlGuard
from tasks.crawl.urlscreen import screen

SKIP_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".svg",
    ".bmp",
    ".ico",
    ".pdf",
    ".zip",
    ".gz",
    ".tar",
    ".css",
    ".js",
    ".mp4",
    ".mp3",
    ".woff",
    ".woff2",
    ".ttf",
)


@dataclass
class SiteCrawlResult:
    refs: list[ImageRef] = field(default_factory=list)
    pages: int = 0  # HTML pages parsed
    fetched: int = 0  # page requests that returned a body
    errors: Counter[str] = field(default_factory=Counter)
    details: list[str] = field(default_factory=list)  # first few failure messages
    seconds: float = 0.0

    def note(self, exc: CrawlError) -> None:
        self.errors[exc.error_class] += 1
        if len(self.details) < 20:
            self.details.append(f"site: {exc}")


class _Politeness:
    """At most one request start per host every `delay` seconds."""

    def __init__(self) -> None:
        self.next_slot: dict[str, float] = {}
        self.lock = asyncio.Lock()

    async def wait(self, host: str, delay: float) -> None:
        if delay <= 0:
            return
        async with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot.get(host, now))
            self.next_slot[host] = slot + delay
        await asyncio.sleep(slot - now)


@dataclass
class _Fetched:
    final_url: str
    digest: bytes | None  # sha1 of the body; None when it is not HTML
    page: PageImages | None  # the parsed page; None when not HTML


def _followable(url: str, hosts: set[str]) -> bool:
    parts = urlsplit(url)
    return parts.netloc.lower() in hosts and not parts.path.lower().endswith(SKIP_EXTENSIONS)


async def _crawl(
    cfg: SiteParams,
    seeds: tuple[str, ...],
    allowed: tuple[str, ...],
    policy: PolicyParams,
    http: HttpParams,
    guard: UrlGuard,
    canonical: Callable[[str], str],
) -> SiteCrawlResult:
    result = SiteCrawlResult()
    clean: list[str] = []
    for found in seeds:
        try:
            clean.append(screen(found, guard.rules))
        except CrawlError as exc:
            result.note(exc)
    hosts = {h.lower() for h in allowed} or {urlsplit(s).netloc.lower() for s in clean}
    seen: set[str] = set()
    frontier: list[str] = []
    for seed in clean:
        if seed not in seen:
            seen.add(seed)
            frontier.append(seed)
    polite = _Politeness()
    left = cfg.max_pages  # page requests the budget still allows
    bodies: set[bytes] = set()  # "/" and "/index.html" are one page: parse each body once
    gate = asyncio.Semaphore(cfg.concurrency)

    async with make_session(http, guard, cfg.concurrency) as session:
        robots = RobotsCache(session, guard, http) if policy.respect_robots_txt else None

        async def get(url: str) -> _Fetched | CrawlError:
            """The page parsed (bodies are not kept), or the CrawlError that stopped it."""
            async with gate:
                try:
                    if robots is not None and not await robots.allowed(url):
                        raise CrawlError("robots_disallowed", url)
                    delay = max(
                        cfg.politeness_delay_s, await robots.crawl_delay(url) if robots else 0.0
                    )
                    await polite.wait(urlsplit(url).netloc, delay)
                    resp = await fetch(session, guard, url, http)
                except CrawlError as exc:  # robots.txt unreachable is reported as what it was
                    return exc
            ctype = resp.headers.get("Content-Type", "")
            if "html" not in ctype.lower():
                return _Fetched(resp.final_url, None, None)
            page = parse_page(decode_html(resp.body, ctype), resp.final_url)
            return _Fetched(resp.final_url, hashlib.sha1(resp.body).digest(), page)

        depth = 0
        while frontier and left > 0:
            level, frontier = frontier[:left], []
            left -= len(level)
            for got in await asyncio.gather(*(get(url) for url in level)):
                if isinstance(got, CrawlError):  # BFS order, whatever order fetches ended in
                    result.note(got)
                    continue
                result.fetched += 1
                if got.digest is None or got.page is None:  # not HTML
                    continue
                if got.digest in bodies:
                    result.errors["duplicate_page"] += 1
                    continue
                bodies.add(got.digest)
                result.pages += 1
                page_url = canonical(got.final_url)
                result.refs.extend(
                    ImageRef(canonical(r.url), r.texts, page_url, r.language, "site")
                    for r in refs_from_page(got.page, got.final_url, "site")
                )
                if depth >= cfg.max_depth or got.page.nofollow:
                    continue
                for found in got.page.links:
                    try:
                        link = screen(found, guard.rules)  # user:password@ never followed
                    except CrawlError as exc:
                        result.note(exc)
                        continue
                    if link not in seen and _followable(link, hosts):
                        seen.add(link)
                        frontier.append(link)
            depth += 1
    if frontier:  # found but never fetched: the page budget ran out
        result.errors["page_limit_reached"] += 1
    return result


def crawl_site(
    cfg: SiteParams,
    seeds: tuple[str, ...],
    allowed: tuple[str, ...],
    policy: PolicyParams,
    http: HttpParams,
    guard: UrlGuard,
    canonical: Callable[[str], str] = lambda u: u,
) -> SiteCrawlResult:
    """Blocking entry point. `seeds` and `allowed` (netlocs, host[:port]; empty = the seeds')
    are the section's seeds and hosts as fetched (mapped onto the served site); `canonical` maps
    fetched URLs back to stable ones (served -> archive)."""
    started = time.perf_counter()
    result = asyncio.run(_crawl(cfg, seeds, allowed, policy, http, guard, canonical))
    result.seconds = round(time.perf_counter() - started, 3)
    return result
