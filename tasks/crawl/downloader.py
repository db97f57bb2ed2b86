"""Download one shard of URLs with asyncio: guarded fetch, robots, header and byte checks, resize."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tasks.crawl.errors import FAILURES, SUCCESS, CrawlError
from tasks.crawl.http import HostRateLimit, RateLimit, fetch, make_session
from tasks.crawl.params import CrawlParams
from tasks.crawl.robots import RobotsCache, agent_token
from tasks.crawl.security import guard_from, rules_of
from tasks.crawl.urlscreen import strip_userinfo
from tasks.imaging.resize import process_image

ProgressFn = Callable[[int, int], None]  # (done, succeeded) since the last call
IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


def refused_by_header(
    value: str, disallowed: list[str] | tuple[str, ...], agent: str
) -> str | None:
    """The X-Robots-Tag directive that refuses us ("noai", "otherbot: noai" only binds otherbot)."""
    refusing = {d.lower() for d in disallowed}
    for part in value.split(","):
        token = part.strip().lower()
        if ":" in token:
            who, token = (s.strip() for s in token.split(":", 1))
            if who not in ("*", agent.lower()):
                continue
        if token in refusing:
            return token
    return None


def check_headers(headers: dict[str, str], disallowed: list[str], agent: str) -> None:
    tag = next((v for k, v in headers.items() if k.lower() == "x-robots-tag"), "")
    if tag and (hit := refused_by_header(tag, disallowed, agent)):
        raise CrawlError("robots_noai", f"X-Robots-Tag: {tag} ({hit})")
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "").strip().lower()
    if ctype and not ctype.startswith(IMAGE_TYPES):
        raise CrawlError("content_type", f"Content-Type {ctype!r}")


StubDns = dict[str, list[str]]  # tests only: host name -> the addresses it resolves to


class ShardDownloader:
    """Holds the per-shard session, guard, robots cache and decode threads.

    Reads the params' `http`, `policy`, `download` and `resize` sections as validated;
    `allow` is the run's address allow-list (policy's plus the stage's own local server).
    `host_rate`: the run's HostSlots actor (tasks.crawl.hostrate), the per-host rate shared by
    every shard task of the crawl; without it a rate set in the params holds per task only.
    """

    def __init__(
        self,
        p: CrawlParams,
        allow: tuple[str, ...],
        stub_dns: StubDns | None = None,
        host_rate: Any = None,
    ) -> None:
        self.p = p
        self.guard = guard_from(allow, stub_dns, rules_of(p.policy))
        self.agent = agent_token(p.http.user_agent)
        self.pool = ThreadPoolExecutor(p.download.decode_threads, thread_name_prefix="decode")
        self.host_rate = host_rate
        rate = p.http.max_requests_per_second_per_host
        # image requests only; the cluster-wide client is made in run(), inside the event loop
        self.limit: RateLimit | None = HostRateLimit(rate) if rate > 0 else None

    async def one(
        self, session: Any, robots: RobotsCache | None, row: dict[str, Any]
    ) -> dict[str, Any]:
        """Download and process one row; every failure becomes a status, never an exception."""
        url = row.get("fetch_url") or row["url"]
        out: dict[str, Any] = {"status": SUCCESS, "error_message": "", "image": None, "sha256": ""}
        started = time.perf_counter()
        try:
            if robots is not None and not await robots.allowed(url):
                raise CrawlError("robots_disallowed", url)
            resp = await fetch(session, self.guard, url, self.p.http, self.limit)
            check_headers(resp.headers, self.p.policy.disallowed_header_directives, self.agent)
            if not resp.body:
                raise CrawlError("empty_body", url)
            out["sha256"] = hashlib.sha256(resp.body).hexdigest()
            loop = asyncio.get_running_loop()
            img = await loop.run_in_executor(self.pool, process_image, resp.body, self.p.resize)
            out.update(
                image=img.data,
                width=img.width,
                height=img.height,
                original_width=img.original_width,
                original_height=img.original_height,
                bytes=len(resp.body),
            )
        except FAILURES as exc:
            out.update(status=exc.error_class, error_message=strip_userinfo(exc.detail)[:500])
        except Exception as exc:  # a crawler bug must not lose the shard
            message = strip_userinfo(f"{type(exc).__name__}: {exc}")
            out.update(status="unexpected_error", error_message=message[:500])
        out["seconds"] = round(time.perf_counter() - started, 4)
        return out

    async def bounded(
        self, session: Any, robots: RobotsCache | None, row: dict[str, Any], deadline: float
    ) -> dict[str, Any]:
        """`one` cut off at the shard's deadline (time.monotonic), recorded as a timeout.

        Why: per-request timeouts bound one attempt, but retries, robots.txt fetches and a
        server dripping one byte a second to every connection can still hold a shard for
        (retries + 1) * total_timeout_s per URL; download.shard_timeout_s bounds the whole task.
        A row not started before the deadline is recorded the same way, without a request.
        """
        started = time.perf_counter()
        remaining = deadline - time.monotonic()
        if remaining > 0:
            try:
                return await asyncio.wait_for(self.one(session, robots, row), remaining)
            except TimeoutError:
                pass
        limit = self.p.download.shard_timeout_s
        return {
            "status": "timeout",
            "error_message": f"shard time limit of {limit:g} s reached (download.shard_timeout_s)",
            "image": None,
            "sha256": "",
            "seconds": round(time.perf_counter() - started, 4),
        }

    async def run(
        self, rows: list[dict[str, Any]], progress: ProgressFn | None = None
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(rows)
        pending = [0, 0]
        todo = iter(range(len(rows)))

        connections = self.p.download.connections_per_shard
        limit = self.p.download.shard_timeout_s
        deadline = time.monotonic() + limit if limit else None
        if self.host_rate is not None and self.limit is not None:
            from tasks.crawl.hostrate import ClusterHostRate

            self.limit = ClusterHostRate(self.host_rate)
        async with make_session(self.p.http, self.guard, connections) as session:
            robots = (
                RobotsCache(session, self.guard, self.p.http)
                if self.p.policy.respect_robots_txt
                else None
            )

            async def work() -> None:
                # `connections` of these share one iterator: as many requests in flight as
                # connections, without a thousand tasks queued on a semaphore.
                for i in todo:
                    if deadline is None:
                        res = await self.one(session, robots, rows[i])
                    else:
                        res = await self.bounded(session, robots, rows[i], deadline)
                    results[i] = res
                    pending[0] += 1
                    pending[1] += res["status"] == SUCCESS
                    if progress and pending[0] >= 50:
                        progress(pending[0], pending[1])
                        pending[0] = pending[1] = 0

            workers = max(1, min(connections, len(rows)))
            await asyncio.gather(*(work() for _ in range(workers)))
        if progress and pending[0]:
            progress(pending[0], pending[1])
        self.pool.shutdown(wait=True)
        return [r for r in results if r is not None]


def download_shard(
    rows: list[dict[str, Any]],
    p: CrawlParams,
    allow: tuple[str, ...],
    progress: ProgressFn | None = None,
    stub_dns: StubDns | None = None,
    host_rate: Any = None,
) -> list[dict[str, Any]]:
    """Blocking entry point for a worker: results in the order of `rows`, one per row.

    `host_rate`: the crawl's HostSlots actor handle (cluster-wide per-host rate), or None."""
    downloader = ShardDownloader(p, allow, stub_dns, host_rate)
    results = asyncio.run(downloader.run(rows, progress))
    return [{**row, **res} for row, res in zip(rows, results, strict=True)]
