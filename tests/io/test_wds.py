"""The shared webdataset writer and reader (tasks.io.wds): tarfile's bytes, webdataset's samples,
the JSON side file, and clear errors for broken shards.

No __init__.py here on purpose: a package named `io` under tests/ would shadow the standard library.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.io.wds import (
    IMAGE_EXTS,
    Part,
    ShardError,
    TarFormat,
    TarWriter,
    build_tar,
    image_bytes,
    image_ext,
    iter_members,
    iter_samples,
    member_names,
    read_images,
    sample_json,
    sample_keys,
    split_key,
    write_tar,
)

MEMBERS = [  # sizes around the 512-byte block, a name too long for ustar, non-ASCII names
    ("a1.jpg", b"\xff\xd8" + bytes(700)),
    ("a1.txt", "Größe 東京".encode()),
    ("a1.json", b'{"uid": "a1"}'),
    ("b2.png", bytes(512)),
    ("b2.txt", b""),
    ("c3.webp", bytes(511)),
    ("c3.cls", b"7"),
    ("d" * 120 + ".jpg", bytes(513)),
    ("é.txt", b"accent"),
]


def _tarfile_bytes(members: list[tuple[str, bytes]], fmt: int, mtime: int = 0) -> bytes:
    """What tarfile itself writes for these members (fresh TarInfo, size and mtime set)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mtime"), [(tarfile.PAX_FORMAT, 0), (tarfile.GNU_FORMAT, 946684800)], ids=["pax", "gnu"]
)
def test_writer_bytes_equal_tarfile(fmt: TarFormat, mtime: int) -> None:
    writer = TarWriter(fmt=fmt, mtime=mtime)
    for name, data in MEMBERS:
        writer.add(name, data)
    assert writer.getvalue() == _tarfile_bytes(MEMBERS, fmt, mtime)
    assert TarWriter(fmt=fmt, mtime=mtime).getvalue() == _tarfile_bytes([], fmt, mtime)


def test_writer_streams_into_a_file_like_tarfile(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    with path.open("wb") as fh, TarWriter(fh) as writer:
        writer.add_sample("k", {"jpg": b"img", "txt": "cap"})
    assert path.read_bytes() == _tarfile_bytes(
        [("k.jpg", b"img"), ("k.txt", b"cap")], tarfile.PAX_FORMAT
    )
    with pytest.raises(TypeError, match="in-memory"):
        TarWriter(io.BufferedWriter(io.BytesIO())).getvalue()


def test_round_trip_keeps_keys_order_and_parts(tmp_path: Path) -> None:
    samples: list[tuple[str, dict[str, Part]]] = [
        ("u2", {"jpg": b"\x01\x02", "txt": "a cat", "json": {"uid": "u2", "texts": ["été", 3]}}),
        ("u1", {"png": bytes(600), "txt": "", "cls": "4"}),
        ("dir/u3", {"webp": b"w"}),
    ]
    path = tmp_path / "shards" / "00000.tar"
    assert write_tar(path, samples) == 3
    assert [p.name for p in path.parent.iterdir()] == ["00000.tar"]  # no temp file left
    back = list(iter_samples(path))
    assert [k for k, _ in back] == ["u2", "u1", "dir/u3"]
    assert back[0][1]["txt"] == b"a cat" and back[1][1]["cls"] == b"4"
    assert back[1][1]["png"] == bytes(600) and back[2][1] == {"webp": b"w"}
    assert sample_json(back[0][1]) == {"uid": "u2", "texts": ["été", 3]}
    assert list(iter_samples(path.read_bytes())) == back  # bytes in, same samples


def test_json_side_file_is_utf8_and_tolerant() -> None:
    data = build_tar([("k", {"json": {"caption": "東京", "n": Path("x")}})])
    raw = dict(iter_members(data))["k.json"]
    assert raw == json.dumps({"caption": "東京", "n": "x"}, ensure_ascii=False).encode()
    assert sample_json({"json": b"{not json"}) == {}
    assert sample_json({"json": b"[1, 2]"}) == {}  # not an object: no metadata, no crash
    assert sample_json({"json": b"\xff\xfe"}) == {}
    assert sample_json({"txt": b"no side file"}) == {}


def test_webdataset_reads_what_we_write(tmp_path: Path) -> None:
    import webdataset as wds

    samples: list[tuple[str, dict[str, Part]]] = [
        (f"s{i}", {"jpg": bytes([i]) * 10, "txt": f"caption {i}"}) for i in range(5)
    ]
    path = tmp_path / "0.tar"
    write_tar(path, samples)
    theirs = list(wds.WebDataset(str(path), shardshuffle=False))
    ours = list(iter_samples(path))
    assert [s["__key__"] for s in theirs] == [k for k, _ in ours]
    assert [s["jpg"] for s in theirs] == [p["jpg"] for _, p in ours]


def test_key_rule_is_webdatasets() -> None:
    assert split_key("abc.tar.JPG") == ("abc", "tar.jpg")
    assert split_key("a.b/c.d.txt") == ("a.b/c", "d.txt")
    assert split_key("no_extension") is None
    data = build_tar([("k", {"jpg": b"1"})])
    writer = TarWriter()
    writer.add("README", b"skipped: no extension")
    writer.add("k.JPG", b"upper")
    writer.add("k.txt", b"t")
    writer.add("m.jpg", b"2")
    assert list(iter_samples(writer.getvalue())) == [
        ("k", {"jpg": b"upper", "txt": b"t"}),
        ("m", {"jpg": b"2"}),
    ]
    assert list(iter_samples(data)) == [("k", {"jpg": b"1"})]


def test_filters_and_header_only_scans() -> None:
    data = build_tar(
        [("a", {"jpg": b"1", "txt": "x"}), ("b", {"txt": "no image"}), ("c", {"webp": b"3"})]
    )
    assert [k for k, _ in iter_samples(data, {"c", "zz"})] == ["c"]
    assert [(k, img) for k, img, _ in read_images(data)] == [("a", b"1"), ("c", b"3")]
    assert [k for k, _, _ in read_images(data, keys={"b", "c"})] == ["c"]
    assert sample_keys(data) == ["a", "b", "c"]
    assert sample_keys(data, IMAGE_EXTS) == ["a", "c"]
    assert member_names(data) == ["a.jpg", "a.txt", "b.txt", "c.webp"]


def test_image_preference_is_clip_benchmarks() -> None:
    assert IMAGE_EXTS == ("webp", "png", "jpg", "jpeg")
    parts = {"jpg": b"j", "png": b"p", "txt": b"t"}
    assert image_ext(parts) == "png" and image_bytes(parts) == b"p"
    assert image_ext({"txt": b"t"}) is None and image_bytes({"txt": b"t"}) is None


def test_compressed_shards_are_read() -> None:
    data = build_tar([("k", {"jpg": b"img"})])
    assert list(iter_samples(gzip.compress(data))) == [("k", {"jpg": b"img"})]


@pytest.mark.parametrize(
    "cut",
    [
        lambda b: b"",  # empty file
        lambda b: b"not a tar at all" * 64,  # garbage
        lambda b: b[:100],  # inside the first header
        lambda b: b[:1500],  # inside a member's data
        lambda b: b[: 512 + 1024],  # at a member boundary, end-of-archive marker missing
        lambda b: b[: 1536 + 100],  # inside the second header
    ],
    ids=["empty", "garbage", "header", "data", "boundary", "later-header"],
)
def test_broken_shard_raises_naming_the_file(tmp_path: Path, cut: Callable[[bytes], bytes]) -> None:
    good = build_tar([("a", {"jpg": bytes(1000)}), ("b", {"jpg": bytes(1000)})])
    path = tmp_path / "bad.tar"
    path.write_bytes(cut(good))
    with pytest.raises(ShardError, match=r"bad\.tar: not a readable tar file"):
        list(iter_samples(path))
    with pytest.raises(ShardError, match=r"bad\.tar"):
        sample_keys(path)
    with pytest.raises(ShardError, match=r"shard-9\.tar"):
        dict(iter_members(cut(good), name="s3://bucket/shard-9.tar"))


def test_a_missing_file_stays_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(iter_samples(tmp_path / "nope.tar"))
