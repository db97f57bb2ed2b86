"""A tiny website (pages, relative/absolute images, robots.txt) and its WARC + WAT, made with warcio."""

from __future__ import annotations

import io
import json
from pathlib import Path

from . import images

BASE = "http://sample.clipmill.test/"


def page(title: str, body: str, charset: str = "utf-8") -> bytes:
    return (
        f'<!DOCTYPE html><html><head><meta charset="{charset}"><title>{title}</title></head>'
        f"<body>{body}</body></html>"
    ).encode(charset)


def build_site(root: Path, n_gallery: int = 12) -> dict[str, object]:
    """Write the site; return what a perfect crawl must find (image path -> alt)."""
    (root / "img").mkdir(parents=True)
    (root / "gallery").mkdir()
    (root / "private").mkdir()
    expected: dict[str, str] = {}
    for i in range(n_gallery):
        (root / "img" / f"g{i}.jpg").write_bytes(images.jpeg(300 + i, 200, (i * 20 % 255, 100, 50)))
    (root / "img" / "logo.png").write_bytes(images.png_rgba())
    (root / "private" / "hidden.jpg").write_bytes(images.jpeg())
    imgs = "".join(
        f'<img src="../img/g{i}.jpg" alt="a red fox number {i}" title="fox {i}">'
        for i in range(n_gallery // 2)
    )
    (root / "gallery" / "one.html").write_bytes(page("one", imgs + '<a href="two.html">next</a>'))
    imgs2 = "".join(
        f'<img src="/img/g{i}.jpg" alt="ein Fuchs Nummer {i} im Wald">'
        for i in range(n_gallery // 2, n_gallery)
    )
    imgs2 += (
        '<img src="../img/late.jpg" alt="a late fox">'  # 404 until a test creates it (retry_failed)
    )
    (root / "gallery" / "two.html").write_bytes(
        page("two", imgs2 + '<a href="../index.html">home</a>')
    )
    # Odd encoding: cp1252 page declaring it, with an accented alt.
    (root / "gallery" / "latin.html").write_bytes(
        page("latin", '<img src="../img/logo.png" alt="café crème logo">', charset="cp1252")
    )
    (root / "private" / "p.html").write_bytes(
        page("p", '<img src="hidden.jpg" alt="should not be crawled">')
    )
    (root / "index.html").write_bytes(
        page(
            "home",
            (
                '<img src="img/logo.png" alt="Site logo" data-image-title="The logo">'
                '<a href="gallery/one.html">one</a> <a href="gallery/latin.html">latin</a>'
                '<a href="private/p.html">private</a> <a href="http://elsewhere.invalid/x.html">ext</a>'
            ),
        )
    )
    (root / "robots.txt").write_text("User-agent: *\nDisallow: /private/\n")
    for i in range(n_gallery // 2):
        expected[f"img/g{i}.jpg"] = f"a red fox number {i}"
    for i in range(n_gallery // 2, n_gallery):
        expected[f"img/g{i}.jpg"] = f"ein Fuchs Nummer {i} im Wald"
    expected["img/logo.png"] = "Site logo"
    return {
        "expected": expected,
        "missing": {"img/late.jpg": "a late fox"},
        "pages": ["index.html", "gallery/one.html", "gallery/two.html", "gallery/latin.html"],
    }


def _http_headers(ctype: str, length: int) -> object:
    from warcio.statusandheaders import StatusAndHeaders

    return StatusAndHeaders(
        "200 OK", [("Content-Type", ctype), ("Content-Length", str(length))], protocol="HTTP/1.1"
    )


def write_warc(site: Path, pages: list[str], out: Path) -> None:
    from warcio.warcwriter import WARCWriter

    with out.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for rel in pages:
            body = (site / rel).read_bytes()
            charset = "windows-1252" if "latin" in rel else "utf-8"
            ctype = f"text/html; charset={charset}"
            rec = writer.create_warc_record(
                BASE + rel,
                "response",
                payload=io.BytesIO(body),
                http_headers=_http_headers(ctype, len(body)),
            )
            writer.write_record(rec)


def wat_links(site: Path, rel: str) -> list[dict[str, str]]:
    """What Common Crawl puts in HTML-Metadata.Links for the <img> tags of a page."""
    from tasks.crawl.htmlimg import _Collector, decode_html

    c = _Collector()
    c.feed(decode_html((site / rel).read_bytes()))
    links = []
    for a in c.imgs:
        link = {"path": "IMG@/src", "url": a["src"]}
        for k in ("alt", "title", "data-image-title"):
            if a.get(k):
                link[k] = a[k]
        links.append(link)
    links += [{"path": "A@/href", "url": h} for h in c.hrefs]
    return links


def wat_doc(url: str, links: list[dict[str, str]]) -> dict[str, object]:
    return {
        "Envelope": {
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": url},
            "Payload-Metadata": {
                "HTTP-Response-Metadata": {"HTML-Metadata": {"Head": {}, "Links": links}}
            },
        }
    }


def write_wat(
    site: Path, pages: list[str], out: Path, extra_raw: list[bytes] | None = None
) -> None:
    from warcio.warcwriter import WARCWriter

    with out.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        payloads = [json.dumps(wat_doc(BASE + rel, wat_links(site, rel))).encode() for rel in pages]
        for i, payload in enumerate(payloads + (extra_raw or [])):
            rec = writer.create_warc_record(
                f"{BASE}meta{i}",
                "metadata",
                payload=io.BytesIO(payload),
                warc_content_type="application/json",
            )
            writer.write_record(rec)


def build_sample(root: Path, n_gallery: int = 12) -> dict[str, object]:
    """data/sample-like folder: site/, archives/{site.warc.gz, site.wat.gz, index.json}."""
    info = build_site(root / "site", n_gallery)
    arch = root / "archives"
    arch.mkdir()
    pages = [p for p in info["pages"]]  # type: ignore[union-attr]
    write_warc(root / "site", pages, arch / "site.warc.gz")
    write_wat(root / "site", pages, arch / "site.wat.gz")
    (arch / "index.json").write_text(
        json.dumps({"base_url": BASE, "warc": ["site.warc.gz"], "wat": ["site.wat.gz"]})
    )
    return info
