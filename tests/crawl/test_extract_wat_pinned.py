"""The fast WAT extractor gives exactly what the pre-issue-17 one gave (tests/crawl/wat_reference.py).

The fixture WAT holds the cases a fast path could get wrong: relative, protocol-relative and
`<base>`-resolved links, fragments, empty queries and params, upper-case schemes, control
characters, non-ASCII hosts, credentials, junk schemes, texts that repeat or are too short for
a language, non-string alts, request / warcinfo records, bad JSON, and pages without images.
"""

from __future__ import annotations

import glob
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from tasks.crawl.archive import ExtractResult
from tasks.crawl.extract_wat import extract_wat
from tasks.crawl.htmlimg import absolute_url, image_url

from .sitegen import build_sample
from .wat_reference import absolute_url as reference_absolute_url
from .wat_reference import reference_extract_wat

PAGE = "http://h.test/dir/page.html"
SRCS = [
    "http://h.test/a.jpg",
    "https://cdn.test/b.png?w=200&h=100",
    "c.jpg",
    "../up/d.jpg",
    "/root/e.jpg",
    "//proto.test/f.jpg",
    "http://h.test/g.jpg#frag",
    "http://h.test/h.jpg?",
    "http://h.test/i.jpg;",
    "http://h.test/j;p=1/k.jpg",
    "HTTP://H.TEST/UPPER.JPG",
    "  http://h.test/spaced.jpg  ",
    "http://h.test/tab\tnew\nline.jpg",
    "http://bücher.test/ü.jpg",
    "http://h.test/caf%C3%A9.jpg",
    "http://user:pw@h.test/cred.jpg",
    "http://h.test:8080/port.jpg",
    "http://[::1]/v6.jpg",
    "http://[bad/v6.jpg",
    "http:///nohost.jpg",
    "http://h.test",
    "http://h.test?q=1",
    "https:relative.jpg",
    "data:image/png;base64,AAAA",
    "javascript:void(0)",
    "mailto:x@h.test",
    "#top",
    "ftp://h.test/x.jpg",
    "",
    "http://h.test/dup.jpg",
    "http://h.test/dup.jpg",
]
TEXTS: list[dict[str, Any]] = [
    {"alt": "a red fox in the snow"},
    {"alt": "ein roter Fuchs im Schnee", "title": "Fuchs"},
    {"alt": "  many   spaces\n here  ", "title": "many spaces here"},
    {"alt": "ab"},
    {"alt": "", "title": "le renard roux dans la neige", "data-image-title": "renard"},
    {"alt": 42, "title": "non-string alt"},
    {},
    {"alt": "a red fox in the snow"},
    {"alt": "\u00a0non-breaking\u00a0spaces ", "title": " leading space"},
    {"alt": "tab\tand\u2028line separator", "data-image-title": "Ünïcödé ☃ text"},
]


def _links(seed: int) -> list[Any]:
    rng = random.Random(seed)
    links: list[Any] = []
    for i, src in enumerate(SRCS):
        link: dict[str, Any] = {"path": "IMG@/src" if i % 5 else "IMG@/data-src", "url": src}
        link.update(TEXTS[rng.randrange(len(TEXTS))])
        links.append(link)
        links.append({"path": "A@/href", "url": src, "text": "a link"})
    links += ["not a dict", {"path": "IMG@/src"}, {"path": "IMG@/src", "url": None, "alt": "x"}]
    return links


def _doc(url: str, links: list[Any], base: str | None = None, kind: str = "response") -> bytes:
    head = {"Base": base} if base is not None else {}
    return json.dumps(
        {
            "Envelope": {
                "WARC-Header-Metadata": {"WARC-Type": kind, "WARC-Target-URI": url},
                "Payload-Metadata": {
                    "HTTP-Response-Metadata": {"HTML-Metadata": {"Head": head, "Links": links}}
                },
            }
        },
        separators=(",", ":") if len(url) % 2 else (", ", ": "),
    ).encode()


def write_records(out: Path, payloads: list[tuple[str, bytes]], gzip: bool = True) -> None:
    """A WAT-shaped WARC: one record per (WARC-Type, payload), the way write_wat makes them."""
    from warcio.warcwriter import WARCWriter

    with out.open("wb") as fh:
        writer = WARCWriter(fh, gzip=gzip)
        for i, (rec_type, payload) in enumerate(payloads):
            rec = writer.create_warc_record(
                f"http://h.test/meta{i}",
                rec_type,
                payload=io.BytesIO(payload),
                warc_content_type="application/json",
            )
            writer.write_record(rec)


def tricky_payloads() -> list[tuple[str, bytes]]:
    return [
        ("warcinfo", b"software: test\r\n"),
        ("metadata", _doc(PAGE, _links(1))),
        ("metadata", _doc(PAGE, _links(2), kind="request")),
        ("metadata", _doc("https://s.test/p/q.html", _links(3))),  # http links from https
        ("metadata", _doc("http://h.test/x/", _links(4), base="../base/")),
        ("metadata", _doc("http://h.test/y", _links(5), base="http://cdn.test/s/")),
        ("metadata", _doc("http://h.test/z", _links(6), base="javascript:junk")),
        ("metadata", _doc("http://h.test/none", [{"path": "A@/href", "url": "x"}])),
        ("metadata", b"{not json"),
        ("metadata", b"[1, 2]"),
        ("metadata", b'{"Envelope": null}'),
        ("metadata", b'{"Envelope": {"WARC-Header-Metadata": {"WARC-Type": "response"}}}'),
        ("resource", _doc("http://h.test/resource", _links(7))),
        ("metadata", _doc("http://h.test/last", _links(8))),
    ]


def _rows(res: ExtractResult) -> list[tuple[str, tuple[str, ...], str, str, str]]:
    return [(r.url, tuple(r.texts), r.page_url, r.language, r.source) for r in res.refs]


def assert_same(res: ExtractResult, ref: ExtractResult) -> None:
    assert _rows(res) == _rows(ref)
    assert (res.records, res.pages, dict(res.errors)) == (ref.records, ref.pages, dict(ref.errors))


@pytest.mark.parametrize("gzip", [True, False])
def test_tricky_wat_gives_the_reference_refs(tmp_path: Path, gzip: bool) -> None:
    path = tmp_path / ("t.wat.gz" if gzip else "t.wat")
    write_records(path, tricky_payloads(), gzip=gzip)
    res, ref = extract_wat(str(path)), reference_extract_wat(str(path))
    assert len(ref.refs) > 100 and {r.language for r in ref.refs} >= {"", "en", "de", "fr"}
    assert ref.errors["bad_json"] == 2 and ref.pages == 8
    assert_same(res, ref)


def test_sample_site_wat_gives_the_reference_refs(tmp_path: Path) -> None:
    build_sample(tmp_path, n_gallery=6)
    path = str(tmp_path / "archives/site.wat.gz")
    res, ref = extract_wat(path), reference_extract_wat(path)
    assert ref.refs
    assert_same(res, ref)


def test_cut_and_broken_files_fail_the_same_way(tmp_path: Path) -> None:
    whole = tmp_path / "t.wat.gz"
    write_records(whole, tricky_payloads())
    data = whole.read_bytes()
    for frac in [i / 20 for i in range(1, 20)]:
        cut = tmp_path / f"cut{frac}.wat.gz"
        cut.write_bytes(data[: int(len(data) * frac)])
        res, ref = extract_wat(str(cut)), reference_extract_wat(str(cut))
        assert _rows(res) == _rows(ref)
        assert res.errors["truncated_record"] + res.errors["bad_gzip"] == 1, res.errors
        assert res.pages == ref.pages and str(cut) in res.error_details[-1]
    plain = tmp_path / "t.wat"
    write_records(plain, tricky_payloads(), gzip=False)
    raw = plain.read_bytes()
    short = tmp_path / "short.wat"
    short.write_bytes(raw[: len(raw) - 300])  # the last record lacks bytes its length declared
    res, ref = extract_wat(str(short)), reference_extract_wat(str(short))
    assert _rows(res) == _rows(ref) and res.errors["truncated_record"] == 1
    junk = tmp_path / "junk.wat"
    junk.write_bytes(b"this is not a warc file at all\n" * 10)
    res = extract_wat(str(junk))
    assert sum(res.errors.values()) == 1 and not res.refs and str(junk) in res.error_details[0]


def test_image_url_fast_path_equals_urljoin() -> None:
    """The string fast paths must give absolute_url's answer on every link and page URL."""
    rng = random.Random(0)
    pieces = ["../", "./", "http://", "https://", "HTTP://", "//", "h.test", "a", "b.jpg", "/", "?", "#", ";",
              ":", "@", "[", "]", "..", ".", "%20", " ", "\t", "\n", "ü", "x=1", "&", "\\", "\x00"]  # fmt: skip

    def fuzz(n: int) -> list[str]:
        return ["".join(rng.choice(pieces) for _ in range(rng.randrange(1, 9))) for _ in range(n)]

    bases = [PAGE, "https://s.test/p/", "http://h.test", "http://h.test?q=1", "http://h.test/a//b/c",
             "http://h.test/a/./b/../c", "http://u@h.test:81/d/e?f", "HTTP://h.test/x/y", ""]  # fmt: skip
    bases += ["http://h.test/" + b for b in fuzz(60)] + ["http://" + b for b in fuzz(30)] + fuzz(30)
    refs = SRCS + fuzz(600) + ["http://" + r for r in fuzz(150)] + ["/" + r for r in fuzz(150)]
    for base in bases:
        for ref in refs:
            want = reference_absolute_url(ref, base)
            assert absolute_url(ref, base) == want, (ref, base)
            assert image_url(ref, base) == want, (ref, base)


# --- what the speed work added (issue 17): languages left to the plan, the inflater, gc -------


def test_languages_false_leaves_each_text_ref_pending(tmp_path: Path) -> None:
    """extract_wat(languages=False), what the crawl's extraction tasks run: the same refs, with
    LANGUAGE_LATER where a text awaits the plan's language and "" where there is no text."""
    from tasks.crawl.language import LANGUAGE_LATER

    path = tmp_path / "t.wat.gz"
    write_records(path, tricky_payloads())
    eager, later = extract_wat(str(path)), extract_wat(str(path), languages=False)
    assert [r[:3] for r in _rows(later)] == [r[:3] for r in _rows(eager)]
    assert [r.language for r in later.refs] == [
        LANGUAGE_LATER if r.texts else "" for r in later.refs
    ]
    assert (later.records, later.pages, later.errors) == (eager.records, eager.pages, eager.errors)


def test_zlib_and_zlib_ng_and_any_piece_size_read_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inflater (zlib-ng when installed, zlib otherwise) and the size of the pieces it is fed
    change no ref, count or error, on whole and on cut files."""
    import zlib

    import tasks.crawl.extract_wat as extraction

    whole = tmp_path / "t.wat.gz"
    write_records(whole, tricky_payloads())
    data = whole.read_bytes()
    paths = [whole]
    for frac in (0.13, 0.5, 0.77):
        cut = tmp_path / f"cut{frac}.wat.gz"
        cut.write_bytes(data[: int(len(data) * frac)])
        paths.append(cut)
    want = {p: reference_extract_wat(str(p)) for p in paths}
    # counts as before the pieces (zlib fed a whole read chunk); on a cut file they are ours,
    # not warcio's (the test above compares those by kind)
    monkeypatch.setattr(extraction, "_inflate_module", zlib)
    monkeypatch.setattr(extraction, "INFLATE_PIECE", extraction.CHUNK)
    counts = {}
    for p in paths:
        old = extract_wat(str(p))
        counts[p] = (old.records, old.pages, dict(old.errors))
    assert counts[whole] == (want[whole].records, want[whole].pages, dict(want[whole].errors))
    modules = [zlib]
    try:
        from zlib_ng import zlib_ng

        modules.append(zlib_ng)
    except ImportError:  # pragma: no cover - requirements/extra.txt installs it
        pass
    assert extraction._inflate_module in modules
    for module in modules:
        monkeypatch.setattr(extraction, "_inflate_module", module)
        for piece in (7, 1000, 1 << 20):  # 7 bytes: every gzip header is cut
            monkeypatch.setattr(extraction, "INFLATE_PIECE", piece)
            for p in paths:
                res = extract_wat(str(p))
                assert _rows(res) == _rows(want[p]), (module.__name__, piece, p.name)
                assert (res.records, res.pages, dict(res.errors)) == counts[p]


def test_the_garbage_collector_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """extract_wat pauses the cyclic collector while it reads and restores its state, also
    when reading fails."""
    import gc

    import tasks.crawl.extract_wat as extraction

    path = tmp_path / "t.wat.gz"
    write_records(path, tricky_payloads())
    assert gc.isenabled()
    seen: list[bool] = []
    real = extraction._parse

    def spy(raw: bytes, header: bytes, result: ExtractResult) -> Any:
        seen.append(gc.isenabled())
        return real(raw, header, result)

    monkeypatch.setattr(extraction, "_parse", spy)
    extract_wat(str(path))
    assert seen and not any(seen) and gc.isenabled()

    def boom(raw: bytes, header: bytes, result: ExtractResult) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(extraction, "_parse", boom)
    with pytest.raises(KeyboardInterrupt):
        extract_wat(str(path))
    assert gc.isenabled()
    gc.disable()
    try:
        monkeypatch.setattr(extraction, "_parse", real)
        extract_wat(str(path))
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


# --- the second speed round (issue 17, margin): header fast path, links resolved in the loop --


def _line_by_line_header_fields(header: bytes) -> tuple[bytes, int | None]:
    """The WARC header parse as it was before its fast path: every line, the last one wins."""
    rec_type, length = b"", None
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"warc-type":
            rec_type = value.strip()
        elif name == b"content-length":
            try:
                length = int(value.strip())
            except ValueError:
                length = None
            if length is not None and length < 0:
                length = None
    return rec_type, length


def test_header_fast_path_equals_the_line_by_line_parse() -> None:
    """_header_fields' fast path (each name once, at a line start) must give what the
    line-by-line parse gives on any header: repeated, padded, upper-case or embedded names,
    lone CR / LF, signs, underscores and junk in the length."""
    from tasks.crawl.extract_wat import _header_fields

    rng = random.Random(1)
    pieces = [b"WARC/1.0", b"\r\n", b"WARC-Type", b"warc-type", b" WARC-TYPE ", b"Content-Length",
              b"content-length", b"CONTENT-LENGTH ", b"WARC-Content-Length", b"X-WARC-Type", b":",
              b": ", b"metadata", b"response", b"12", b" 7 ", b"-3", b"+4", b"1_0", b"x", b"\n",
              b"\r", b"\t", b"\xc3\xa9", b"0"]  # fmt: skip
    typical = b"WARC/1.0\r\nWARC-Type: metadata\r\nWARC-Target-URI: http://h.test/\r\n"
    headers = [typical + b"Content-Length: 1281", typical.upper() + b"CONTENT-LENGTH:7"]
    for _ in range(20000):
        junk = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 14)))
        if rng.random() < 0.5:
            junk = typical + junk + b"\r\nContent-Length: " + rng.choice([b"5", b" 9", b"x", b"-1"])
        headers.append(junk)
    fast_taken = 0
    for header in headers:
        want = _line_by_line_header_fields(header)
        assert _header_fields(header) == want, header
        fast_taken += header.lower().count(b"content-length") == 1
    assert _header_fields(headers[0]) == (b"metadata", 1281) and fast_taken > 1000


def test_links_resolved_in_the_loop_equal_the_reference() -> None:
    """_image_refs resolves the common relative links itself (resolve_image_url's branch,
    written out) and caches the page's `../` runs: on fuzzed links, page URLs and <base>s it
    must give the reference's refs (urljoin, clean_text, languages) link for link."""
    from tasks.crawl.extract_wat import refs_from_wat_json

    from .wat_reference import reference_refs

    rng = random.Random(2)
    pieces = ["../", "./", "../../", "/", "a", "b.jpg", "?", "#", ";", ":", "..", ".", "//", "%20",
              " ", "\t", "ü", "x=1", "&", "@", "[", "\\", "http://", "https://", "h.test"]  # fmt: skip
    words = ["fox", "a", " ", "  ", "\n", "\u00a0", "\u2028", "Ü", "", 42, None, "red fox"]

    def fuzz() -> str:
        return "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 7)))

    def text() -> Any:
        return " ".join(str(rng.choice(words)) for _ in range(rng.randrange(0, 4)))

    pages = [PAGE, "https://s.test/p/", "http://h.test", "http://h.test/a//b/c", "http://h.test/a/./b",
             "http://h.test/x/y/z/w.html", "http://h.test/d?q=1", "HTTP://h.test/x/y", ""]  # fmt: skip
    pages += ["http://h.test/" + fuzz() for _ in range(20)]
    compared = 0
    for page in pages:
        for base in (None, "../b/", "http://cdn.test/s/", fuzz()):
            links: list[Any] = []
            for _ in range(40):
                link: dict[str, Any] = {
                    "path": rng.choice(["IMG@/src", "IMG@/data-src", "A@/href"])
                }
                link["url"] = fuzz()
                for key in ("alt", "title", "data-image-title"):
                    if rng.random() < 0.4:
                        link[key] = text() if rng.random() < 0.9 else rng.choice([7, None, ""])
                links.append(link)
            doc = json.loads(_doc(page, links, base=base))
            got, want = refs_from_wat_json(doc), reference_refs(doc)
            assert got is not None and want is not None
            rows = [(r.url, r.texts, r.page_url, r.language, r.source) for r in got[1]]
            assert rows == [(r.url, r.texts, r.page_url, r.language, r.source) for r in want[1]]
            compared += len(rows)
    assert compared > 1000


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("WAT_TEST_FILES"), reason="WAT_TEST_FILES (a glob of WAT files) unset"
)
def test_real_wat_files_give_the_reference_refs() -> None:
    """On real WAT files (WAT_TEST_FILES, a glob: e.g. the demo's data/sample/archives/*.wat.gz,
    which the benchmark reads; not CLIPMILL_*, which tests/conftest.py drops) the fast extractor
    gives the reference's refs and counts, with languages detected per file and left to the
    plan alike."""
    from tasks.crawl.language import LANGUAGE_LATER

    paths = sorted(glob.glob(os.environ["WAT_TEST_FILES"]))
    assert paths, f"WAT_TEST_FILES={os.environ['WAT_TEST_FILES']!r} matches no file"
    for path in paths:
        ref = reference_extract_wat(path)
        assert_same(extract_wat(path), ref)
        later = extract_wat(path, languages=False)
        assert [(u, t, p, LANGUAGE_LATER if t else "", s) for u, t, p, _, s in _rows(ref)] == (
            _rows(later)
        )


def test_local_paths_and_fsspec_urls_read_the_same(tmp_path: Path) -> None:
    """A plain local path is opened with `open`, a URL through fsspec: the same refs, counts
    and errors, also for a missing file and a folder."""
    path = tmp_path / "t.wat.gz"
    write_records(path, tricky_payloads())
    plain, url = extract_wat(str(path)), extract_wat(path.as_uri())
    assert plain.refs and _rows(plain) == _rows(url)
    assert (plain.records, plain.pages, plain.errors) == (url.records, url.pages, url.errors)
    for missing in (tmp_path / "missing.wat.gz", tmp_path):
        a, b = extract_wat(str(missing)), extract_wat(missing.as_uri())
        assert dict(a.errors) == dict(b.errors) == {"unreadable_file": 1}, (a.errors, b.errors)
