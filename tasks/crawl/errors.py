"""Error classes of the crawl: every failed URL is counted under exactly one of these names."""

from __future__ import annotations

from tasks.imaging.resize import IMAGE_ERROR_CLASSES, ImageError

SUCCESS = "success"

# Error class -> what it means. Stats, parquet `status` and the pool use these names.
ERROR_CLASSES: dict[str, str] = {
    "empty_url": "an input row without a URL",
    "url_too_long": "longer than policy.max_url_length",
    "bad_url": "not a parseable absolute URL",
    "scheme_refused": "scheme other than http/https",
    "credentials_refused": "user:password@ in the URL and policy.url_credentials is refuse",
    "dns_error": "the host name did not resolve",
    "address_refused": "host resolves to a private, loopback, link-local or metadata address",
    "connection_error": "connection refused or reset",
    "timeout": "connect, read or total timeout of a request, or the shard time limit reached",
    "too_many_redirects": "redirect limit reached or a redirect loop",
    "bad_redirect": "redirect without a usable Location",
    "http_4xx": "client error status (other than 404 / 429)",
    "http_404": "not found",
    "http_429": "rate limited, still 429 after the retries",
    "http_5xx": "server error, still failing after the retries",
    "robots_disallowed": "robots.txt disallows the URL for our user agent",
    "robots_noai": "X-Robots-Tag forbids AI use (noai / noimageai)",
    "content_type": "the response's content type is not an image",
    "body_too_large": "the body exceeded the size limit while streaming",
    "empty_body": "zero-byte response",
    **IMAGE_ERROR_CLASSES,  # the image's own faults (tasks/imaging/resize.py)
    "unexpected_error": "a bug in the crawler; the URL is kept and counted, the shard goes on",
}


class CrawlError(Exception):
    """A per-URL failure with its error class; the crawl records it and moves on.

    Faults of the image itself are raised by the imaging library as `ImageError`; code that
    records a URL's outcome catches `FAILURES` (both carry `error_class` and `detail`).
    """

    def __init__(self, error_class: str, detail: str = "") -> None:
        if error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown crawl error class {error_class!r}")
        super().__init__(f"{error_class}: {detail}" if detail else error_class)
        self.error_class = error_class
        self.detail = detail


def http_error_class(status: int) -> str:
    """Map a final HTTP status to an error class (only called for non-2xx)."""
    if status == 404:
        return "http_404"
    if status == 429:
        return "http_429"
    if status >= 500:
        return "http_5xx"
    return "http_4xx"


FAILURES = (CrawlError, ImageError)  # every classified per-URL failure
