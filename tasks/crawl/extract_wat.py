"""WAT extraction: Common Crawl's metadata JSON already lists each page's <img> links and alts."""

from __future__ import annotations

import json
from typing import Any

from tasks.crawl.archive import ExtractResult, run_extractor
from tasks.crawl.htmlimg import TEXT_ATTRS, absolute_url
from tasks.crawl.language import detect_language
from tasks.crawl.records import ImageRef, clean_text

IMG_PATHS = ("IMG@/src", "IMG@/data-src")  # WAT link paths that are images


def _links(envelope: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    html_meta = (
        envelope.get("Payload-Metadata", {})
        .get("HTTP-Response-Metadata", {})
        .get("HTML-Metadata", {})
    )
    base = (html_meta.get("Head") or {}).get("Base")
    return list(html_meta.get("Links") or []), base


def refs_from_wat_json(doc: dict[str, Any]) -> tuple[str, list[ImageRef]] | None:
    """(page URL, image refs) of one WAT JSON document; None when it is not an HTML response."""
    envelope = doc.get("Envelope") or {}
    header = envelope.get("WARC-Header-Metadata") or {}
    if header.get("WARC-Type") != "response":
        return None
    page_url = header.get("WARC-Target-URI") or ""
    links, base = _links(envelope)
    base_url = (absolute_url(base, page_url) if base else None) or page_url
    refs: list[ImageRef] = []
    for link in links:
        if not isinstance(link, dict) or link.get("path") not in IMG_PATHS:
            continue
        url = absolute_url(str(link.get("url") or ""), base_url)
        if not url:
            continue
        texts: list[str] = []
        for key in TEXT_ATTRS:
            text = clean_text(link.get(key) if isinstance(link.get(key), str) else None)
            if text and text not in texts:
                texts.append(text)
        refs.append(
            ImageRef(url, texts, page_url, detect_language(texts[0]) if texts else "", "wat")
        )
    return page_url, refs


def _per_record(record: Any, result: ExtractResult) -> None:
    if record.rec_type != "metadata":
        return
    raw = record.content_stream().read()
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        uri = record.rec_headers.get_header("WARC-Target-URI") or "?"
        result.note("bad_json", f"record {result.records} ({uri}): {exc}")
        return
    if not isinstance(doc, dict):
        result.note("bad_json", f"record {result.records}: top level is {type(doc).__name__}")
        return
    found = refs_from_wat_json(doc)
    if found is not None:
        result.pages += 1
        result.refs.extend(found[1])


def extract_wat(uri: str) -> ExtractResult:
    """Every image ref of one WAT file (local path or fsspec URL, gzip or not)."""
    return run_extractor(uri, _per_record)
