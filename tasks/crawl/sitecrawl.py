"""Site crawl from seed URLs: same-site links only, depth and page limits, robots.txt, per-host delay."""

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
from tasks.crawl.htmlimg import decode_html, parse_page
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
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    seen: set[str] = set()
    for seed in clean:
        if seed not in seen:
            seen.add(seed)
            queue.put_nowait((seed, 0))
    polite = _Politeness()
    budget = [cfg.max_pages]
    bodies: set[bytes] = set()  # "/" and "/index.html" are one page: parse each body once

    async with make_session(http, guard, cfg.concurrency) as session:
        robots = RobotsCache(session, guard, http) if policy.respect_robots_txt else None

        async def visit(url: str, depth: int) -> None:
            try:
                if robots is not None and not await robots.allowed(url):
                    raise CrawlError("robots_disallowed", url)
                delay = max(
                    cfg.politeness_delay_s, await robots.crawl_delay(url) if robots else 0.0
                )
                await polite.wait(urlsplit(url).netloc, delay)
                resp = await fetch(session, guard, url, http)
            except CrawlError as exc:  # robots.txt unreachable is reported as what it was
                result.note(exc)
                return
            result.fetched += 1
            ctype = resp.headers.get("Content-Type", "")
            if "html" not in ctype.lower():
                return
            digest = hashlib.sha1(resp.body).digest()
            if digest in bodies:
                result.errors["duplicate_page"] += 1
                return
            bodies.add(digest)
            result.pages += 1
            page = parse_page(decode_html(resp.body, ctype), resp.final_url)
            page_url = canonical(resp.final_url)
            result.refs.extend(
                ImageRef(canonical(r.url), r.texts, page_url, r.language, "site")
                for r in refs_from_page(page, resp.final_url, "site")
            )
            if depth >= cfg.max_depth or page.nofollow:
                return
            for found in page.links:
                try:
                    link = screen(found, guard.rules)  # user:password@ never followed
                except CrawlError as exc:
                    result.note(exc)
                    continue
                if link not in seen and _followable(link, hosts):
                    seen.add(link)
                    queue.put_nowait((link, depth + 1))

        async def worker() -> None:
            while True:
                url, depth = await queue.get()
                try:
                    if budget[0] > 0:
                        budget[0] -= 1
                        await visit(url, depth)
                finally:
                    queue.task_done()

        workers = [asyncio.create_task(worker()) for _ in range(cfg.concurrency)]
        await queue.join()
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    if budget[0] <= 0:
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
