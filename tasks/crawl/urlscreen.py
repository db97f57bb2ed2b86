"""Screen a URL before it is fetched or stored: scheme, shape, length and credentials.

Every URL the crawl takes in (URL-list rows, image and page URLs found in WAT/WARC/site pages,
seeds, links, redirect targets) passes here. `user:password@` in a URL is removed (or the URL
refused, `policy.url_credentials`) before anything is fetched or written, so credentials are
never sent as Basic auth nor stored in the plan, the shards, the tar JSON, the pool or the logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tasks.crawl.errors import CrawlError

FETCHABLE_SCHEMES = ("http", "https")
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")  # userinfo of an authority: everything up to its @


def redact(url: str, limit: int = 300) -> str:
    """The URL without userinfo and cut to `limit` characters: safe for messages and logs."""
    text = _USERINFO.sub("", str(url))
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} chars)"


@dataclass(frozen=True)
class UrlRules:
    """What screen() enforces: policy.url_credentials and policy.max_url_length."""

    credentials: str = "strip"  # "strip" | "refuse"
    max_length: int = 4096  # characters


DEFAULT_RULES = UrlRules()  # the params' defaults: strip credentials, 4096 characters


def screen(url: object, rules: UrlRules = DEFAULT_RULES) -> str:
    """The URL as it may be fetched and stored, or CrawlError naming why it is refused.

    Refusal classes: empty_url, url_too_long, bad_url (unparseable, relative, no host, bad port),
    scheme_refused (file:, javascript:, data:, ftp:, ...), credentials_refused.
    """
    if not isinstance(url, str) or not url.strip():
        raise CrawlError("empty_url", repr(url)[:80])
    url = url.strip()
    if len(url) > rules.max_length:
        raise CrawlError("url_too_long", f"{len(url)} > {rules.max_length} chars: {redact(url)}")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a bad port
    except ValueError as exc:
        raise CrawlError("bad_url", f"{redact(url)}: {exc}") from None
    if not parts.scheme:
        raise CrawlError("bad_url", f"{redact(url)}: not an absolute URL")
    if parts.scheme.lower() not in FETCHABLE_SCHEMES:
        raise CrawlError("scheme_refused", f"{parts.scheme}: {redact(url, 80)}")
    if not host:
        raise CrawlError("bad_url", f"{redact(url)}: no host")
    if "@" in parts.netloc:
        if rules.credentials == "refuse":
            raise CrawlError("credentials_refused", redact(url))
        netloc = parts.netloc.rpartition("@")[2]
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return url


def strip_userinfo(url: str) -> str:
    """Metadata URLs (a page an image was found on) are never fetched: just drop userinfo."""
    return _USERINFO.sub("", url) if "@" in url else url
