"""WARC and WAT files: parse back with warcio, carry the pages and their image links."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from warcio.archiveiterator import ArchiveIterator


def _records(path: Path):
    with path.open("rb") as fh:
        it = ArchiveIterator(fh)
        for record in it:
            body = record.content_stream().read()  # before asking the offset, which ends the record
            yield it.get_record_offset(), record, body


def test_warc_holds_every_crawlable_page(small_sample):
    out, params, counts = small_sample
    index = json.loads((out / "archives" / "index.json").read_text())
    assert index["base_url"] == params.base_url and len(index["warc"]) == len(index["wat"]) > 1
    types: Counter = Counter()
    urls = []
    for name in index["warc"]:
        for _, record, body in _records(out / "archives" / name):
            types[record.rec_type] += 1
            if record.rec_type == "response":
                url = record.rec_headers.get_header("WARC-Target-URI")
                urls.append(url)
                assert record.http_headers.get_statuscode() == "200"
                assert body == (out / "site" / url.removeprefix(params.base_url)).read_bytes()
    assert types["request"] == types["response"] == counts["pages"]["archived"] == len(urls)
    assert not [u for u in urls if f"/{params.disallowed_section}/" in u]  # robots.txt respected
    assert any("/gimp/" in u for u in urls) and any("/gallery/" in u for u in urls)


def test_wat_carries_the_image_links(small_sample):
    out, params, _ = small_sample
    index = json.loads((out / "archives" / "index.json").read_text())
    from_wat: Counter = Counter()
    for warc_name, wat_name in zip(index["warc"], index["wat"], strict=True):
        offsets = {
            off: rec.rec_headers.get_header("WARC-Record-ID")
            for off, rec, _ in _records(out / "archives" / warc_name)
        }
        for _, record, body in _records(out / "archives" / wat_name):
            assert record.rec_type in ("warcinfo", "metadata")
            if record.rec_type != "metadata":
                continue
            doc = json.loads(body)
            assert doc["Container"]["Filename"] == warc_name
            assert offsets[int(doc["Container"]["Offset"])] == record.rec_headers.get_header(
                "WARC-Refers-To"
            )
            meta = doc["Envelope"]["Payload-Metadata"].get("HTTP-Response-Metadata")
            if not meta:
                continue
            page = doc["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"].removeprefix(
                params.base_url
            )
            for link in meta["HTML-Metadata"].get("Links", []):
                if link["path"] == "IMG@/src":
                    from_wat[(page, link["url"], link.get("alt"))] += 1
    rows = pq.read_table(out / "metadata" / "site_images.parquet").to_pylist()
    truth = Counter(
        (r["page"], r["src"], r["alt"])
        for r in rows
        if not r["page"].startswith(params.disallowed_section + "/")
    )
    assert from_wat == truth
    assert sum(1 for (_, _, alt) in from_wat if alt) > 100
