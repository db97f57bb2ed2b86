"""The WAT extractor as it was before the per-core speed work (issue 17), kept as the reference.

warcio reads the records, `json` parses each one, every image link goes through `urljoin` and
py3langid classifies its first text one link at a time. Slow and obviously right: the fast
extractor in tasks/crawl/extract_wat.py must give exactly its (url, texts, page_url, language,
source) refs, page and record counts and error classes on the same file
(tests/crawl/test_extract_wat_pinned.py).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

from tasks.crawl.archive import ExtractResult, run_extractor
from tasks.crawl.language import _identifier
from tasks.crawl.records import ImageRef, clean_text

IMG_PATHS = ("IMG@/src", "IMG@/data-src")
TEXT_ATTRS = ("alt", "title", "data-image-title")


def absolute_url(ref: str, base: str) -> str | None:
    """htmlimg.absolute_url as it was: urljoin, drop the fragment, http(s) with a host only."""
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


def reference_language(text: str, min_chars: int = 3) -> str:
    """detect_language as it was: py3langid on one text, "" under `min_chars`."""
    if not text or len(text.strip()) < min_chars:
        return ""
    return str(_identifier().classify(text)[0])


def _links(envelope: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    html_meta = (
        envelope.get("Payload-Metadata", {})
        .get("HTTP-Response-Metadata", {})
        .get("HTML-Metadata", {})
    )
    base = (html_meta.get("Head") or {}).get("Base")
    return list(html_meta.get("Links") or []), base


def reference_refs(doc: dict[str, Any]) -> tuple[str, list[ImageRef]] | None:
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
            ImageRef(url, texts, page_url, reference_language(texts[0]) if texts else "", "wat")
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
    found = reference_refs(doc)
    if found is not None:
        result.pages += 1
        result.refs.extend(found[1])


def reference_extract_wat(uri: str) -> ExtractResult:
    """Every image ref of one WAT file, the pre-issue-17 way."""
    return run_extractor(uri, _per_record)
