"""Hostile inputs through the whole crawl stage: none crashes it, each is recorded with its
reason, none runs code, nothing is written outside the configured folders, and credentials in
URLs appear nowhere (shards, tar JSON, pool, refused rows, metrics, logs).

Every server is a loopback listener started here; refused addresses are IP literals (no name is
resolved) and a canary listener proves nothing connected to them.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.crawl.htmlimg import decode_html, parse_page
from tasks.crawl.records import make_uid
from tasks.pool import open_pool
from tests.crawl import images
from tests.crawl.servers import Canary, ThreadServer, bad_app

RELIABILITY_STAGE = (
    "crawl"  # each case recorded in the reliability log (tests/hostile/recording.py)
)
RELIABILITY_DOOR = "stage"  # run_stage in this process
RELIABILITY_DOORS = {"test_hostile_html_is_parsed_in_bounded_time": "library"}

SECRET = "hunter2-s3cret"

IMAGES = {  # path on the test server -> the status it must end with
    "ok.jpg": "success",
    "truncated.jpg": "decode_error",
    "empty.jpg": "empty_body",
    "bomb.png": "decompression_bomb",
    "polyglot.jpg": "success",
    "png-named.jpg": "success",
    "anim.gif": "success",
    "cmyk.jpg": "success",
    "sixteen.png": "success",
    "html-as-image.jpg": "not_an_image",
    "to-creds.jpg": "success",  # a redirect to user:secret@...: followed without them
}


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadServer]:
    s = ThreadServer(bad_app)
    yield s
    s.close()


@pytest.fixture()
def canary() -> Iterator[Canary]:
    c = Canary()
    yield c
    c.close()


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_store, ray_session) -> Path:  # type: ignore[no-untyped-def]
    from tasks.settings import get_settings

    monkeypatch.setenv("CLIPMILL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    return tmp_path


def _url_list(root: Path, base: str, port: int, canary_port: int) -> tuple[Path, dict[str, str]]:
    import pandas as pd

    refused = {  # input row -> the reason it must be kept with
        "": "empty_url",
        "file:///etc/passwd": "scheme_refused",
        "javascript:alert(1)": "scheme_refused",
        "data:image/png;base64,iVBORw0KGgo=": "scheme_refused",
        "ftp://127.0.0.1/x.jpg": "scheme_refused",
        "not a url at all": "bad_url",
        "http://[::1/x.jpg": "bad_url",
        "http://127.0.0.1:99999/x.jpg": "bad_url",
        "http://a.example/" + "x" * 100_000: "url_too_long",
    }
    fetched = {
        f"http://user:{SECRET}@127.0.0.1:{port}/ok.jpg?creds": "success",
        "http://169.254.169.254/latest/meta-data/": "address_refused",
        "http://[fd00:ec2::254]/latest/meta-data/": "address_refused",
        f"http://127.0.0.1:{canary_port}/other-port.jpg": "address_refused",
        base + "bild-\u00fcn\u00efc\u00f6d\u00e9.jpg": "http_404",  # a unicode path, fetched
        **{base + path: status for path, status in IMAGES.items()},
    }
    rows = list(refused) + list(fetched)
    path = root / "hostile.parquet"
    pd.DataFrame({"url": rows, "caption": [f"row {i}" for i in range(len(rows))]}).to_parquet(path)
    return path, {"refused": refused, "fetched": fetched}  # type: ignore[dict-item]


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_hostile_url_list_through_the_stage(
    root: Path, server: ThreadServer, canary: Canary, caplog
) -> None:  # type: ignore[no-untyped-def]
    from tasks import PROJECT_ROOT
    from tasks.runner import run_stage

    path, cases = _url_list(root, server.base, server.port, canary.port)
    before = _files(root)
    caplog.set_level(logging.DEBUG)
    started = time.perf_counter()
    metrics = run_stage(
        "crawl",
        PROJECT_ROOT / "params/crawl.yaml",
        overrides={
            "inputs.sources": ["urls"],
            "inputs.url_lists": [str(path)],
            "inputs.sample_site_dir": "",
            "inputs.archives_index": "",
            "inputs.shard_size": 8,
            "policy.allow_addresses": [server.base.rstrip("/")],
            "policy.respect_robots_txt": False,
            "http.retries": 0,
            "output.output_dir": str(root / "crawl"),
            "output.lancedb_uri": str(root / "lancedb"),
            "output.progress": False,
        },
    )
    assert time.perf_counter() - started < 120
    # Every refused row is kept with its reason (URLs redacted and cut).
    refused = pq.read_table(root / "crawl/refused.parquet").to_pylist()
    assert sorted(r["status"] for r in refused) == sorted(cases["refused"].values())
    assert all(len(r["url"]) <= 2100 for r in refused)
    assert metrics["refused"] == len(cases["refused"]) and metrics["refused_scheme_refused"] == 4
    # Every fetched row ends with its status; the credentials were stripped before planning.
    rows = [
        r
        for p in sorted((root / "crawl/shards").glob("*.parquet"))
        for r in pq.read_table(p).to_pylist()
    ]
    got = {r["url"]: r["status"] for r in rows}
    want = {u.replace(f"user:{SECRET}@", ""): s for u, s in cases["fetched"].items()}
    assert got == want
    assert canary.accepted == 0  # nothing connected to the refused port
    assert all(auth == "" for _, _, auth in server.log)  # no Basic auth ever sent
    # The polyglot's payload is not in the tar: images are decoded and re-encoded.
    tars = b"".join(p.read_bytes() for p in (root / "crawl/shards").glob("*.tar"))
    assert (
        images.POLYGLOT_PAYLOAD[30:] not in tars
        and not Path("/tmp/clipmill-pwned-polyglot").exists()
    )
    with tarfile.open(fileobj=io.BytesIO((root / "crawl/shards/00000.tar").read_bytes())) as tar:
        metas = [
            json.loads(tar.extractfile(m).read())
            for m in tar.getmembers()
            if m.name.endswith(".json")
        ]
    assert metas and all("@" not in m["url"] for m in metas)
    pool = open_pool(str(root / "lancedb")).to_arrow().to_pylist()
    assert {r["uid"] for r in pool} == {make_uid(u) for u in want}
    # Credentials nowhere: every file this run wrote, and every log record.
    for f in _files(root) - before:
        assert SECRET.encode() not in f.read_bytes(), f
    assert SECRET not in caplog.text
    # Nothing written outside the configured folders (output, pool, metrics).
    allowed = [root / "crawl", root / "lancedb", root / "metrics", root / "mlartifacts"]
    stray = [
        f
        for f in _files(root) - before
        if not any(a in f.parents for a in allowed) and not f.name.startswith("mlflow.db")
    ]
    assert stray == []


def test_hostile_html_is_parsed_in_bounded_time() -> None:
    started = time.perf_counter()
    huge_attr = b'<img src="/a.jpg" alt="' + b"A" * 2_000_000 + b'"><img src="/b.jpg" alt="b">'
    page = parse_page(decode_html(huge_attr, "text/html"), "http://h.example/p.html")
    assert [u for u, _ in page.images] == ["http://h.example/a.jpg", "http://h.example/b.jpg"]
    deep = b"<div>" * 200_000 + b'<img src="deep.jpg" alt="deep">' + b"</div>" * 200_000
    page = parse_page(decode_html(deep), "http://h.example/")
    assert page.images == [("http://h.example/deep.jpg", ["deep"])]
    broken = b'<meta charset="x-no-such-charset"><img src="c.jpg" alt="caf\xe9 \xff\xfe cr\x00me">'
    page = parse_page(decode_html(broken, "text/html; charset=bogus"), "http://h.example/")
    assert page.images[0][0] == "http://h.example/c.jpg" and page.images[0][1]
    creds = b'<img src="http://u:pw@cdn.example/x.jpg"><a href="javascript:alert(1)">x</a>'
    page = parse_page(decode_html(creds), "http://h.example/")
    assert page.links == []  # javascript: is never a link to follow
    assert time.perf_counter() - started < 20
