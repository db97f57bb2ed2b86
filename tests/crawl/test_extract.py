"""WAT / WARC / URL-list extraction, including garbage archives and odd encodings."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from tasks.crawl.extract_warc import extract_warc
from tasks.crawl.extract_wat import extract_wat
from tasks.crawl.htmlimg import decode_html, parse_page
from tasks.crawl.records import ImageRef, make_uid, merge_refs
from tasks.crawl.urllists import UrlListError, read_url_list

from .sitegen import BASE, build_sample, wat_doc, write_wat


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("ex")
    return root, build_sample(root)


def _pairs(refs: list[ImageRef]) -> set[tuple[str, str]]:
    return {(r.url, r.texts[0]) for r in refs}


def test_wat_and_warc_find_every_image_with_absolute_urls(sample):
    root, info = sample
    wat = extract_wat(str(root / "archives/site.wat.gz"))
    warc = extract_warc(str(root / "archives/site.warc.gz"))
    assert not wat.errors and not warc.errors
    assert wat.pages == warc.pages == 4
    assert _pairs(wat.refs) == _pairs(warc.refs)
    found = {r.url.removeprefix(BASE): r.texts for r in merge_refs(wat.refs)}
    assert set(found) == set(info["expected"]) | set(
        info["missing"]
    )  # relative ../img and /img both resolved
    assert found["img/g0.jpg"] == ["a red fox number 0", "fox 0"]  # alt then title
    assert found["img/logo.png"] == [
        "Site logo",
        "The logo",
        "café crème logo",
    ]  # data-image-title + 2nd page


def test_language_and_uid(sample):
    root, _ = sample
    refs = {r.url: r for r in extract_warc(str(root / "archives/site.warc.gz")).refs}
    assert refs[BASE + "img/g0.jpg"].language == "en"
    assert refs[BASE + "img/g7.jpg"].language == "de"
    assert (
        refs[BASE + "img/g0.jpg"].uid == make_uid(BASE + "img/g0.jpg") and len(make_uid("x")) == 24
    )


def test_odd_encodings_decode():
    body = '<meta charset="shift_jis"><img src="a.png" alt="猫の写真">'.encode("shift_jis")
    assert parse_page(decode_html(body), "http://h.test/").images == [
        ("http://h.test/a.png", ["猫の写真"])
    ]
    latin = '<img src="b.png" alt="garçon">'.encode(
        "cp1252"
    )  # no charset anywhere: utf-8 fails, cp1252 wins
    assert parse_page(decode_html(latin), "http://h.test/d/").images == [
        ("http://h.test/d/b.png", ["garçon"])
    ]
    assert decode_html("é".encode("latin-1"), "text/html; charset=bogus-charset") == "é"


def test_html_edge_cases():
    html = (
        '<base href="http://cdn.test/s/"><img src="x.jpg" alt=" two   words "><img src="data:image/png;base64,AA">'
        '<img src="javascript:alert(1)"><img src="ftp://h/x.jpg"><img alt="no src"><IMG SRC="//o.test/y.gif">'
    )
    page = parse_page(html, "http://h.test/p.html")
    assert page.images == [("http://cdn.test/s/x.jpg", ["two words"]), ("http://o.test/y.gif", [])]


def test_truncated_gzip_keeps_earlier_records(sample):
    root, _ = sample
    data = (root / "archives/site.wat.gz").read_bytes()
    cut = root / "cut.wat.gz"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    res = extract_wat(str(cut))
    assert res.errors["truncated_record"] + res.errors["bad_gzip"] == 1, res.errors
    assert res.pages in range(1, 4) and res.refs  # what was read before the cut is kept
    assert str(cut) in res.error_details[0]


def test_record_with_bad_length(sample, tmp_path):
    root, _ = sample
    raw = gzip.decompress((root / "archives/site.warc.gz").read_bytes())
    first_len = raw.index(b"Content-Length: ")
    end = raw.index(b"\r\n", first_len)
    broken = raw[:first_len] + b"Content-Length: 99999999" + raw[end:]
    path = tmp_path / "badlen.warc"
    path.write_bytes(broken)
    res = extract_warc(str(path))
    assert res.errors["truncated_record"] == 1, res.errors
    assert res.error_details and str(path) in res.error_details[0]


def test_invalid_json_wat_record_is_counted_and_skipped(sample, tmp_path):
    root, info = sample
    out = tmp_path / "bad.wat.gz"
    write_wat(
        root / "site",
        info["pages"],
        out,
        extra_raw=[
            b"{not json",
            b"[1, 2]",
            json.dumps(
                wat_doc(BASE + "z.html", [{"path": "IMG@/src", "url": "z.png", "alt": "zed"}])
            ).encode(),
        ],
    )
    res = extract_wat(str(out))
    assert res.errors["bad_json"] == 2
    assert (BASE + "z.png", "zed") in _pairs(res.refs) and res.pages == 5


def test_garbage_file_and_missing_file(tmp_path):
    junk = tmp_path / "junk.warc.gz"
    junk.write_bytes(b"this is not a warc file at all\n" * 10)
    res = extract_warc(str(junk))
    assert sum(res.errors.values()) == 1 and not res.refs
    missing = extract_wat(str(tmp_path / "nope.wat.gz"))
    assert missing.errors["unreadable_file"] == 1 and "nope.wat.gz" in missing.error_details[0]


def test_merge_dedups_url_text_pairs():
    refs = [
        ImageRef("http://a/1.jpg", ["x"]),
        ImageRef("http://a/1.jpg", ["x", "y"]),
        ImageRef("http://a/2.jpg", []),
    ]
    merged = merge_refs(refs)
    assert [(m.url, m.texts) for m in merged] == [
        ("http://a/1.jpg", ["x", "y"]),
        ("http://a/2.jpg", []),
    ]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl", "tsv", "txt"])
def test_url_lists(tmp_path, fmt):
    import pandas as pd

    df = pd.DataFrame(
        {
            "url": ["http://a.test/1.jpg", "not a url", "http://a.test/2.jpg"],
            "caption": ["a dog on grass", "", "zwei Katzen"],
        }
    )
    path = tmp_path / f"list.{fmt}"
    writers = {
        "parquet": lambda: df.to_parquet(path),
        "csv": lambda: df.to_csv(path, index=False),
        "jsonl": lambda: df.to_json(path, orient="records", lines=True),
        "tsv": lambda: df.to_csv(path, sep="\t", index=False),
        "txt": lambda: path.write_text("\n".join(df.url)),
    }
    writers[fmt]()
    refs, refused = read_url_list(str(path))
    assert [r.url for r in refs] == ["http://a.test/1.jpg", "http://a.test/2.jpg"]
    assert [(r["row"], r["status"], r["url"]) for r in refused] == [(1, "bad_url", "not a url")]
    if fmt != "txt":
        assert refs[0].texts == ["a dog on grass"] and refs[1].language == "de"


def test_url_list_errors_name_the_file(tmp_path):
    path = tmp_path / "l.csv"
    path.write_text("URL,TEXT\nhttp://a/1.jpg,x\n")
    with pytest.raises(UrlListError, match=r"l\.csv: no column 'url'"):
        read_url_list(str(path))
    refs, _ = read_url_list(str(path), url_col="URL", caption_col="TEXT")
    assert refs[0].texts == ["x"]
    with pytest.raises(UrlListError, match="unknown URL list format"):
        read_url_list(str(tmp_path / "l.xlsx"))
    bad = tmp_path / "b.parquet"
    bad.write_bytes(b"garbage")
    with pytest.raises(UrlListError, match=r"b\.parquet: cannot read"):
        read_url_list(str(bad))
    assert io  # keep import used for readers of this file
