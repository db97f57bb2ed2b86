"""WARC extraction: raw HTML responses parsed for <img> tags, whatever their encoding."""

from __future__ import annotations

from typing import Any

from tasks.crawl.archive import ExtractResult, run_extractor
from tasks.crawl.htmlimg import PageImages, decode_html, parse_page
from tasks.crawl.language import detect_language
from tasks.crawl.records import ImageRef

MAX_HTML_BYTES = 5_000_000  # pages beyond this are cut (Common Crawl truncates at 1 MiB anyway)


def refs_from_page(page: PageImages, page_url: str, source: str) -> list[ImageRef]:
    """Image refs of a parsed page, each with the language of its main text."""
    return [
        ImageRef(url, texts, page_url, detect_language(texts[0]) if texts else "", source)
        for url, texts in page.images
    ]


def refs_from_html(body: bytes, page_url: str, content_type: str, source: str) -> list[ImageRef]:
    """Image refs of one HTML page given as bytes."""
    return refs_from_page(parse_page(decode_html(body, content_type), page_url), page_url, source)


def _per_record(record: Any, result: ExtractResult) -> None:
    if record.rec_type != "response" or record.http_headers is None:
        return
    content_type = record.http_headers.get_header("Content-Type") or ""
    if "html" not in content_type.lower():
        return
    page_url = record.rec_headers.get_header("WARC-Target-URI") or ""
    body = record.content_stream().read(MAX_HTML_BYTES)
    result.pages += 1
    result.refs.extend(refs_from_html(body, page_url, content_type, "warc"))


def extract_warc(uri: str) -> ExtractResult:
    """Every image ref of one WARC file (local path or fsspec URL, gzip or not)."""
    return run_extractor(uri, _per_record)
