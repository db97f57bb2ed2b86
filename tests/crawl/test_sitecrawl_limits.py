"""The site crawl's limits against a real loopback server: link depth, page budget, and the
per-host delay (robots.txt Crawl-delay, or site.politeness_delay_s when larger) even with several
pages fetched at once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from aiohttp import web

from tasks.crawl.params import HttpParams, PolicyParams, SiteParams
from tasks.crawl.security import UrlGuard
from tasks.crawl.sitecrawl import crawl_site

from .servers import ThreadServer

HTTP = HttpParams(user_agent="clipmill-test/0 (+http://example.invalid)", retries=0)
CHAIN = 8  # pages /p/0.html -> /p/1.html -> ... each with one image and a link to the next


def _chain_app(crawl_delay: float) -> object:
    def factory(server: ThreadServer) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.path == "/robots.txt":
                return web.Response(text=f"User-agent: *\nCrawl-delay: {crawl_delay}\nAllow: /\n")
            n = int(request.path.rsplit("/", 1)[-1].split(".")[0])
            body = f'<html><body><img src="/img/{n}.jpg" alt="picture {n}">'
            if n + 1 < CHAIN:
                body += f'<a href="/p/{n + 1}.html">next</a><a href="/p/{n + 1}.html?dup">again</a>'
            return web.Response(text=body + "</body></html>", content_type="text/html")

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        return app

    return factory


@pytest.fixture()
def chain(request: pytest.FixtureRequest) -> Iterator[ThreadServer]:
    server = ThreadServer(_chain_app(getattr(request, "param", 0)))  # type: ignore[arg-type]
    yield server
    server.close()


def _crawl(server: ThreadServer, robots: bool = True, **site: object):  # type: ignore[no-untyped-def]
    cfg = SiteParams(concurrency=4, **site)  # type: ignore[arg-type]
    return crawl_site(
        cfg,
        (server.base + "p/0.html",),
        (),
        PolicyParams(respect_robots_txt=robots),
        HTTP,
        UrlGuard([server.base.rstrip("/")]),
    )


def _pages(server: ThreadServer) -> list[str]:
    return [path for _, path, _ in server.log if path.startswith("/p/")]


def test_depth_limit(chain: ThreadServer) -> None:
    res = _crawl(chain, max_depth=2)
    assert sorted(set(_pages(chain))) == ["/p/0.html", "/p/1.html", "/p/2.html"]
    assert sorted(r.url.rsplit("/", 1)[-1] for r in res.refs) == ["0.jpg", "1.jpg", "2.jpg"]
    assert res.pages == 3  # "?dup" returns the same page body: fetched, parsed once


def test_page_limit(chain: ThreadServer) -> None:
    res = _crawl(chain, max_pages=3)
    assert res.fetched == 3 and len(_pages(chain)) == 3
    assert res.errors["page_limit_reached"] == 1


@pytest.mark.parametrize("chain", [0.4], indirect=True)
def test_robots_crawl_delay_spaces_requests_to_one_host(chain: ThreadServer) -> None:
    _crawl(chain, max_depth=3)
    times = [t for t, path, _ in chain.log if path.startswith("/p/")]
    assert len(times) >= 4
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.35, gaps  # 0.4 s Crawl-delay, whatever the concurrency (4)


def test_politeness_delay_applies_without_robots(chain: ThreadServer) -> None:
    _crawl(chain, robots=False, max_depth=2, politeness_delay_s=0.3)
    times = [t for t, path, _ in chain.log if path.startswith("/p/")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) >= 3 and min(gaps) >= 0.25, gaps
    assert not any(path == "/robots.txt" for _, path, _ in chain.log)


@pytest.mark.parametrize(
    ("text", "delay"),
    [
        ("User-agent: *\nCrawl-delay: 0.5\n", 0.5),  # urllib's parser drops fractions
        ("User-agent: *\nCrawl-delay: 2\nUser-agent: clipmill\nCrawl-delay: 7\n", 7.0),
        ("User-agent: otherbot\nCrawl-delay: 9\n", 0.0),
        ("User-agent: *\nCrawl-delay: 1e9\n", 60.0),  # capped: a hostile file cannot stall us
        ("User-agent: *\nCrawl-delay: soon\nCrawl-delay: nan\n", 0.0),
        ("User-agent: a\nUser-agent: *\nDisallow: /x\nCrawl-delay: 3 # comment\n", 3.0),
    ],
)
def test_crawl_delay_parsing(text: str, delay: float) -> None:
    from tasks.crawl.robots import crawl_delay_of

    assert crawl_delay_of(text, "clipmill") == delay


FAN = 6  # /index.html links /f/0.html .. /f/5.html; page k answers after (FAN - k) * 60 ms
ANSWERED: list[int] = []  # fan pages in the order the server answered them


def _fan_app(server: ThreadServer) -> web.Application:
    import asyncio

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/robots.txt":
            return web.Response(text="User-agent: *\nAllow: /\n")
        if request.path == "/index.html":
            links = "".join(f'<a href="/f/{k}.html">{k}</a>' for k in range(FAN))
            return web.Response(text=f"<html><body>{links}</body></html>", content_type="text/html")
        k = int(request.path.rsplit("/", 1)[-1].split(".")[0])
        await asyncio.sleep((FAN - k) * 0.06)  # the later a page is linked, the sooner it answers
        ANSWERED.append(k)
        body = (
            f'<html><body><img src="/img/shared.jpg" alt="shared seen on {k}">'
            f'<img src="/img/{k}.jpg" alt="own {k}"></body></html>'
        )
        return web.Response(text=body, content_type="text/html")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    return app


def test_refs_come_in_bfs_order_whatever_the_concurrency() -> None:
    """Pages of one level are fetched side by side but handled in link order, so the refs (and
    hence which alt text an image keeps: the crawl plan keeps the first) do not depend on
    `site.concurrency` or on the order fetches end in. The pages here answer in reverse link
    order, which a crawl emitting refs as pages finish would follow."""
    server = ThreadServer(_fan_app)  # type: ignore[arg-type]
    ANSWERED.clear()
    try:
        runs = {}
        for concurrency in (1, FAN):
            res = crawl_site(
                SiteParams(concurrency=concurrency),
                (server.base + "index.html",),
                (),
                PolicyParams(respect_robots_txt=True),
                HTTP,
                UrlGuard([server.base.rstrip("/")]),
            )
            runs[concurrency] = [(r.url.rsplit("/", 1)[-1], r.texts, r.page_url) for r in res.refs]
    finally:
        server.close()
    assert runs[FAN] == runs[1]
    assert runs[1][0][:2] == ("shared.jpg", ["shared seen on 0"])
    assert len(runs[1]) == 2 * FAN
    assert ANSWERED[:FAN] == list(range(FAN))  # one at a time: in link order
    assert ANSWERED[FAN:] == list(reversed(range(FAN)))  # side by side: last linked first
