"""Download one shard of URLs with asyncio: guarded fetch, robots, header and byte checks, resize."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tasks.crawl.errors import SUCCESS, CrawlError
from tasks.crawl.http import HttpConfig, fetch, make_session
from tasks.crawl.resizer import ResizeConfig, process_image
from tasks.crawl.robots import RobotsCache, agent_token
from tasks.crawl.security import guard_from

ProgressFn = Callable[[int, int], None]  # (done, succeeded) since the last call
IMAGE_TYPES = ("image/", "application/octet-stream", "binary/octet-stream")


@dataclass(frozen=True)
class DownloadConfig:
    """Everything a shard task needs, picklable (the session and resolver are built in the worker)."""

    http: HttpConfig
    resize: ResizeConfig
    allow_addresses: tuple[str, ...] = ()
    respect_robots_txt: bool = True
    disallowed_header_directives: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    decode_threads: int = 2
    stub_dns: tuple[tuple[str, tuple[str, ...]], ...] | None = None  # tests only: name -> addresses


def refused_by_header(value: str, disallowed: tuple[str, ...], agent: str) -> str | None:
    """The X-Robots-Tag directive that refuses us ("noai", "otherbot: noai" only binds otherbot)."""
    for part in value.split(","):
        token = part.strip().lower()
        if ":" in token:
            who, token = (s.strip() for s in token.split(":", 1))
            if who not in ("*", agent.lower()):
                continue
        if token in disallowed:
            return token
    return None


def check_headers(headers: dict[str, str], cfg: DownloadConfig, agent: str) -> None:
    tag = next((v for k, v in headers.items() if k.lower() == "x-robots-tag"), "")
    if tag and (hit := refused_by_header(tag, cfg.disallowed_header_directives, agent)):
        raise CrawlError("robots_noai", f"X-Robots-Tag: {tag} ({hit})")
    ctype = next((v for k, v in headers.items() if k.lower() == "content-type"), "").strip().lower()
    if ctype and not ctype.startswith(IMAGE_TYPES):
        raise CrawlError("content_type", f"Content-Type {ctype!r}")


class ShardDownloader:
    """Holds the per-shard session, guard, robots cache and decode threads."""

    def __init__(self, cfg: DownloadConfig) -> None:
        self.cfg = cfg
        stub = {k: list(v) for k, v in cfg.stub_dns} if cfg.stub_dns is not None else None
        self.guard = guard_from(cfg.allow_addresses, stub)
        self.agent = agent_token(cfg.http.user_agent)
        self.pool = ThreadPoolExecutor(cfg.decode_threads, thread_name_prefix="decode")

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
            resp = await fetch(session, self.guard, url, self.cfg.http)
            check_headers(resp.headers, self.cfg, self.agent)
            if not resp.body:
                raise CrawlError("empty_body", url)
            out["sha256"] = hashlib.sha256(resp.body).hexdigest()
            loop = asyncio.get_running_loop()
            img = await loop.run_in_executor(self.pool, process_image, resp.body, self.cfg.resize)
            out.update(
                image=img.data,
                width=img.width,
                height=img.height,
                original_width=img.original_width,
                original_height=img.original_height,
                bytes=len(resp.body),
            )
        except CrawlError as exc:
            out.update(status=exc.error_class, error_message=exc.detail[:500])
        except Exception as exc:  # a crawler bug must not lose the shard
            out.update(
                status="unexpected_error", error_message=f"{type(exc).__name__}: {exc}"[:500]
            )
        out["seconds"] = round(time.perf_counter() - started, 4)
        return out

    async def run(
        self, rows: list[dict[str, Any]], progress: ProgressFn | None = None
    ) -> list[dict[str, Any]]:
        results: list[dict[str, Any] | None] = [None] * len(rows)
        pending = [0, 0]
        todo = iter(range(len(rows)))

        async with make_session(self.cfg.http, self.guard) as session:
            robots = (
                RobotsCache(session, self.guard, self.cfg.http)
                if self.cfg.respect_robots_txt
                else None
            )

            async def work() -> None:
                # `connections` of these share one iterator: as many requests in flight as
                # connections, without a thousand tasks queued on a semaphore.
                for i in todo:
                    res = results[i] = await self.one(session, robots, rows[i])
                    pending[0] += 1
                    pending[1] += res["status"] == SUCCESS
                    if progress and pending[0] >= 50:
                        progress(pending[0], pending[1])
                        pending[0] = pending[1] = 0

            workers = max(1, min(self.cfg.http.connections, len(rows)))
            await asyncio.gather(*(work() for _ in range(workers)))
        if progress and pending[0]:
            progress(pending[0], pending[1])
        self.pool.shutdown(wait=True)
        return [r for r in results if r is not None]


def download_shard(
    rows: list[dict[str, Any]], cfg: DownloadConfig, progress: ProgressFn | None = None
) -> list[dict[str, Any]]:
    """Blocking entry point for a worker: results in the order of `rows`, one per row."""
    results = asyncio.run(ShardDownloader(cfg).run(rows, progress))
    return [{**row, **res} for row, res in zip(rows, results, strict=True)]
