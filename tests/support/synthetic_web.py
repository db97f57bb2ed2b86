"""A synthetic web for scale tests without the internet (issue 17 point 7).

- `ImageServer`: a loopback HTTP server (a `http.server` thread) that makes a small image for any
  path under `/img/`, on the fly and deterministic from the path (colour and size from its
  sha256), so millions of URLs need no files on disk.
- `write_url_list`: URL lists of any size in img2dataset's formats (txt, csv, tsv, json, jsonl,
  parquet, each optionally `.gz`), streamed to disk chunk by chunk, never held in memory.
- `write_wat`: gzipped WAT files with the real WAT JSON envelope (WARC `metadata` records whose
  `Envelope.Payload-Metadata.HTTP-Response-Metadata.HTML-Metadata.Links` list the page's
  `IMG@/src` links with their alts), the shape Common Crawl publishes and both our extractor and
  cc2dataset read.
Importable by tests and benchmarks alike (`from tests.support.synthetic_web import ...`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

CHUNK = 100_000  # rows written per chunk
WORDS = (
    "red",
    "small",
    "dog",
    "cat",
    "house",
    "tree",
    "blue",
    "car",
    "river",
    "old",
    "city",
    "bird",
)


def image_bytes(path: str) -> bytes:
    """A small JPEG made from `path` alone: the same path always gives the same bytes."""
    from PIL import Image

    digest = hashlib.sha256(path.encode()).digest()
    w, h = 24 + digest[3] % 40, 24 + digest[4] % 40
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (digest[0], digest[1], digest[2])).save(buf, "JPEG", quality=80)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if not path.startswith("/img/"):
            body, status, ctype = b"not found", 404, "text/plain"
        else:
            body, status, ctype = image_bytes(path), 200, "image/jpeg"
        self.server.requests += 1  # type: ignore[attr-defined]
        self.server.image_requests += status == 200  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence per-request logs
        return


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # many shard connections at once: http.server's 5 would refuse them
    daemon_threads = True


class ImageServer:
    """Serves generated images on 127.0.0.1 (an ephemeral port) until `close()`."""

    def __init__(self) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.requests = 0  # type: ignore[attr-defined]
        self.httpd.image_requests = 0  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> int:
        """Every request answered (robots.txt included)."""
        return int(self.httpd.requests)  # type: ignore[attr-defined]

    @property
    def image_requests(self) -> int:
        """Requests answered with an image."""
        return int(self.httpd.image_requests)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> ImageServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def image_url(base: str, i: int) -> str:
    """The i-th synthetic image URL under `base` (distinct per i)."""
    return f"{base}img/{i:010d}.jpg"


def _caption(i: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 5) % len(WORDS)] for k in range(3 + i % 4))


_CAPTIONS = [_caption(i) for i in range(12)]  # _caption repeats with period 12


def caption(i: int) -> str:
    """A deterministic English-looking caption of a few words for image i."""
    return _CAPTIONS[i % 12]


def _rows(base: str, start: int, stop: int, duplicate_every: int) -> Iterator[dict[str, Any]]:
    for i in range(start, stop):
        j = i - 1 if duplicate_every and i % duplicate_every == 0 and i > start else i
        yield {"url": image_url(base, j), "caption": caption(i), "source_id": i}


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "wt", encoding="utf-8", compresslevel=1)
    return path.open("w", encoding="utf-8")


def write_url_list(path: Path, n: int, base: str, start: int = 0, duplicate_every: int = 0) -> int:
    """Write `n` rows (url, caption, source_id) to `path`, format from its name, in chunks.

    `duplicate_every` = k makes every k-th row repeat the previous row's URL with another
    caption (texts to merge). Returns the rows written."""
    name = path.name.lower().removesuffix(".gz")
    fmt = name.rsplit(".", 1)[-1]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = pa.schema(
            [("url", pa.string()), ("caption", pa.string()), ("source_id", pa.int64())]
        )
        with contextlib.ExitStack() as stack:  # .parquet.gz: the whole parquet file gzipped
            gz = path.name.endswith(".gz")
            raw = stack.enter_context(gzip.open(path, "wb", 1) if gz else path.open("wb"))  # noqa: SIM115
            out = stack.enter_context(pq.ParquetWriter(raw, schema))
            for lo in range(start, start + n, CHUNK):
                rows = list(_rows(base, lo, min(lo + CHUNK, start + n), duplicate_every))
                columns = {c: [r[c] for r in rows] for c in schema.names}
                out.write_table(pa.Table.from_pydict(columns, schema=schema))
        return n
    with _open_text(path) as fh:
        if fmt in ("csv", "tsv"):
            sep = "," if fmt == "csv" else "\t"
            fh.write(sep.join(("url", "caption", "source_id")) + "\n")
        if fmt == "json":
            fh.write("[")
        for k, row in enumerate(_rows(base, start, start + n, duplicate_every)):
            if fmt == "txt":
                fh.write(row["url"] + "\n")
            elif fmt in ("csv", "tsv"):
                fh.write(f"{row['url']}{sep}{row['caption']}{sep}{row['source_id']}\n")
            elif fmt == "jsonl":
                fh.write(json.dumps(row) + "\n")
            elif fmt == "json":
                fh.write(("," if k else "") + json.dumps(row))
            else:
                raise ValueError(f"{path}: unknown URL list format {fmt!r}")
        if fmt == "json":
            fh.write("]")
    return n


def wat_envelope(page_url: str, links: list[dict[str, str]]) -> dict[str, Any]:
    """One WAT JSON document of an HTML response, as Common Crawl writes it (the fields read)."""
    return {
        "Container": {"Filename": "synthetic.warc.gz", "Compressed": True},
        "Envelope": {
            "Format": "WARC",
            "WARC-Header-Length": "0",
            "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url},
            "Payload-Metadata": {
                "Actual-Content-Type": "application/http; msgtype=response",
                "HTTP-Response-Metadata": {
                    "Response-Message": {"Status": "200"},
                    "Headers": {"Content-Type": "text/html; charset=UTF-8"},
                    "HTML-Metadata": {
                        "Head": {"Title": "synthetic page"},
                        "Links": links,
                    },
                },
            },
        },
    }


def write_wat(
    path: Path, pages: int, base: str, images_per_page: int = 10, start: int = 0, shared: int = 50
) -> int:
    """A gzipped WAT file of `pages` pages, each linking `images_per_page` images (relative and
    absolute src, alt texts, and `shared` images every page links with its own alt, so URLs
    repeat with several texts). Written record by record. Returns the image links written."""
    from warcio.warcwriter import WARCWriter

    links_written = 0
    with path.open("wb") as fh:
        writer = WARCWriter(fh, gzip=True)
        for p in range(start, start + pages):
            page_url = f"{base}page/{p}.html"
            links: list[dict[str, str]] = []
            for k in range(images_per_page):
                i = p * images_per_page + k
                if shared and k == 0:
                    src = f"/img/s{p % shared:06d}.jpg"  # relative, repeated across pages
                else:
                    src = image_url(base, 10**9 + i)
                links.append({"path": "IMG@/src", "url": src, "alt": caption(i)})
            links.append({"path": "A@/href", "url": f"/page/{p + 1}.html", "text": "next"})
            links_written += images_per_page
            payload = json.dumps(wat_envelope(page_url, links)).encode()
            rec = writer.create_warc_record(
                page_url,
                "metadata",
                payload=io.BytesIO(payload),
                warc_content_type="application/json",
            )
            writer.write_record(rec)
    return links_written
