"""robots.txt per host (RFC 9309): fetched once per crawler, 4xx = allow all, unreachable = disallow.

An unreachable robots.txt (5xx, timeout, refused address...) disallows the origin as RFC 9309
asks, but is reported as what it was: `allowed()` raises the fetch's own error class with a
message naming robots.txt, so a URL reads `address_refused: robots.txt of http://h:1 ...`, not
`robots_disallowed` (which means the file was read and says no).
"""

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


MAX_CRAWL_DELAY_S = (
    60.0  # a larger Crawl-delay is read as this (a hostile file cannot stall the crawl)
)


def crawl_delay_of(text: str, agent: str) -> float:
    """Crawl-delay of the group naming `agent` (else of `*`), in seconds, fractions included.

    urllib's RobotFileParser only reads whole numbers ("Crawl-delay: 0.5" is dropped), so the
    delay is read here; bad values are ignored, and values are capped at MAX_CRAWL_DELAY_S.
    """
    delays: dict[str, float] = {}
    agents: list[str] = []
    in_rules = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = (part.strip() for part in line.split(":", 1))
        key = key.lower()
        if key == "user-agent":
            if in_rules:
                agents, in_rules = [], False
            agents.append(value.lower())
        elif key == "crawl-delay":
            in_rules = True
            try:
                delay = float(value)
            except ValueError:
                continue
            if delay == delay and delay >= 0:  # not NaN
                for name in agents:
                    delays.setdefault(name, min(delay, MAX_CRAWL_DELAY_S))
        else:
            in_rules = True
    token = agent.lower()
    named = [d for name, d in delays.items() if name != "*" and name in token]
    return named[0] if named else delays.get("*", 0.0)


def agent_token(user_agent: str) -> str:
    """The product token robots.txt groups match against ("clipmill" of "clipmill/0.1 (...)")."""
    return user_agent.split("/", 1)[0].split()[0] if user_agent.strip() else "*"


class RobotsCache:
    """One parsed robots.txt per scheme+host, fetched through the same guarded session."""

    def __init__(self, session: Any, guard: UrlGuard, cfg: HttpParams) -> None:
        self.session, self.guard, self.cfg = session, guard, cfg
        self.agent = agent_token(cfg.user_agent)
        self._parsers: dict[str, RobotFileParser] = {}
        self._failures: dict[str, CrawlError] = {}  # origin -> why its robots.txt was unreachable
        self._delays: dict[str, float] = {}  # origin -> its Crawl-delay for our agent, seconds
        self._locks: dict[str, asyncio.Lock] = {}

    async def _load(self, origin: str) -> RobotFileParser:
        parser = RobotFileParser()
        try:
            resp = await fetch(self.session, self.guard, f"{origin}/robots.txt", self.cfg)
            text = resp.body.decode("utf-8", errors="replace")
        except CrawlError as exc:
            # RFC 9309: a 4xx means no rules; a 5xx or unreachable file means "assume disallow".
            if exc.error_class in ("http_404", "http_4xx"):
                text = _ALLOW_ALL
            else:
                text = _DISALLOW_ALL
                self._failures[origin] = CrawlError(
                    exc.error_class,
                    f"robots.txt of {origin} unreachable, so disallowed (RFC 9309): {exc.detail}",
                )
        parser.parse(text.splitlines())
        self._delays[origin] = crawl_delay_of(text, self.agent)
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
        """Whether robots.txt lets us fetch `url`; CrawlError (the fetch's own class) when the
        origin's robots.txt could not be fetched."""
        parser = await self.parser(url)
        parts = urlsplit(url)
        failure = self._failures.get(f"{parts.scheme}://{parts.netloc}")
        if failure is not None:
            raise CrawlError(failure.error_class, failure.detail)
        return parser.can_fetch(self.agent, url)

    async def crawl_delay(self, url: str) -> float:
        await self.parser(url)
        parts = urlsplit(url)
        return self._delays.get(f"{parts.scheme}://{parts.netloc}", 0.0)
