"""WAT extraction: Common Crawl's metadata JSON already lists each page's <img> links and alts.

Per core this is the hot loop of a Common Crawl run (cc2dataset's whole job), so it avoids the
generic machinery where it costs and the shape of a WAT file allows it:

- records are cut straight out of the inflated stream (one inflater per gzip member, the
  WARC header parsed for WARC-Type and Content-Length only) instead of going through warcio's
  general record loader; truncated members and records are still counted, never guessed at;
- the inflater is zlib-ng's when the `zlib-ng` package is installed (the same bytes, about 1.3x
  faster than zlib here), else the standard library's; it is fed INFLATE_PIECE compressed bytes
  at a time: a WAT file is one gzip member per record, and each member's end hands the rest of
  the input back as a new bytes object (`unused_data`), so feeding 1 MiB at once copied about
  half a MiB per record;
- each JSON document is parsed with orjson; what orjson refuses is handed to `json`, so a
  document is accepted, and a `bad_json` message worded, exactly as before. Every metadata
  record is parsed, also those without an image link: the page count and the bad_json count
  need it, and those records cost 2% of the CPU (measured on the sample's WAT files);
- image links are resolved by string operations where urljoin would only concatenate
  (htmlimg.resolve_image_url; its branch for plain relative and root-relative paths, most of a
  page's links, written out in the link loop), texts cleaned only when they need it and each
  ref's text list made in one go;
- per record, the WARC header's two fields come from a fast path that finds each name once
  (the line-by-line parse otherwise); a plain local path is opened with `open`, not fsspec;
  ImageRef has __slots__ (made faster, held smaller). The second round of these (issue 17's
  margin) cut the CPU of the benchmark's loop by 8-9% (valgrind: 5.7% fewer instructions)
  with the same refs on the demo's WAT files (tests/crawl/test_extract_wat_pinned.py, slow,
  WAT_TEST_FILES). What is left is mostly orjson, zlib-ng and the cyclic GC's passes over
  the refs kept by the caller, once collection resumes (two GC objects per ref);
- languages: `extract_wat(uri)` detects the language of each ref's first text after the file
  is read, once per distinct text, in one batch (language.detect_languages). The crawl calls
  `extract_wat(uri, languages=False)`: its refs carry language.LANGUAGE_LATER and the plan's
  partition reduce detects them once per distinct text after the cross-file merge
  (language.fill_languages), with the same result in the plan.

The refs (url, texts, page_url, language, source), page and record counts are those of the
straightforward warcio + json + urljoin version (tests/crawl/wat_reference.py, compared in
tests/crawl/test_extract_wat_pinned.py).
"""

from __future__ import annotations

import gc
import json
import zlib
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import orjson

from tasks.crawl.archive import ExtractResult
from tasks.crawl.htmlimg import (
    _not_plain,
    _up_directory,
    absolute_url,
    page_prefixes,
    resolve_image_url,
)
from tasks.crawl.language import LANGUAGE_LATER, detect_languages
from tasks.crawl.records import ImageRef


def _fast_zlib() -> ModuleType:
    """zlib-ng's zlib-compatible module: the same inflate, faster; zlib when it is absent
    (requirements/extra.txt installs it)."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:  # pragma: no cover - depends on the environment
        return zlib
    return zlib_ng


_inflate_module: ModuleType = _fast_zlib()

IMG_PATHS = ("IMG@/src", "IMG@/data-src")  # WAT link paths that are images
CHUNK = 1 << 20  # compressed bytes read at a time
INFLATE_PIECE = 16 << 10  # compressed bytes handed to the inflater at a time
_GZIP_MAGIC = b"\x1f\x8b"


class _TruncatedGzip(EOFError):
    """The file ended inside a gzip member."""


# what a broken gzip stream raises, with either inflater
_GZIP_ERRORS: tuple[type[Exception], ...] = (_TruncatedGzip, zlib.error, _inflate_module.error)


def _pieces(fh: Any, first: bytes) -> Iterator[bytes]:
    """The file's compressed bytes, `first` (already read) included, INFLATE_PIECE at a time."""
    data = first
    while data:
        view = memoryview(data)
        for at in range(0, len(data), INFLATE_PIECE):
            yield view[at : at + INFLATE_PIECE].tobytes()
        data = fh.read(CHUNK)


def _inflated(fh: Any, module: Any = None) -> Iterator[bytes]:
    """The file's bytes, inflated member by member when it is gzip (as WAT files are).

    `module` is the zlib-compatible inflater (zlib-ng's when installed; tests pass zlib to
    check both give the same)."""
    module = module or _inflate_module
    data = fh.read(CHUNK)
    if not data.startswith(_GZIP_MAGIC):
        while data:
            yield data
            data = fh.read(CHUNK)
        return
    pieces = _pieces(fh, data)
    data = b""
    inflater = module.decompressobj(31)
    fed = False  # the current member has received bytes
    while True:
        if not data:
            data = next(pieces, b"")
            if not data:
                if fed and not inflater.eof:
                    raise _TruncatedGzip("the file ends inside a gzip member")
                return
        out = inflater.decompress(data)
        fed = True
        if out:
            yield out
        if inflater.eof:
            data = inflater.unused_data
            inflater, fed = module.decompressobj(31), False
        else:
            data = b""


def _length(value: bytes) -> int | None:
    """A Content-Length value as a byte count; None when it is not a non-negative integer."""
    try:
        length = int(value)
    except ValueError:
        return None
    return length if length >= 0 else None


def _header_fields(header: bytes) -> tuple[bytes, int | None]:
    """(WARC-Type, Content-Length) of a WARC header block; Content-Length None when unusable.

    A header line counts when its name (before the first colon), stripped and lower-cased, is
    the field's; the last such line wins. The fast path, taken for the headers Common Crawl
    writes, finds each name once in the lower-cased block, at a line start right before its
    colon: then no other line can hold it (any such line contains the name) and that line is
    the answer. Anything else takes the line-by-line parse."""
    lowered = header.lower()
    at_type = lowered.find(b"\r\nwarc-type:")
    at_length = lowered.find(b"\r\ncontent-length:")
    if (
        at_type >= 0
        and at_length >= 0
        and lowered.count(b"warc-type") == 1
        and lowered.count(b"content-length") == 1
    ):
        start = at_type + 12  # len(b"\r\nwarc-type:")
        end = header.find(b"\r\n", start)
        rec_type = header[start : end if end >= 0 else len(header)].strip()
        start = at_length + 17  # len(b"\r\ncontent-length:")
        end = header.find(b"\r\n", start)
        return rec_type, _length(header[start : end if end >= 0 else len(header)].strip())
    rec_type, length = b"", None
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"warc-type":
            rec_type = value.strip()
        elif name == b"content-length":
            length = _length(value.strip())
    return rec_type, length


def _header_value(header: bytes, wanted: bytes) -> str:
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == wanted:
            return value.strip().decode("utf-8", "replace")
    return ""


def _open(uri: str) -> Any:
    """The file for reading bytes: a plain local path (no protocol, chain or `~`) with `open`,
    which reads the same bytes as fsspec's local opener without its set-up (a few tenths of a
    millisecond per file, about 1% of a sample WAT file's extraction); anything else with fsspec."""
    if "://" not in uri and "::" not in uri and not uri.startswith("~"):
        return open(uri, "rb")  # noqa: SIM115 - closed by the caller's `with`
    import fsspec

    return fsspec.open(uri, "rb").open()


def iter_wat_records(
    uri: str, result: ExtractResult, module: Any = None
) -> Iterator[tuple[bytes, bytes, bytes]]:
    """(WARC-Type, header block, content) of every record; problems are counted on `result`.

    A missing file is `unreadable_file`; bytes that are not a WARC record `bad_record`; a file
    cut inside a gzip member `bad_gzip`; a record shorter than its Content-Length
    `truncated_record`. Each ends the file; the records before it are kept.
    """
    try:
        fh = _open(uri)
    except (OSError, ValueError) as exc:
        result.note("unreadable_file", f"{type(exc).__name__}: {exc}")
        return
    with fh:
        chunks = _inflated(fh, module)
        buf, pos, done = b"", 0, False
        try:
            while True:
                if buf.startswith(b"\r\n\r\n", pos):  # the usual end of a record, at once
                    pos += 4
                while buf.startswith(b"\r\n", pos) or buf.startswith(b"\n", pos):
                    pos += 2 if buf.startswith(b"\r\n", pos) else 1
                end = buf.find(b"\r\n\r\n", pos)
                stop = -1
                if end >= 0:
                    header = buf[pos:end]
                    if not header.startswith(b"WARC/"):
                        result.note("bad_record", f"record {result.records + 1}: not a WARC record")
                        return
                    rec_type, length = _header_fields(header)
                    if length is None:
                        result.note(
                            "bad_record",
                            f"record {result.records + 1}: no usable Content-Length",
                        )
                        return
                    stop = end + 4 + length
                if 0 <= stop <= len(buf):
                    result.records += 1
                    yield rec_type, header, buf[end + 4 : stop]
                    pos = stop
                    continue
                if done:
                    if stop >= 0:
                        result.records += 1
                        result.note(
                            "truncated_record",
                            f"record {result.records}: {stop - len(buf)} declared bytes missing",
                        )
                    elif buf[pos:].strip():
                        if not buf.startswith(b"WARC/", pos) and len(buf) - pos >= 5:
                            result.note(
                                "bad_record", f"record {result.records + 1}: not a WARC record"
                            )
                        else:
                            result.note(
                                "truncated_record",
                                f"record {result.records + 1}: the file ends in its header",
                            )
                    return
                chunk = next(chunks, None)
                if chunk is None:
                    done = True
                else:
                    buf, pos = buf[pos:] + chunk, 0
        except _GZIP_ERRORS as exc:
            result.note("bad_gzip", f"after {result.records} records: {type(exc).__name__}: {exc}")
        except OSError as exc:
            result.note(
                "bad_record", f"after {result.records} records: {type(exc).__name__}: {exc}"
            )


def _parse(raw: bytes, header: bytes, result: ExtractResult) -> dict[str, Any] | None:
    """The JSON document; orjson first, `json` for what orjson refuses (and for its message)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            uri = _header_value(header, b"warc-target-uri") or "?"
            result.note("bad_json", f"record {result.records} ({uri}): {exc}")
            return None
    if not isinstance(doc, dict):
        result.note("bad_json", f"record {result.records}: top level is {type(doc).__name__}")
        return None
    return doc


def _image_refs(doc: dict[str, Any], language: str = "") -> tuple[str, list[ImageRef]] | None:
    """(page URL, image refs) of one WAT document; None if it is not a response.

    Refs with a text get `language` ("" = set later by _set_languages, LANGUAGE_LATER = by the
    plan's reduce); refs without one get "". The loop is the per-link hot path: it skips
    non-image links first, and does what urljoin and records.clean_text would do only where
    they would change something (texts below). Links are resolved as
    htmlimg.resolve_image_url resolves them; its branch for the plain relative and
    root-relative paths that pages hold most is written out here (a function call per link
    costs as much as the branch), with the page's `../` runs looked up once per page; every
    other link calls it (tests/crawl/test_extract_wat_pinned.py compares both on fuzzed links)."""
    envelope = doc.get("Envelope") or {}
    header = envelope.get("WARC-Header-Metadata") or {}
    if header.get("WARC-Type") != "response":
        return None
    page_url = header.get("WARC-Target-URI") or ""
    html_meta = (
        envelope.get("Payload-Metadata", {})
        .get("HTTP-Response-Metadata", {})
        .get("HTML-Metadata", {})
    )
    base = (html_meta.get("Head") or {}).get("Base")
    base_url = (absolute_url(base, page_url) if base else None) or page_url
    links = html_meta.get("Links") or ()
    prefixes = page_prefixes(base_url)
    # resolve_image_url's string branch needs a plain page URL (its scheme is then non-empty)
    origin, directory = (prefixes[1], prefixes[2]) if prefixes and prefixes[0] else ("", "")
    ups: dict[str, str | None] = {}  # leading `../` / `./` run -> the directory it leads to
    refs: list[ImageRef] = []
    add, resolve, make, not_plain = refs.append, resolve_image_url, ImageRef, _not_plain
    for link in links:
        try:  # of the JSON values only a dict (an object) has .get
            path = link.get("path")
        except AttributeError:
            continue
        if path != "IMG@/src" and path != "IMG@/data-src":  # IMG_PATHS
            continue
        src = link.get("url")
        if type(src) is not str:
            src = str(src or "")
        url: str | None = None
        if directory and src and src[-1] != "?" and "//" not in src and not_plain(src) is None:
            first = src[0]  # resolve_image_url's first branch, as it is there
            if first == "/":
                if "/." not in src:
                    url = origin + src
            elif first != ".":
                if first != "?" and "/." not in src:
                    url = directory + src
            else:
                rest = src.lstrip("./")
                if (not rest or rest[0] != "?") and "/." not in rest:
                    lead = src[: len(src) - len(rest)]
                    try:
                        up = ups[lead]
                    except KeyError:
                        up = ups[lead] = _up_directory(directory, origin, lead)
                    if up is not None:
                        url = up + rest
        if url is None:
            url = resolve(src, base_url, prefixes)
            if not url:
                continue
        # TEXT_ATTRS (alt, title, data-image-title) cleaned (records.clean_text), distinct, in
        # order; clean_text is skipped for a printable text without double, leading or
        # trailing spaces (any other whitespace character is not printable)
        alt, title, dit = link.get("alt"), link.get("title"), link.get("data-image-title")
        if not dit:  # the common links: an alt and a title at most; the list made in one go
            if alt and isinstance(alt, str):
                if not (alt.isprintable() and "  " not in alt and alt[0] != " " != alt[-1]):
                    alt = " ".join(alt.split())
            else:
                alt = ""
            if title and isinstance(title, str):
                if not (title.isprintable() and "  " not in title and title[0] != " " != title[-1]):
                    title = " ".join(title.split())
                if title and title != alt:
                    add(make(url, [alt, title] if alt else [title], page_url, language, "wat"))
                    continue
            if alt:
                add(make(url, [alt], page_url, language, "wat"))
            else:
                add(make(url, [], page_url, "", "wat"))
            continue
        texts: list[str] = []
        for value in (alt, title, dit):
            if value and isinstance(value, str):
                if not (value.isprintable() and "  " not in value and value[0] != " " != value[-1]):
                    value = " ".join(value.split())
                    if not value:
                        continue
                if value not in texts:
                    texts.append(value)
        add(make(url, texts, page_url, language if texts else "", "wat"))
    return page_url, refs


def _set_languages(refs: list[ImageRef]) -> None:
    """Each ref's language: that of its first text, detected once per distinct text."""
    texts = list(dict.fromkeys(r.texts[0] for r in refs if r.texts))
    found = dict(zip(texts, detect_languages(texts), strict=True))
    for ref in refs:
        if ref.texts:
            ref.language = found[ref.texts[0]]


def refs_from_wat_json(doc: dict[str, Any]) -> tuple[str, list[ImageRef]] | None:
    """(page URL, image refs) of one WAT JSON document; None when it is not an HTML response."""
    found = _image_refs(doc)
    if found is not None:
        _set_languages(found[1])
    return found


def extract_wat(uri: str, languages: bool = True) -> ExtractResult:
    """Every image ref of one WAT file (local path or fsspec URL, gzip or not).

    languages=False leaves the language of every ref with a text as LANGUAGE_LATER: the crawl's
    extraction tasks do, and the plan's partition reduce detects it once per distinct text
    (language.fill_languages), with the same result in the plan.

    The cyclic garbage collector is paused while the file is read (and restored after, also on
    an error): every parsed document is a tree that reference counting frees, and the refs kept
    hold no cycle, but each of the many dicts orjson makes counts towards a collection that
    rescans every ref kept so far: 8-15% of the CPU on the sample's WAT files."""
    result = ExtractResult(uri=uri)
    pending = "" if languages else LANGUAGE_LATER
    refs = result.refs
    collecting = gc.isenabled()
    gc.disable()
    try:
        for rec_type, header, raw in iter_wat_records(uri, result):
            if rec_type != b"metadata":
                continue
            doc = _parse(raw, header, result)
            if doc is None:
                continue
            try:
                found = _image_refs(doc, pending)
            except Exception as exc:  # one odd document must not lose the file
                result.note("bad_record", f"record {result.records}: {type(exc).__name__}: {exc}")
                continue
            if found is not None:
                result.pages += 1
                refs.extend(found[1])
    finally:
        if collecting:
            gc.enable()
    if languages:
        _set_languages(refs)
    return result
