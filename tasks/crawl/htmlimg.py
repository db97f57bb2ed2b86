"""Parse an HTML page into its images (src + candidate texts) and links, whatever its encoding."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urldefrag, urljoin, urlsplit

from tasks.crawl.records import clean_text

TEXT_ATTRS = ("alt", "title", "data-image-title")  # MetaCLIP's candidate texts, in priority order
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_\-:.]+)""", re.I)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9_\-:.]+)", re.I)


@dataclass
class PageImages:
    """What one page yields: absolute image URLs with texts, and the absolute links to follow."""

    images: list[tuple[str, list[str]]] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    nofollow: bool = False  # <meta name=robots content=nofollow>


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.imgs: list[dict[str, str]] = []
        self.hrefs: list[str] = []
        self.nofollow = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k.lower(): (v or "") for k, v in attrs}
        if tag == "img":
            self.imgs.append(a)
        elif tag == "a" and a.get("href") and "nofollow" not in a.get("rel", "").lower():
            self.hrefs.append(a["href"])
        elif tag == "base" and a.get("href") and self.base is None:
            self.base = a["href"]
        elif tag == "meta" and a.get("name", "").lower() == "robots":
            self.nofollow = "nofollow" in a.get("content", "").lower()

    handle_startendtag = handle_starttag


def decode_html(body: bytes, content_type: str = "") -> str:
    """Bytes -> text: HTTP charset, then <meta charset>, then UTF-8, then cp1252 (never raises)."""
    candidates: list[str] = []
    if header := _HEADER_CHARSET.search(content_type or ""):
        candidates.append(header.group(1))
    if meta := _META_CHARSET.search(body[:4096]):
        candidates.append(meta.group(1).decode("ascii", "ignore"))
    candidates += ["utf-8", "cp1252"]
    for enc in candidates:
        try:
            return body.decode(enc)
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("utf-8", errors="replace")


def absolute_url(ref: str, base: str) -> str | None:
    """Resolve a possibly relative URL against the page; None for data:, javascript: and junk."""
    ref = ref.strip()
    if not ref or ref.startswith(("data:", "javascript:", "mailto:", "#")):
        return None
    try:
        url = urldefrag(urljoin(base, ref))[0]
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return url


def image_texts(attrs: dict[str, str]) -> list[str]:
    """alt, title, data-image-title: cleaned, non-empty, distinct, in that order."""
    out: list[str] = []
    for key in TEXT_ATTRS:
        text = clean_text(attrs.get(key))
        if text and text not in out:
            out.append(text)
    return out


def parse_page(html: str, page_url: str) -> PageImages:
    """Every <img> with a usable src (relative ones resolved, honouring <base href>) and every link."""
    collector = _Collector()
    try:
        collector.feed(html)
        collector.close()
    except (AssertionError, ValueError):  # html.parser gives up on some garbage; keep what it found
        pass
    base = absolute_url(collector.base, page_url) if collector.base else None
    base = base or page_url
    out = PageImages(nofollow=collector.nofollow)
    for attrs in collector.imgs:
        src = attrs.get("src") or attrs.get("data-src") or ""
        url = absolute_url(src, base)
        if url:
            out.images.append((url, image_texts(attrs)))
    for href in collector.hrefs:
        url = absolute_url(href, base)
        if url:
            out.links.append(url)
    return out
