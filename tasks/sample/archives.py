"""WARC and WAT files of the site in Common Crawl's formats (warcio), byte-for-byte reproducible.

WARC: a warcinfo record, then per page a `request` and a `response` record (HTTP headers
included), gzip per record. WAT: a warcinfo record, then per WARC record a `metadata`
record whose JSON envelope is the one Common Crawl writes, with
`Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links` listing every link
(`IMG@/src` with `alt`/`title`, `A@/href` with `text`, ...), URLs exactly as written.
Record ids are UUIDs derived from the seed and the record, dates count up from `warc_date`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tasks.sample.htmlmeta import html_metadata

NAMESPACE = uuid.UUID("6f1d7c1e-55a4-4f0e-9d55-3c1c7e0d2a11")
USER_AGENT = "CCBot/2.0 (https://commoncrawl.org/faq/) clipmill-sample"
PREFIX = "clipmill-sample"


def archive_names(index: int) -> tuple[str, str]:
    """(warc, wat) file names, Common Crawl style: the WAT name extends the WARC's."""
    return f"{PREFIX}-{index:05d}.warc.gz", f"{PREFIX}-{index:05d}.warc.wat.gz"


def _record_id(seed: int, *parts: object) -> str:
    return f"<urn:uuid:{uuid.uuid5(NAMESPACE, '|'.join(str(p) for p in (seed, *parts)))}>"


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _content_type(path: str) -> str:
    return "text/html; charset=utf-8" if path.endswith(".html") else "application/octet-stream"


def write_warc(
    pages: list[tuple[str, bytes]], name: str, base_url: str, start: datetime, seed: int
) -> bytes:
    """One WARC file (bytes) holding a request+response pair per page."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True, warc_version="1.0")
    info = (
        f"software: clipmill sample stage (warcio)\r\nformat: WARC File Format 1.0\r\n"
        f"isPartOf: {PREFIX}\r\noperator: clipmill\r\nrobots: checked via robots.txt\r\n"
        f"description: the clipmill sample web, {len(pages)} pages\r\n"
    ).encode()
    warcinfo_id = _record_id(seed, name, "warcinfo")
    _write_warcinfo(writer, info, start, warcinfo_id, name)
    host = base_url.split("://", 1)[1].rstrip("/")
    for i, (path, body) in enumerate(pages):
        url, when = base_url + path, start + timedelta(seconds=i)
        resp_id, req_id = _record_id(seed, url, "response"), _record_id(seed, url, "request")
        common = {
            "WARC-Date": _iso(when),
            "WARC-Warcinfo-ID": warcinfo_id,
            "WARC-IP-Address": "127.0.0.1",
        }
        req_headers = StatusAndHeaders(
            f"GET /{path} HTTP/1.1",
            [
                ("Host", host),
                ("User-Agent", USER_AGENT),
                ("Accept", "text/html,*/*;q=0.8"),
                ("Accept-Encoding", "identity"),
            ],
            is_http_request=True,
        )
        resp_headers = StatusAndHeaders(
            "200 OK",
            [
                ("Date", format_datetime(when, usegmt=True)),
                ("Server", "clipmill-sample/1.0"),
                ("Content-Type", _content_type(path)),
                ("Content-Length", str(len(body))),
            ],
            protocol="HTTP/1.1",
        )
        request = writer.create_warc_record(
            url,
            "request",
            http_headers=req_headers,
            warc_headers_dict={**common, "WARC-Record-ID": req_id, "WARC-Concurrent-To": resp_id},
        )
        response = writer.create_warc_record(
            url,
            "response",
            payload=io.BytesIO(body),
            length=len(body),
            http_headers=resp_headers,
            warc_headers_dict={
                **common,
                "WARC-Record-ID": resp_id,
                "WARC-Concurrent-To": req_id,
                "WARC-Identified-Payload-Type": "text/html",
            },
        )
        writer.write_record(request)
        writer.write_record(response)
    return buf.getvalue()


def _headers(sh: StatusAndHeaders) -> dict[str, str]:
    return {k: v for k, v in sh.headers}


def _envelope(record: Any, body: bytes) -> dict[str, Any]:
    """Common Crawl's WAT `Envelope` for one WARC record."""
    rec = record.rec_headers
    rtype = rec.get_header("WARC-Type")
    env: dict[str, Any] = {
        "Format": "WARC",
        "WARC-Header-Length": str(len(rec.to_bytes())),
        "Block-Digest": rec.get_header("WARC-Block-Digest") or "",
        "Actual-Content-Length": rec.get_header("Content-Length"),
        "WARC-Header-Metadata": _headers(rec),
    }
    payload: dict[str, Any] = {"Actual-Content-Type": record.content_type}
    if rtype == "warcinfo":
        fields = dict(line.split(": ", 1) for line in body.decode().splitlines() if ": " in line)
        payload["WARC-Info-Metadata"] = fields
    elif rtype == "request":
        path, version = record.http_headers.statusline.split(" ", 1)
        method: str = record.http_headers.protocol
        payload["HTTP-Request-Metadata"] = {
            "Request-Message": {"Method": method, "Path": path, "Version": version},
            "Headers": _headers(record.http_headers),
            "Headers-Length": str(len(record.http_headers.to_bytes())),
            "Entity-Length": "0",
            "Entity-Trailing-Slop-Length": "0",
        }
    elif rtype == "response":
        status, _, reason = record.http_headers.statusline.partition(" ")
        meta: dict[str, Any] = {
            "Response-Message": {
                "Version": record.http_headers.protocol,
                "Status": status,
                "Reason": reason,
            },
            "Headers": _headers(record.http_headers),
            "Headers-Length": str(len(record.http_headers.to_bytes())),
            "Entity-Length": str(len(body)),
            "Entity-Trailing-Slop-Length": "0",
            "Entity-Digest": "sha1:" + _b32_sha1(body),
        }
        if "html" in (record.http_headers.get_header("Content-Type") or ""):
            meta["HTML-Metadata"] = html_metadata(body.decode("utf-8", errors="replace"))
        payload["HTTP-Response-Metadata"] = meta
    env["Payload-Metadata"] = payload
    return env


def _b32_sha1(data: bytes) -> str:
    return base64.b32encode(hashlib.sha1(data).digest()).decode()


def write_wat(warc: bytes, warc_name: str, wat_name: str, start: datetime, seed: int) -> bytes:
    """The WAT file of a WARC: one metadata record per WARC record, offsets included."""
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=True, warc_version="1.0")
    info = f"software: clipmill sample stage (warcio)\r\nformat: WAT\r\nsource: {warc_name}\r\n".encode()
    _write_warcinfo(writer, info, start, _record_id(seed, wat_name, "warcinfo"), wat_name)
    it = ArchiveIterator(io.BytesIO(warc))
    for record in it:
        body = record.content_stream().read()
        rec = record.rec_headers
        doc = {
            "Container": {
                "Filename": warc_name,
                "Compressed": True,
                "Offset": str(it.get_record_offset()),
            },
            "Envelope": _envelope(record, body),
        }
        data = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        target = rec.get_header("WARC-Target-URI") or warc_name
        writer.write_record(
            writer.create_warc_record(
                target,
                "metadata",
                payload=io.BytesIO(data),
                length=len(data),
                warc_content_type="application/json",
                warc_headers_dict={
                    "WARC-Date": rec.get_header("WARC-Date"),
                    "WARC-Record-ID": _record_id(seed, wat_name, rec.get_header("WARC-Record-ID")),
                    "WARC-Refers-To": rec.get_header("WARC-Record-ID"),
                },
            )
        )
    return buf.getvalue()


def write_archive_pair(
    site_root: str,
    pages: list[str],
    index: int,
    first_page: int,
    base_url: str,
    warc_date: str,
    seed: int,
    out_dir: str,
) -> dict[str, Any]:
    """Write one WARC and its WAT for a slice of pages; the unit of parallel work."""
    start = datetime.strptime(warc_date, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    start += timedelta(seconds=first_page)  # one second per page across all files
    warc_name, wat_name = archive_names(index)
    bodies = [(p, (Path(site_root) / p).read_bytes()) for p in pages]
    warc = write_warc(bodies, warc_name, base_url, start, seed)
    wat = write_wat(warc, warc_name, wat_name, start, seed)
    out = Path(out_dir)
    (out / warc_name).write_bytes(warc)
    (out / wat_name).write_bytes(wat)
    return {"warc": warc_name, "wat": wat_name, "pages": len(pages)}


def _write_warcinfo(writer: Any, info: bytes, when: Any, record_id: str, filename: str) -> None:
    """The leading warcinfo record every WARC and WAT file starts with, as Common Crawl's do."""
    writer.write_record(
        writer.create_warc_record(
            "",
            "warcinfo",
            payload=io.BytesIO(info),
            length=len(info),
            warc_content_type="application/warc-fields",
            warc_headers_dict={
                "WARC-Date": _iso(when),
                "WARC-Record-ID": record_id,
                "WARC-Filename": filename,
            },
        )
    )
