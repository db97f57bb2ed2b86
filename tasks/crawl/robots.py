"""robots.txt per host (RFC 9309): fetched once per crawler, 4xx = allow all, unreachable = disallow."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from tasks.crawl.errors import CrawlError
from tasks.crawl.http import fetch
from tasks.crawl.params import HttpParams
from tasks.crawl.security import UrlGuard

_ALLOW_ALL = "User-agent: *\nAllow: /\n"
_DISALLOW_ALL = "User-agent: *\nDisallow: /\n"


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups match against ("clipmill" of "clipmill/0.1 (...)")."""
    return user_agent.split("/", 1)[0].split()[0] if user_agent.strip() else "*"


class RobotsCache:
    """One parsed robots.txt per scheme+host, fetched through the same guarded session."""

    def __init__(self, session: Any, guard: UrlGuard, cfg: HttpParams) -> None:
        self.session, self.guard, self.cfg = session, guard, cfg
        self.agent = agent_token(cfg.user_agent)
        self._parsers: dict[str, RobotFileParser] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def _load(self, origin: str) -> RobotFileParser:
        parser = RobotFileParser()
        try:
            resp = await fetch(self.session, self.guard, f"{origin}/robots.txt", self.cfg)
            text = resp.body.decode("utf-8", errors="replace")
        except CrawlError as exc:
            # RFC 9309: a 4xx means no rules; a 5xx or unreachable file means "assume disallow".
            text = _ALLOW_ALL if exc.error_class in ("http_404", "http_4xx") else _DISALLOW_ALL
        parser.parse(text.splitlines())
        return parser

    async def parser(self, url: str) -> RobotFileParser:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._parsers:
            lock = self._locks.setdefault(origin, asyncio.Lock())
            async with lock:
                if origin not in self._parsers:
                    self._parsers[origin] = await self._load(origin)
        return self._parsers[origin]

    async def allowed(self, url: str) -> bool:
        return (await self.parser(url)).can_fetch(self.agent, url)

    async def crawl_delay(self, url: str) -> float:
        delay = (await self.parser(url)).crawl_delay(self.agent)
        return float(delay) if delay else 0.0
