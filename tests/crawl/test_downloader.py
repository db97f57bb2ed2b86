"""Every bad input of the issue against a real misbehaving server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import time

import pytest
from PIL import Image

from tasks.crawl.downloader import download_shard, refused_by_header
from tasks.crawl.http import retry_after_seconds
from tasks.crawl.params import CrawlParams, DownloadParams, HttpParams
from tasks.imaging.resize import ResizeParams

EXPECTED = {
    "ok.jpg": "success",
    "alpha.png": "success",
    "cmyk.jpg": "success",
    "palette.png": "success",
    "sixteen.png": "success",
    "anim.gif": "success",
    "exif.jpg": "success",
    "nocontenttype.jpg": "success",
    "big.png": "success",
    "flaky.jpg": "success",
    "429.jpg": "success",
    "to-ok.jpg": "success",
    "otherbot-noai.jpg": "success",
    "missing.jpg": "http_404",
    "403.jpg": "http_4xx",
    "500.jpg": "http_5xx",
    "429-long.jpg": "http_429",
    "slow.jpg": "timeout",
    "slow-body.jpg": "timeout",
    "loop-a.jpg": "too_many_redirects",
    "to-private.jpg": "address_refused",
    "wrong-type.jpg": "content_type",
    "empty.jpg": "empty_body",
    "truncated.jpg": "decode_error",
    "bomb.png": "decompression_bomb",
    "html-as-image.jpg": "not_an_image",
    "huge.jpg": "body_too_large",
    "huge-declared.jpg": "body_too_large",
    "noai.jpg": "robots_noai",
    "noimageai.jpg": "robots_noai",
    "private/secret.jpg": "robots_disallowed",
    "reset.jpg": "connection_error",
}


def config(**http: object) -> CrawlParams:
    h = dict(
        user_agent="clipmill-test/0.1 (+http://example.invalid/contact)",
        retries=1,
        backoff_s=0.05,
        connect_timeout_s=2.0,
        read_timeout_s=1.0,
        total_timeout_s=3.0,
        max_body_bytes=1_000_000,
        max_retry_after_s=5.0,
    )
    h.update(http)
    return CrawlParams(
        http=HttpParams(**h),
        download=DownloadParams(connections_per_shard=16),
        resize=ResizeParams(image_size=64),
    )


ALLOW = ("127.0.0.1",)


@pytest.fixture(scope="module")
def results(bad_server) -> dict[str, dict]:
    rows = [{"uid": name, "url": bad_server.base + name} for name in EXPECTED]
    started = time.perf_counter()
    out = download_shard(rows, config(), ALLOW)
    assert (
        time.perf_counter() - started < 20
    )  # slow URLs time out in parallel, not one after another
    return {r["uid"]: r for r in out}


def test_every_bad_input_gets_its_error_class(results):
    got = {name: r["status"] for name, r in results.items()}
    assert got == EXPECTED
    for name, r in results.items():
        if r["status"] != "success":
            assert r["error_message"], name  # every failure says why


def test_nothing_is_lost(results):
    assert len(results) == len(EXPECTED)


def test_retries_only_for_transient_errors(bad_server, results):
    assert bad_server.hits["/flaky.jpg"] == 2  # 503 then 200
    assert bad_server.hits["/500.jpg"] == 2  # retried once (retries=1), still failing
    assert bad_server.hits["/missing.jpg"] == 1  # a 404 is not retried
    assert bad_server.hits["/403.jpg"] == 1
    assert bad_server.hits["/429-long.jpg"] == 1  # Retry-After beyond the cap: not waited for
    assert bad_server.hits["/private/secret.jpg"] == 0  # robots.txt disallow: never requested
    assert bad_server.hits["/robots.txt"] == 1  # fetched once for the host


def test_success_outputs(bad_server, results):
    ok = results["ok.jpg"]
    from . import images

    assert ok["sha256"] == hashlib.sha256(images.jpeg()).hexdigest()
    assert (ok["original_width"], ok["original_height"], ok["width"], ok["height"]) == (
        320,
        200,
        64,
        64,
    )
    img = Image.open(io.BytesIO(ok["image"]))
    assert img.format == "JPEG" and img.mode == "RGB"
    big = results["big.png"]
    assert (big["original_width"], big["width"]) == (10000, 64)
    exif = results["exif.jpg"]
    assert (exif["original_width"], exif["original_height"]) == (200, 100)
    upright = Image.open(io.BytesIO(exif["image"]))
    assert upright.size == (64, 64)


def test_429_waits_for_retry_after(bad_server):
    started = time.perf_counter()
    out = download_shard([{"uid": "x", "url": bad_server.base + "429.jpg?again"}], config(), ALLOW)
    assert out[0]["status"] == "success" and time.perf_counter() - started >= 0.9


def test_header_directives():
    d = ("noai", "noimageai")
    assert refused_by_header("noai", d, "clipmill") == "noai"
    assert refused_by_header("noindex, NoImageAI", d, "clipmill") == "noimageai"
    assert refused_by_header("otherbot: noai", d, "clipmill") is None
    assert refused_by_header("clipmill: noai", d, "clipmill") == "noai"
    assert retry_after_seconds("7") == 7.0 and retry_after_seconds("garbage") is None
