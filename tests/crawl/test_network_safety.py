"""Network safety and privacy: credentials, the allow-list by origin, DNS rebinding, robots.txt
failures reported as what they were, and inputs refused before fetching kept with a reason.

Every test talks to loopback listeners started here; refused addresses are never connected to
(a canary listener counts connections), and no external name is ever resolved (stub resolvers).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tasks.crawl.downloader import download_shard
from tasks.crawl.errors import CrawlError
from tasks.crawl.http import fetch, make_session
from tasks.crawl.params import CrawlParams, HttpParams, PolicyParams
from tasks.crawl.plan import fingerprint
from tasks.crawl.security import UrlGuard
from tasks.crawl.urlscreen import DEFAULT_RULES, UrlRules, redact, screen

from .servers import Canary, ThreadServer

HTTP = HttpParams(
    user_agent="clipmill-test/0 (+http://example.invalid)",
    retries=0,
    connect_timeout_s=2,
    read_timeout_s=2,
    total_timeout_s=4,
)


def params(robots: bool = False, **policy: object) -> CrawlParams:
    return CrawlParams(http=HTTP, policy=PolicyParams(respect_robots_txt=robots, **policy))


def _class(url: str, rules: UrlRules = DEFAULT_RULES) -> str:
    try:
        screen(url, rules)
    except CrawlError as exc:
        return exc.error_class
    return "ok"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("", "empty_url"),
        ("   ", "empty_url"),
        ("file:///etc/passwd", "scheme_refused"),
        ("javascript:alert(1)", "scheme_refused"),
        ("data:image/png;base64,AAAA", "scheme_refused"),
        ("ftp://example.test/a.jpg", "scheme_refused"),
        ("gopher://example.test/", "scheme_refused"),
        ("not a url", "bad_url"),
        ("/relative/only.jpg", "bad_url"),
        ("http://[::1/a.jpg", "bad_url"),
        ("http://host:99999/a.jpg", "bad_url"),
        ("http:///no-host.jpg", "bad_url"),
        ("http://a.test/" + "x" * 100_000, "url_too_long"),
        ("http://bücher.example/bild.jpg", "ok"),  # IDN host: kept, yarl encodes it
        ("https://xn--bcher-kva.example/bild.jpg", "ok"),
    ],
)
def test_screen_refuses_with_a_reason(url: str, expected: str) -> None:
    assert _class(url) == expected


def test_credentials_are_stripped_or_refused() -> None:
    url = "http://user:s3cret@img.test:8080/a.jpg?q=1"
    assert screen(url) == "http://img.test:8080/a.jpg?q=1"
    assert screen("http://user:p@ss@img.test/a.jpg") == "http://img.test/a.jpg"
    assert _class(url, UrlRules(credentials="refuse")) == "credentials_refused"
    assert "s3cret" not in redact(url) and redact(url).startswith("http://img.test:8080/")


def test_credentials_never_sent_on_the_first_request_nor_a_redirect(bad_server) -> None:
    rows = [
        {"uid": "a", "url": f"http://user:secret@127.0.0.1:{bad_server.port}/ok.jpg"},
        {"uid": "b", "url": bad_server.base + "to-creds.jpg"},  # redirects to user:secret@
    ]
    start = len(bad_server.log)
    out = download_shard(rows, params(), ("127.0.0.1",))
    assert [r["status"] for r in out] == ["success", "success"]
    seen = bad_server.log[start:]
    assert [p for _, p, _ in seen].count("/ok.jpg") == 2
    assert all(auth == "" for _, _, auth in seen)  # no Basic auth header, ever
    refused = download_shard(rows, params(url_credentials="refuse"), ("127.0.0.1",))
    assert [r["status"] for r in refused] == ["credentials_refused", "credentials_refused"]
    assert all("secret" not in r["error_message"] for r in refused)


@pytest.fixture()
def two_listeners() -> Iterator[tuple[Canary, Canary]]:
    """A forbidden listener on 127.0.0.1:P and an allowed one on 127.0.0.2:P (same port)."""
    bad = Canary("127.0.0.1")
    good = Canary("127.0.0.2", bad.port)
    yield bad, good
    bad.close()
    good.close()


class Rebinding:
    """A stub resolver answering each lookup of a name with the next of its answers (cycling)."""

    def __init__(self, answers: list[list[str]]) -> None:
        self.answers, self.lookups = answers, 0

    async def lookup(self, host: str) -> list[str]:
        assert host == "rebind.test", host  # never asked about any other (real) name
        answer = self.answers[self.lookups % len(self.answers)]
        self.lookups += 1
        return answer


def _fetch_status(guard: UrlGuard, url: str) -> str:
    async def go() -> str:
        async with make_session(HTTP, guard, 2) as session:
            try:
                await fetch(session, guard, url, HTTP)
            except CrawlError as exc:
                return exc.error_class
            return "fetched"

    return asyncio.run(go())


def test_dns_rebinding_the_address_checked_is_the_address_connected_to(two_listeners) -> None:
    bad, good = two_listeners
    url = f"http://rebind.test:{bad.port}/x.jpg"
    # First lookup (the URL check) answers the allowed address, the second (the connector's,
    # the cache entry having expired: ttl 0) the forbidden one: refused, nothing connects there.
    dns = Rebinding([["127.0.0.2"], ["127.0.0.1"]])
    assert _fetch_status(UrlGuard(["127.0.0.2"], dns, ttl_s=0), url) == "address_refused"
    assert dns.lookups == 2 and bad.accepted == 0 and good.accepted == 0
    # The other order: refused at the check, before any connection.
    dns = Rebinding([["127.0.0.1"], ["127.0.0.2"]])
    assert _fetch_status(UrlGuard(["127.0.0.2"], dns, ttl_s=0), url) == "address_refused"
    assert bad.accepted == 0 and good.accepted == 0
    # With a cache (the default), the connector gets the very answer that was checked.
    dns = Rebinding([["127.0.0.2"], ["127.0.0.1"]])
    assert _fetch_status(UrlGuard(["127.0.0.2"], dns), url) == "fetched"
    assert dns.lookups == 1 and good.accepted == 1 and bad.accepted == 0  # positive control


def test_metadata_and_private_addresses_refused_without_connecting(canary) -> None:
    stub = {
        "meta.test": ["169.254.169.254"],
        "meta6.test": ["fd00:ec2::254"],
        "cgnat.test": ["100.64.1.1"],
        "linklocal.test": ["169.254.10.10"],
        "lan.test": ["192.168.1.1"],
        "loop.test": ["127.0.0.1"],
    }
    rows = [{"uid": h, "url": f"http://{h}:{canary.port}/x.jpg"} for h in stub]
    rows.append({"uid": "lit", "url": "http://[fd00:ec2::254]/latest/meta-data/"})
    out = download_shard(rows, params(), (), stub_dns=stub)
    assert {r["status"] for r in out} == {"address_refused"}
    assert canary.accepted == 0


def test_allow_list_by_exact_origin(bad_server, canary) -> None:
    """The stage's own server is allowed by host AND port: not another port of 127.0.0.1, not a
    name resolving to 127.0.0.1, neither directly nor through a redirect."""
    origin = f"http://127.0.0.1:{bad_server.port}"
    stub = {"alias.test": ["127.0.0.1"]}
    other = f"http://127.0.0.1:{canary.port}/x.jpg"
    alias = f"http://alias.test:{bad_server.port}/ok.jpg"
    rows = [
        {"uid": "ok", "url": f"{origin}/ok.jpg"},
        {"uid": "port", "url": other},
        {"uid": "name", "url": alias},
        {"uid": "redir-port", "url": f"{origin}/redirect?to={other}"},
        {"uid": "redir-name", "url": f"{origin}/redirect?to={alias}"},
        {"uid": "localhost", "url": f"http://localhost:{bad_server.port}/ok.jpg"},
    ]
    stub["localhost"] = ["127.0.0.1"]
    before = bad_server.hits["/ok.jpg"]
    out = {r["uid"]: r["status"] for r in download_shard(rows, params(), (origin,), stub_dns=stub)}
    assert out == {
        "ok": "success",
        "port": "address_refused",
        "name": "address_refused",
        "redir-port": "address_refused",
        "redir-name": "address_refused",
        "localhost": "address_refused",
    }
    assert canary.accepted == 0 and bad_server.hits["/ok.jpg"] == before + 1
    with pytest.raises(ValueError, match="ftp://x:1"):
        UrlGuard(["ftp://x:1"])


def test_served_sample_site_is_allowed_by_its_origin_only(sample_dir) -> None:
    import contextlib

    from tasks.crawl.context import build_context
    from tasks.crawl.params import InputParams

    root, _ = sample_dir
    p = CrawlParams(
        inputs=InputParams(
            sample_site_dir=str(root / "site"), archives_index=str(root / "archives/index.json")
        )
    )
    with contextlib.ExitStack() as stack:
        ctx = build_context(p, stack)
    assert ctx.served_base is not None
    assert ctx.allow_addresses == (ctx.served_base.rstrip("/"),)
    guard = UrlGuard(ctx.allow_addresses)
    assert asyncio.run(guard.check(ctx.served_base + "a.jpg")) == ctx.served_base + "a.jpg"
    with pytest.raises(CrawlError, match="address_refused"):
        asyncio.run(guard.check("http://127.0.0.1:1/a.jpg"))


def _robots_app(status: int):  # type: ignore[no-untyped-def]
    from aiohttp import web

    from . import images

    def factory(server: ThreadServer) -> web.Application:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.path == "/robots.txt":
                return web.Response(status=status, text="down")
            return web.Response(body=images.jpeg(), content_type="image/jpeg")

        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handle)
        return app

    return factory


def test_robots_txt_failure_is_reported_as_what_it_was(canary) -> None:
    # robots.txt's fetch refused (address not allowed): the URL says so, not robots_disallowed.
    out = download_shard(
        [{"uid": "a", "url": f"http://127.0.0.1:{canary.port}/x.jpg"}], params(robots=True), ()
    )
    assert out[0]["status"] == "address_refused" and "robots.txt" in out[0]["error_message"]
    assert canary.accepted == 0
    # robots.txt answering 503: RFC 9309 disallows, reported as the 5xx it was.
    server = ThreadServer(_robots_app(503))
    try:
        out = download_shard(
            [{"uid": "b", "url": server.base + "img.jpg"}], params(robots=True), ("127.0.0.1",)
        )
        assert out[0]["status"] == "http_5xx" and "robots.txt" in out[0]["error_message"]
        assert server.hits["/img.jpg"] == 0
    finally:
        server.close()
    # robots.txt 404: no rules, the image is fetched (the control that makes the test fail-able).
    server = ThreadServer(_robots_app(404))
    try:
        out = download_shard(
            [{"uid": "c", "url": server.base + "img.jpg"}], params(robots=True), ("127.0.0.1",)
        )
        assert out[0]["status"] == "success" and server.hits["/img.jpg"] == 1
    finally:
        server.close()


def test_plan_fingerprint_follows_allow_addresses_and_url_rules() -> None:
    base = fingerprint(CrawlParams().plan_inputs())
    assert fingerprint(params(allow_addresses=["10.0.0.0/8"]).plan_inputs()) != base
    assert (
        fingerprint(CrawlParams(policy=PolicyParams(url_credentials="refuse")).plan_inputs())
        != base
    )
    assert fingerprint(CrawlParams().plan_inputs()) == base
