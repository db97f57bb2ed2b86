"""HTML -> Common Crawl's WAT `HTML-Metadata` (Head: Title/Metas/Link/Scripts; Links with paths).

Common Crawl records every link with the element and attribute it came from (`IMG@/src`,
`A@/href`, `LINK@/href`), the URL exactly as written (not resolved), and the element's
`alt`/`title`/`text` when present. Crawlers (cc2dataset, img2dataset users) take `IMG@/src`
entries with an `alt` as image-text pairs.
"""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.metas: list[dict[str, str]] = []
        self.head_links: list[dict[str, str]] = []
        self.scripts: list[dict[str, str]] = []
        self.base: str | None = None
        self.links: list[dict[str, str]] = []
        self._in_head = False
        self._title_parts: list[str] | None = None
        self._anchor: dict[str, str] | None = None
        self._anchor_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v or "") for k, v in attrs}
        if tag == "head":
            self._in_head = True
        elif tag == "title" and self.title is None:
            self._title_parts = []
        elif tag == "meta":
            self.metas.append(
                {
                    k: v
                    for k, v in a.items()
                    if k in ("name", "content", "http-equiv", "property", "charset")
                }
            )
        elif tag == "base" and "href" in a:
            self.base = a["href"]
        elif tag == "link" and "href" in a:
            entry = {"path": "LINK@/href", "url": a["href"]}
            entry.update({k: a[k] for k in ("rel", "type", "title") if k in a})
            (self.head_links if self._in_head else self.links).append(entry)
        elif tag == "script" and "src" in a:
            entry = {"path": "SCRIPT@/src", "url": a["src"]}
            entry.update({k: a[k] for k in ("type",) if k in a})
            (self.scripts if self._in_head else self.links).append(entry)
        elif tag == "img" and "src" in a:
            entry = {"path": "IMG@/src", "url": a["src"]}
            entry.update({k: a[k] for k in ("alt", "title") if k in a})
            self.links.append(entry)
        elif tag == "a" and "href" in a:
            self._close_anchor()
            self._anchor = {"path": "A@/href", "url": a["href"]}
            self._anchor.update({k: a[k] for k in ("title", "target", "rel") if k in a})
            self._anchor_text = []
            self.links.append(self._anchor)

    def handle_endtag(self, tag: str) -> None:
        if tag == "head":
            self._in_head = False
        elif tag == "title" and self._title_parts is not None:
            self.title = " ".join("".join(self._title_parts).split())
            self._title_parts = None
        elif tag == "a":
            self._close_anchor()

    def handle_data(self, data: str) -> None:
        if self._title_parts is not None:
            self._title_parts.append(data)
        if self._anchor is not None:
            self._anchor_text.append(data)

    def _close_anchor(self) -> None:
        if self._anchor is not None:
            text = " ".join("".join(self._anchor_text).split())
            if text:
                self._anchor["text"] = text
            self._anchor = None


def html_metadata(html: str) -> dict[str, Any]:
    """The `HTML-Metadata` object of a WAT response record, in Common Crawl's shape."""
    ex = _Extractor()
    ex.feed(html)
    ex.close()
    ex._close_anchor()
    head: dict[str, Any] = {}
    if ex.title is not None:
        head["Title"] = ex.title
    if ex.base is not None:
        head["Base"] = ex.base
    if ex.metas:
        head["Metas"] = ex.metas
    if ex.head_links:
        head["Link"] = ex.head_links
    if ex.scripts:
        head["Scripts"] = ex.scripts
    out: dict[str, Any] = {"Head": head}
    if ex.links:
        out["Links"] = ex.links
    return out


def image_links(html: str) -> list[dict[str, str]]:
    """The `IMG@/src` links of a page (url as written, alt/title when present)."""
    return [link for link in html_metadata(html).get("Links", []) if link["path"] == "IMG@/src"]
