"""The crawl-shard reader (tasks/io/crawlshards.py): the same samples from every layout the crawl
writes (output.output_format webdataset, files, parquet), written by the crawl's own writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.crawl.writer import FORMATS, write_shard
from tasks.io import crawlshards


def _rows(shard: int, n: int) -> list[dict]:
    """n URLs, every third failed (no image), one with an extra input column."""
    rows = []
    for i in range(n):
        ok = i % 3 != 2
        rows.append(
            {
                "uid": f"{shard:02d}{i:030x}",
                "key": f"{shard:02d}{i:030x}",
                "url": f"http://img.test/{shard}/{i}.jpg",
                "caption": f"picture {i} of shard {shard}",
                "status": "success" if ok else "http_404",
                "image": bytes([shard, i]) * 40 if ok else None,
                "width": 32 if ok else None,
                "height": 32 if ok else None,
                "extra": json.dumps({"license": "cc-by"}) if i == 0 else "",
            }
        )
    return rows


def _write(root: Path, fmt: str) -> Path:
    out = root / fmt
    write_shard(str(out), 0, _rows(0, 7), "jpg", 0.0, fmt)
    write_shard(str(out), 1, _rows(1, 5), "jpg", 0.0, fmt)
    # a shard without one success: the files layout then has no folder, only its parquet
    write_shard(
        str(out),
        2,
        [{**r, "status": "timeout", "image": None} for r in _rows(2, 3)],
        "jpg",
        0.0,
        fmt,
    )
    return out / "shards"


def _expected() -> list[tuple[str, bytes, str, str]]:
    rows = _rows(0, 7) + _rows(1, 5)
    return [(r["uid"], r["image"], r["caption"], r["url"]) for r in rows if r["image"] is not None]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_layout_yields_the_same_samples(tmp_path: Path, fmt: str) -> None:
    shards = _write(tmp_path, fmt)
    listed = crawlshards.list_shards(shards)
    assert {s.layout for s in listed} == {fmt}
    assert len(listed) == (2 if fmt == "files" else 3)  # files: shard 2 holds no sample
    got = list(crawlshards.iter_crawl(shards))
    assert [(s.uid, s.image, s.text, s.meta["url"]) for s in got] == _expected()
    assert got[0].meta["license"] == "cc-by" and got[0].meta["status"] == "success"
    # the keys with an image, read cheaply, and a subset read alone
    first = listed[0]
    keys = crawlshards.sample_keys(first)
    assert keys == [u for u, *_ in _expected() if u.startswith("00")]
    some = {keys[1], keys[3]}
    assert {s.uid for s in crawlshards.iter_samples(first.path, some)} == some
    # the webdataset-shaped triples curate and the decontam library read
    triples = list(crawlshards.read_images(first.path, {keys[0]}))
    assert [(k, img) for k, img, _ in triples] == [(keys[0], _expected()[0][1])]
    assert triples[0][2]["txt"] == b"picture 0 of shard 0" and "jpg" in triples[0][2]


def test_webdataset_metadata_parquet_is_not_a_shard(tmp_path: Path) -> None:
    shards = _write(tmp_path, "webdataset")
    with pytest.raises(ValueError, match=r"00000\.parquet: not a crawl shard"):
        crawlshards.layout_of(shards / "00000.parquet")
    assert crawlshards.layout_of(shards / "00000.tar") == "webdataset"


def test_missing_or_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"decontaminate: shards folder .*nope does not exist"
    ):
        crawlshards.list_shards(tmp_path / "nope", who="decontaminate")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no crawl shards"):
        crawlshards.list_shards(tmp_path / "empty")
