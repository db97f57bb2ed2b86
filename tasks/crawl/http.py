"""One HTTP GET done right: guarded redirects, streamed size limit, retries for transient errors only."""

from __future__ import annotations

import asyncio
import email.utils
import time
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urljoin, urlsplit

from tasks.crawl.errors import CrawlError, http_error_class
from tasks.crawl.params import HttpParams
from tasks.crawl.security import UrlGuard
from tasks.crawl.urlscreen import strip_userinfo

REDIRECTS = frozenset({301, 302, 303, 307, 308})
TRANSIENT = frozenset({"timeout", "connection_error", "http_5xx", "http_429"})


@dataclass
class Response:
    """A complete 2xx response: where it ended up, its headers and the whole body."""

    url: str
    final_url: str
    status: int
    headers: dict[str, str]
    body: bytes
    attempts: int = 1


class _Transient(CrawlError):
    def __init__(self, error_class: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(error_class, detail)
        self.retry_after = retry_after


class RateLimit(Protocol):
    """What fetch needs of a per-host rate: HostRateLimit (one task) or
    tasks.crawl.hostrate.ClusterHostRate (the whole crawl)."""

    async def wait(self, url: str) -> None: ...


class HostRateLimit:
    """At most `rate` requests per second to each host (http.max_requests_per_second_per_host).

    A token bucket holding one token per host, refilled every 1/rate s: requests to one host
    start at least 1/rate s apart, whatever the connections; other hosts are not slowed. One
    per shard task (one event loop, so no lock): used where no Ray actor holds the crawl's
    slots (download_shard called alone); the stage shares one bucket per host across its
    shard tasks (tasks/crawl/hostrate.py). Every request takes a token: HTTP retries and
    redirect hops included, so a retrying or redirecting host is not hit faster than the rate.
    """

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError(f"http.max_requests_per_second_per_host must be > 0 here, got {rate}")
        self.interval = 1.0 / rate
        self.next_slot: dict[str, float] = {}

    async def wait(self, url: str) -> None:
        """Sleep until this request's slot for the URL's host comes (reserved at once)."""
        host = (urlsplit(url).hostname or "").lower()
        now = time.monotonic()
        slot = max(now, self.next_slot.get(host, now))
        self.next_slot[host] = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


def make_session(cfg: HttpParams, guard: UrlGuard, connections: int) -> Any:
    """A session whose connector resolves through the guard; proxies from the environment ignored.

    `connections` caps the session's requests in flight: a shard task's connections_per_shard,
    the site crawl's concurrency.
    """
    import aiohttp

    connector = aiohttp.TCPConnector(
        limit=connections,
        limit_per_host=cfg.connections_per_host,
        resolver=guard,
        use_dns_cache=False,  # the guard caches; the connector must always ask it
    )
    timeout = aiohttp.ClientTimeout(
        total=cfg.total_timeout_s, sock_connect=cfg.connect_timeout_s, sock_read=cfg.read_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": cfg.user_agent},
        trust_env=False,
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),  # a crawler keeps no cookies between images
    )


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds (delta or HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def _read_limited(resp: Any, limit: int, url: str) -> bytes:
    declared = resp.content_length
    if declared is not None and declared > limit:
        raise CrawlError("body_too_large", f"{url}: Content-Length {declared} > {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise CrawlError("body_too_large", f"{url}: more than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _fetch_once(
    session: Any, guard: UrlGuard, url: str, cfg: HttpParams, limit: RateLimit | None = None
) -> Response:
    current, seen = url, {url}
    for _hop in range(cfg.max_redirects + 1):
        # Repeated on every hop: a redirect may point anywhere, and may carry user:password@
        # (screened away or refused by the guard before the request is made).
        current = await guard.check(current)
        if limit is not None:
            await limit.wait(current)
        async with session.get(current, allow_redirects=False) as resp:
            if resp.status in REDIRECTS:
                location = resp.headers.get("Location")
                if not location:
                    raise CrawlError("bad_redirect", f"{current}: {resp.status} without Location")
                nxt = urljoin(current, location)
                if nxt in seen:
                    raise CrawlError("too_many_redirects", f"{url}: redirect loop at {nxt}")
                seen.add(nxt)
                current = nxt
                continue
            if resp.status >= 400:
                cls = http_error_class(resp.status)
                detail = f"{current}: HTTP {resp.status}"
                if cls in TRANSIENT:
                    raise _Transient(
                        cls, detail, retry_after_seconds(resp.headers.get("Retry-After"))
                    )
                raise CrawlError(cls, detail)
            body = await _read_limited(resp, cfg.max_body_bytes, current)
            return Response(url, current, resp.status, dict(resp.headers), body)
    raise CrawlError("too_many_redirects", f"{url}: more than {cfg.max_redirects} redirects")


def _classify(exc: BaseException, url: str) -> CrawlError:
    """aiohttp / asyncio exceptions -> error classes (transient ones are retried)."""
    import aiohttp

    if isinstance(exc, CrawlError):
        return exc
    cause = exc.__cause__
    while cause is not None:  # the guard's refusal surfaces wrapped by the connector
        if isinstance(cause, CrawlError):
            return cause
        cause = cause.__cause__
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return _Transient("timeout", f"{url}: {type(exc).__name__}")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return CrawlError("dns_error", f"{url}: {exc}")
    if isinstance(exc, aiohttp.InvalidURL | ValueError):
        return CrawlError("bad_url", f"{url}: {exc}")
    return _Transient("connection_error", f"{url}: {type(exc).__name__}: {exc}")


async def fetch(
    session: Any, guard: UrlGuard, url: str, cfg: HttpParams, limit: RateLimit | None = None
) -> Response:
    """GET with retries and exponential backoff for transient failures; CrawlError when it fails.

    `limit`: the per-host request rate (image downloads), taken by every attempt.
    """
    import aiohttp

    attempt = 0
    while True:
        attempt += 1
        try:
            resp = await _fetch_once(session, guard, url, cfg, limit)
            resp.attempts = attempt
            return resp
        except (TimeoutError, CrawlError, aiohttp.ClientError, OSError, ValueError) as exc:
            err = _classify(exc, url)
        if not isinstance(err, _Transient) or attempt > cfg.retries:
            raise CrawlError(err.error_class, strip_userinfo(err.detail))
        delay = cfg.backoff_s * (2 ** (attempt - 1))
        if err.retry_after is not None:
            if err.retry_after > cfg.max_retry_after_s:
                raise CrawlError(
                    err.error_class, f"{err.detail} (Retry-After {err.retry_after:.0f}s too long)"
                )
            delay = max(delay, err.retry_after)
        await asyncio.sleep(delay)
