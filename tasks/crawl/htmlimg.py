"""Parse an HTML page into its images (src + candidate texts) and links, whatever its encoding."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
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


# Printable ASCII but space and `#;[]:`: the characters after which urljoin + urldefrag keep
# a URL's text as it is (`.` and `/` included; where they may sit is checked separately).
_PLAIN = re.compile(r'[!"$-9<-Z\\^-~]*', re.ASCII)
# A text is plain when this finds nothing in it: the same test as _PLAIN.fullmatch, without
# the match object fullmatch makes for every plain link (search returns None for them).
_not_plain = re.compile(r'[^!"$-9<-Z\\^-~]').search


def _verbatim(url: str) -> bool:
    """True when urljoin + urldefrag + urlsplit keep this absolute http(s) URL as it is and it
    has a host: lower-case scheme, printable ASCII without spaces, a fragment, `;` params,
    IPv6 brackets or a port colon, and no empty query."""
    if url.startswith("http://"):
        start = 7
    elif url.startswith("https://"):
        start = 8
    else:
        return False
    if _not_plain(url, start) is not None:
        return False
    end = len(url)
    for sep in "/?":
        at = url.find(sep, start)
        if 0 <= at < end:
            end = at
    host = url[start:end].rpartition("@")[2]
    return bool(host) and url.find("?") != len(url) - 1


@lru_cache(maxsize=1 << 12)
def _base_prefixes(base: str) -> tuple[str, str, str] | None:
    """(scheme, origin, directory) of a page URL simple enough that urljoin of a plain relative
    link is plain concatenation: verbatim, no empty, `.` or `..` path segments. ("", "", "")
    when urljoin can parse it but it is not that simple; None when urljoin cannot parse it."""
    try:
        urlsplit(base)
    except ValueError:
        return None
    if not _verbatim(base):
        return "", "", ""
    scheme, _, rest = base.partition("://")
    path_at = rest.find("/")
    query_at = rest.find("?")
    if path_at < 0 or 0 <= query_at < path_at:
        origin = scheme + "://" + (rest if query_at < 0 else rest[:query_at])
        return scheme, origin, origin + "/"
    origin = scheme + "://" + rest[:path_at]
    path = rest[path_at : query_at if query_at >= 0 else len(rest)]
    if "//" in path or "/." in path:
        return "", "", ""
    return scheme, origin, origin + path[: path.rfind("/") + 1]


def image_url(ref: str, base: str) -> str | None:
    """absolute_url(ref, base), without urljoin for the common links where it is concatenation.

    urljoin + urldefrag + urlsplit cost more than the rest of a WAT record's extraction. Links
    that are already absolute and that urljoin would keep as they are, protocol-relative ones
    (`//host/x`), root-relative ones (`/x/y`) and plain relative ones (`x/y`, `../x/y`) without
    dot segments inside, empty segments or characters urljoin treats specially, against a page
    URL that is itself plain, are resolved by string operations; everything else takes
    absolute_url. The two are compared on fuzzed links and page URLs in
    tests/crawl/test_extract_wat_pinned.py.
    """
    return resolve_image_url(ref, base, _base_prefixes(base) if base else ("", "", ""))


@lru_cache(maxsize=1 << 12)
def _up_directory(directory: str, origin: str, lead: str) -> str | None:
    """The directory a plain relative path's leading run `lead` of `../` and `./` leads to from
    `directory` (`..` drops a directory, never the root); None when `lead` is not such a run.
    Cached: a page's links share a few runs, and pages of a site share directories."""
    at = ups = 0
    while at < len(lead):
        if lead.startswith("../", at):
            at, ups = at + 3, ups + 1
        elif lead.startswith("./", at):
            at += 2
        else:
            return None
    cut = len(directory) - 1  # the directory's closing slash
    for _ in range(ups):
        if cut <= len(origin):
            break
        cut = directory.rfind("/", 0, cut)
    return directory[: cut + 1]


def resolve_image_url(ref: str, base: str, prefixes: tuple[str, str, str] | None) -> str | None:
    """image_url with the page's `_base_prefixes(base)` computed once by the caller (per page).

    The links a page holds most (relative and root-relative paths) are checked first. A path
    is plain when all its characters are `_PLAIN`, it has no empty segment (`//`), no segment
    starting with a dot (`/.`) after its leading run of `../` and `./`, does not end with `?`
    (an empty query, perhaps) and does not start with `?`, `.` or `/` after that run; such a
    path is concatenated to the page's directory (root-relative ones to its origin)."""
    if prefixes is None:  # urljoin raises on this page URL: absolute_url says None
        return absolute_url(ref, base)
    scheme, origin, directory = prefixes
    if scheme and ref and "//" not in ref:  # not absolute, not protocol-relative
        if ref[-1] != "?" and _not_plain(ref) is None:  # (a last `?` may be an empty query)
            first = ref[0]
            if first == "/":
                if "/." not in ref:
                    return origin + ref
            elif first != ".":
                if first != "?" and "/." not in ref:
                    return directory + ref
            else:
                rest = ref.lstrip("./")  # after the leading run of `../` and `./`, if it is one
                if (not rest or rest[0] != "?") and "/." not in rest:
                    up = _up_directory(directory, origin, ref[: len(ref) - len(rest)])
                    if up is not None:
                        return up + rest
        return absolute_url(ref, base)
    if ref.startswith(("http://", "https://")):
        return ref if _verbatim(ref) else absolute_url(ref, base)
    if scheme and ref.startswith("//"):
        url = scheme + ":" + ref
        if "/." not in ref and _verbatim(url):  # _verbatim checks ref's characters and query
            return url
    return absolute_url(ref, base)


def page_prefixes(base: str) -> tuple[str, str, str] | None:
    """What resolve_image_url needs to know about a page URL (cached per URL)."""
    return _base_prefixes(base) if base else ("", "", "")


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
