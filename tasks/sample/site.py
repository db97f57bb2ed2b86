"""The sample website on disk: files, HTML pages with real-site noise, one ground-truth row per <img>.

Noise is decided per (page, image) by seeded coins, so a page reads the same on every build:
alt="" or no alt or the file name as alt; src written relative, root-relative ("/gallery/...")
or fully qualified with `base_url` (the host the archives use; the crawler maps it to the
address the site is served on).
"""

from __future__ import annotations

import html
import io
import posixpath
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageDraw

from tasks.sample.items import stable_unit
from tasks.sample.params import SampleParams

STATIC = "static"
CSS = """body{font-family:sans-serif;margin:0 2em}.header{border-bottom:1px solid #ccc}
figure.item{display:inline-block;width:160px;vertical-align:top;margin:8px;text-align:center}
figure.item img{max-width:150px;max-height:150px}figcaption{font-size:small;color:#555}
.footer{border-top:1px solid #ccc;margin-top:2em}
"""


@dataclass(frozen=True)
class Entry:
    """One gallery image on a page, with the texts the page shows for it."""

    target: str  # site path of the image file
    alt: str
    title: str
    caption: str
    source: str  # openclipart | emoji | tuxpaint | planted | nav
    item_id: str
    kind: str = "item"  # item | alias | duplicate | planted | private | broken
    lang: str = "en"
    noisy: bool = True  # alt and src noise may apply


@dataclass
class PageSpec:
    """A generated page: gallery entries and/or a list of links."""

    path: str
    title: str
    lang: str
    entries: list[Entry] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (site path, text)
    prev: str | None = None
    next: str | None = None
    broken_hrefs: list[str] = field(default_factory=list)


def resolve(page: str, src: str, base_url: str) -> str | None:
    """The site path a link on `page` points to; None when it leaves the site."""
    src = src.split("#", 1)[0].split("?", 1)[0]
    if src.startswith(base_url):
        return src[len(base_url) :]
    if not src or urlsplit(src).scheme or src.startswith("//"):
        return None
    if src.startswith("/"):
        return posixpath.normpath(src[1:])
    return posixpath.normpath(posixpath.join(posixpath.dirname(page), src))


class Site:
    """Writes the site folder and remembers every <img> it puts on a page."""

    def __init__(self, root: Path, params: SampleParams) -> None:
        self.root = root
        self.p = params
        self.rows: list[dict] = []
        self.pages: list[str] = []
        root.mkdir(parents=True, exist_ok=True)

    # files -------------------------------------------------------------------------------
    def copy(self, target: str, source: Path | str) -> None:
        dest = self.root / target
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)

    def write_bytes(self, target: str, data: bytes) -> None:
        dest = self.root / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)

    def write_static(self) -> None:
        """Logo, arrows, spacer and RSS icon: the navigation images real sites repeat everywhere."""
        self.write_bytes(f"{STATIC}/style.css", CSS.encode())
        for name, draw in _NAV_IMAGES.items():
            self.write_bytes(f"{STATIC}/{name}", draw())

    def write_robots(self) -> None:
        section = self.p.disallowed_section
        text = f"User-agent: *\nDisallow: /{section}/\n\nSitemap: {self.p.base_url}index.html\n"
        self.write_bytes("robots.txt", text.encode())

    # urls and tags -------------------------------------------------------------------------
    def url(self, page: str, target: str) -> str:
        """How `page` writes a link to `target`: relative, root-relative or fully qualified."""
        u = stable_unit(self.p.seed, "src", page, target)
        if u < self.p.root_relative_rate:
            return "/" + target
        if u < self.p.root_relative_rate + self.p.absolute_url_rate:
            return self.p.base_url + target
        return posixpath.relpath(target, posixpath.dirname(page) or ".")

    def _alt(self, page: str, e: Entry) -> str | None:
        if not e.noisy:
            return e.alt
        p = self.p
        u = stable_unit(p.seed, "alt", page, e.target)
        if u < p.empty_alt_rate:
            return ""
        if u < p.empty_alt_rate + p.missing_alt_rate:
            return None
        if u < p.empty_alt_rate + p.missing_alt_rate + p.filename_alt_rate:
            return posixpath.basename(e.target)
        return e.alt

    def img(self, page: str, e: Entry, extra: str = "") -> str:
        src = (
            self.url(page, e.target)
            if e.noisy
            else posixpath.relpath(e.target, posixpath.dirname(page) or ".")
        )
        alt = self._alt(page, e)
        attrs = f' src="{html.escape(src)}"'
        if alt is not None:
            attrs += f' alt="{html.escape(alt)}"'
        if e.title and alt is not None:
            attrs += f' title="{html.escape(e.title)}"'
        self.rows.append(
            {
                "page": page,
                "src": src,
                "path": e.target,
                "alt": alt,
                "title": e.title if (e.title and alt is not None) else None,
                "source": e.source,
                "item_id": e.item_id,
                "lang": e.lang,
                "kind": e.kind,
            }
        )
        return f"<img{attrs}{extra} />"

    def href(self, page: str, target: str) -> str:
        return html.escape(self.url(page, target))

    # pages -------------------------------------------------------------------------------
    def render(self, spec: PageSpec) -> None:
        page = spec.path
        parts = [self._header(spec)]
        if spec.entries:
            parts.append('<div class="gallery">')
            parts.extend(self._figure(page, e) for e in spec.entries)
            parts.append("</div>")
        if spec.links:
            parts.append("<ul>")
            parts.extend(
                f'<li><a href="{self.href(page, t)}">{html.escape(text)}</a></li>'
                for t, text in spec.links
            )
            parts.append("</ul>")
        for i, target in enumerate(spec.broken_hrefs):
            parts.append(
                f'<p class="related"><a href="{self.href(page, target)}">Related page {i + 1}</a></p>'
            )
        parts.append(self._footer(spec))
        self.write_bytes(page, "\n".join(parts).encode("utf-8"))
        self.pages.append(page)

    def _figure(self, page: str, e: Entry) -> str:
        tag = self.img(page, e, ' loading="lazy"')
        link = self.href(page, e.target)
        caption = f"<figcaption>{html.escape(e.caption)}</figcaption>" if e.caption else ""
        return f'<figure class="item"><a href="{link}">{tag}</a>{caption}</figure>'

    def _nav(self, page: str, name: str, alt: str) -> str:
        entry = Entry(
            f"{STATIC}/{name}", alt, "", "", "nav", name, kind="nav", lang="", noisy=False
        )
        return self.img(page, entry)

    def _bare(self, page: str, name: str) -> str:
        """An image without any alt attribute (the RSS icon): real sites have plenty."""
        src = posixpath.relpath(f"{STATIC}/{name}", posixpath.dirname(page) or ".")
        self.rows.append(
            {
                "page": page,
                "src": src,
                "path": f"{STATIC}/{name}",
                "alt": None,
                "title": None,
                "source": "nav",
                "item_id": name,
                "lang": "",
                "kind": "nav",
            }
        )
        return f'<img src="{html.escape(src)}" width="16" height="16" />'

    def _header(self, spec: PageSpec) -> str:
        page = spec.path
        css = posixpath.relpath(f"{STATIC}/style.css", posixpath.dirname(page) or ".")
        return (
            f'<!DOCTYPE html>\n<html lang="{spec.lang}">\n<head>\n<meta charset="utf-8" />\n'
            f"<title>{html.escape(spec.title)}</title>\n"
            f'<meta name="description" content="{html.escape(spec.title)}" />\n'
            f'<link rel="stylesheet" href="{css}" type="text/css" />\n</head>\n<body>\n'
            f'<div class="header"><a href="{self.href(page, "index.html")}">'
            f"{self._nav(page, 'logo.png', 'clipmill sample web')}</a> "
            f"{self._nav(page, 'spacer.gif', '')}<h1>{html.escape(spec.title)}</h1></div>"
        )

    def _footer(self, spec: PageSpec) -> str:
        page = spec.path
        nav = []
        if spec.prev:
            nav.append(
                f'<a href="{self.href(page, spec.prev)}">{self._nav(page, "prev.png", "Previous")}</a>'
            )
        if spec.next:
            nav.append(
                f'<a href="{self.href(page, spec.next)}">{self._nav(page, "next.png", "Next")}</a>'
            )
        nav.append(
            f'<a href="{self.href(page, "index.html")}">{self._bare(page, "rss.png")} Feed</a>'
        )
        return f'<div class="footer">{" ".join(nav)}</div>\n</body>\n</html>\n'


def _png(
    size: tuple[int, int],
    draw_fn: Callable[[ImageDraw.ImageDraw, tuple[int, int]], object],
    mode: str = "RGBA",
) -> bytes:
    im = Image.new(mode, size, (0, 0, 0, 0) if mode == "RGBA" else 255)
    draw_fn(ImageDraw.Draw(im), size)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _logo() -> bytes:
    def draw(d: ImageDraw.ImageDraw, s: tuple[int, int]) -> None:
        d.rounded_rectangle((0, 0, s[0] - 1, s[1] - 1), radius=8, fill=(40, 90, 160, 255))
        d.ellipse((8, 8, 32, 32), fill=(250, 200, 60, 255))
        d.rectangle((44, 14, 110, 26), fill=(255, 255, 255, 255))

    return _png((120, 40), draw)


def _arrow(left: bool) -> bytes:
    def draw(d: ImageDraw.ImageDraw, s: tuple[int, int]) -> None:
        pts = [(20, 4), (4, 12), (20, 20)] if left else [(4, 4), (20, 12), (4, 20)]
        d.polygon(pts, fill=(60, 60, 60, 255))

    return _png((24, 24), draw)


def _rss() -> bytes:
    def draw(d: ImageDraw.ImageDraw, s: tuple[int, int]) -> None:
        d.rectangle((0, 0, 15, 15), fill=(240, 130, 20, 255))
        d.ellipse((2, 11, 5, 14), fill=(255, 255, 255, 255))

    return _png((16, 16), draw)


def _spacer() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (1, 1), 0).save(buf, format="GIF", transparency=0)
    return buf.getvalue()


_NAV_IMAGES = {
    "logo.png": _logo,
    "prev.png": lambda: _arrow(True),
    "next.png": lambda: _arrow(False),
    "rss.png": _rss,
    "spacer.gif": _spacer,
}
