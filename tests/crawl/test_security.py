"""SSRF guard: refusals by address class, stub DNS, and proof that no connection is attempted."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from tasks.crawl.downloader import download_shard
from tasks.crawl.errors import CrawlError
from tasks.crawl.params import CrawlParams, HttpParams, PolicyParams
from tasks.crawl.security import StubResolver, UrlGuard, refusal_reason


@pytest.mark.parametrize(
    ("addr", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.9", "private"),
        ("172.16.5.5", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("0.0.0.0", "unspecified"),
        ("::ffff:10.0.0.1", "private"),
        ("100.64.0.1", "non-global"),
        ("224.0.0.1", "multicast"),
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
    ],
)
def test_refusal_reason(addr, reason):
    assert refusal_reason(ipaddress.ip_address(addr)) == reason


def _check(guard: UrlGuard, url: str) -> str | None:
    try:
        asyncio.run(guard.check(url))
    except CrawlError as exc:
        return exc.error_class
    return None


def test_guard_with_stub_resolver():
    stub = StubResolver(
        {
            "public.test": ["93.184.216.34"],
            "evil.test": ["10.0.0.7"],
            "meta.test": ["169.254.169.254"],
            "mixed.test": ["10.0.0.1", "93.184.216.34"],
        }
    )
    guard = UrlGuard([], stub)
    assert _check(guard, "http://public.test/a.jpg") is None
    assert _check(guard, "http://evil.test/a.jpg") == "address_refused"
    assert _check(guard, "http://meta.test/latest") == "address_refused"
    assert _check(guard, "http://unknown.test/") == "dns_error"
    assert _check(guard, "ftp://public.test/a.jpg") == "scheme_refused"
    assert _check(guard, "file:///etc/passwd") == "scheme_refused"
    assert _check(guard, "http://127.0.0.1:8080/") == "address_refused"  # IP literals never hit DNS
    assert _check(guard, "http://[::1]/") == "address_refused"
    assert _check(guard, "http://host:notaport/") == "bad_url"
    # mixed answers: only the public address is ever handed to the connector
    res = asyncio.run(guard.resolve("mixed.test", 80))
    assert [r["host"] for r in res] == ["93.184.216.34"]
    # cached: one lookup per name
    _check(guard, "http://public.test/b.jpg")
    assert stub.lookups.count("public.test") == 1


def test_allow_list_is_explicit():
    guard = UrlGuard(
        ["127.0.0.1", "10.9.0.0/16"],
        StubResolver({"lan.test": ["10.9.1.1"], "lan2.test": ["10.8.1.1"]}),
    )
    assert _check(guard, "http://127.0.0.1:1/") is None
    assert _check(guard, "http://lan.test/") is None
    assert _check(guard, "http://lan2.test/") == "address_refused"
    with pytest.raises(ValueError, match="not-an-ip"):
        UrlGuard(["not-an-ip"])


PARAMS = CrawlParams(
    http=HttpParams(
        user_agent="clipmill-test/0 (+http://example.invalid)",
        retries=0,
        connect_timeout_s=2,
        read_timeout_s=2,
        total_timeout_s=4,
    ),
    policy=PolicyParams(respect_robots_txt=False),
)


def test_no_connection_attempt_to_refused_address(canary):
    """A name resolving to loopback without the allow-list: refused, and the listener sees nothing."""
    rows = [
        {"uid": "a", "url": f"http://sneaky.test:{canary.port}/x.jpg"},
        {"uid": "b", "url": f"http://127.0.0.1:{canary.port}/y.jpg"},
    ]
    out = download_shard(rows, PARAMS, (), stub_dns={"sneaky.test": ["127.0.0.1"]})
    assert [r["status"] for r in out] == ["address_refused", "address_refused"]
    assert canary.accepted == 0
    # Positive control: the same URLs with 127.0.0.1 allowed do connect (so the test can fail).
    out = download_shard(rows, PARAMS, ("127.0.0.1",), stub_dns={"sneaky.test": ["127.0.0.1"]})
    assert canary.accepted == 2 and [r["status"] for r in out] == ["empty_body", "empty_body"]


def test_redirects_are_rechecked(bad_server):
    base = bad_server.base
    rows = [
        {"uid": n, "url": base + n}
        for n in (
            "to-private.jpg",
            "to-metadata.jpg",
            "to-internal-name.jpg",
            "to-file.jpg",
            "to-ok.jpg",
        )
    ]
    before = dict(bad_server.hits)
    out = download_shard(rows, PARAMS, ("127.0.0.1",), stub_dns={"internal.test": ["10.20.30.40"]})
    status = {r["uid"]: r["status"] for r in out}
    assert status == {
        "to-private.jpg": "address_refused",
        "to-metadata.jpg": "address_refused",
        "to-internal-name.jpg": "address_refused",
        "to-file.jpg": "scheme_refused",
        "to-ok.jpg": "success",
    }
    assert bad_server.hits["/ok.jpg"] == before.get("/ok.jpg", 0) + 1
