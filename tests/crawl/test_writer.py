"""The shard tar is byte for byte what tarfile writes, and webdataset reads it back."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from tasks.crawl.writer import build_tar, sample_meta


def _rows() -> list[dict]:
    return [
        {"uid": "a1", "status": "success", "image": b"\xff\xd8" + bytes(700), "caption": "cat"},
        {"uid": "b2", "status": "http_404", "image": None, "caption": "lost"},
        {"uid": "c3", "status": "success", "image": bytes(512), "caption": "Größe 東京"},
        {"uid": "d" * 120, "status": "success", "image": b"x", "caption": ""},  # > 100 chars: PAX
    ]


def _reference(rows: list[dict], ext: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for row in rows:
            if row["status"] != "success":
                continue
            meta = json.dumps(sample_meta(row), ensure_ascii=False, default=str).encode()
            for suffix, data in (
                (ext, row["image"]),
                ("txt", row["caption"].encode()),
                ("json", meta),
            ):
                info = tarfile.TarInfo(f"{row['uid']}.{suffix}")
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_bytes_equal_tarfile():
    rows = _rows()
    assert build_tar(rows, "jpg") == _reference(rows, "jpg")
    assert build_tar([], "jpg") == _reference([], "jpg")


def test_tar_reads_back_with_webdataset(tmp_path):
    import webdataset as wds

    path = tmp_path / "00000.tar"
    path.write_bytes(build_tar(_rows(), "jpg"))
    samples = list(wds.WebDataset(str(path), shardshuffle=False))
    assert [s["__key__"] for s in samples] == ["a1", "c3", "d" * 120]
    assert samples[1]["txt"].decode() == "Größe 東京"
    assert samples[0]["jpg"] == b"\xff\xd8" + bytes(700)


# ---- layouts (output.output_format), extra input columns, idempotent rewrites -----------------


def _shard_rows() -> list[dict]:
    extra_a = json.dumps({"license": "cc-by", "score": 0.5})
    return [
        {**_rows()[0], "url": "http://h/a.jpg", "extra": extra_a},
        {**_rows()[1], "url": "http://h/b.jpg", "extra": json.dumps({"license": "none"})},
        {**_rows()[2], "url": "http://h/c.jpg", "extra": ""},  # a row without extra columns
    ]


def test_files_layout_holds_img2dataset_folders_and_extra_columns(tmp_path):
    import pyarrow.parquet as pq

    from tasks.crawl.writer import read_marker, read_shard, write_shard

    stats = write_shard(str(tmp_path), 0, _shard_rows(), "jpg", 0.0, "files")
    folder = tmp_path / "shards/00000"
    assert sorted(p.name for p in folder.iterdir()) == [
        "a1.jpg", "a1.json", "a1.txt", "c3.jpg", "c3.json", "c3.txt",
    ]  # fmt: skip
    assert (folder / "c3.txt").read_text() == "Größe 東京"
    assert (folder / "a1.jpg").read_bytes() == _rows()[0]["image"]
    meta = json.loads((folder / "a1.json").read_text())
    assert meta["license"] == "cc-by" and meta["score"] == 0.5 and meta["uid"] == "a1"
    assert "license" not in json.loads((folder / "c3.json").read_text())
    assert not (tmp_path / "shards/00000.tar").exists()
    table = pq.read_table(tmp_path / "shards/00000.parquet")
    assert table.column("license").to_pylist() == ["cc-by", "none", None]
    assert table.column("score").to_pylist() == [0.5, None, None]
    assert stats["successes"] == 2 and stats["bytes_written"] > 0
    assert read_marker(str(tmp_path), 0)["parquet_sha256"] == stats["parquet_sha256"]
    rows, images = read_shard(str(tmp_path), 0, "jpg", "files")
    assert json.loads(rows[0]["extra"]) == {"license": "cc-by", "score": 0.5}
    assert rows[2]["extra"] == "" and images["a1.jpg"] == _rows()[0]["image"]


def test_parquet_layout_holds_the_image_bytes(tmp_path):
    import pyarrow.parquet as pq

    from tasks.crawl.writer import read_shard, write_shard

    write_shard(str(tmp_path), 3, _shard_rows(), "webp", 0.0, "parquet")
    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert names == ["00003.done", "00003.parquet", "00003_stats.json"]
    table = pq.read_table(tmp_path / "shards/00003.parquet")
    assert table.column("webp").to_pylist() == [_rows()[0]["image"], None, _rows()[2]["image"]]
    assert table.column("license").to_pylist() == ["cc-by", "none", None]
    rows, images = read_shard(str(tmp_path), 3, "webp", "parquet")
    assert "webp" not in rows[0] and set(images) == {"a1.webp", "c3.webp"}


def test_mixed_extra_types_are_stored_as_json_text(tmp_path):
    import pyarrow.parquet as pq

    from tasks.crawl.writer import write_shard

    rows = _shard_rows()
    rows[0]["extra"] = json.dumps({"tags": 3})
    rows[1]["extra"] = json.dumps({"tags": ["x", "y"]})
    write_shard(str(tmp_path), 0, rows, "jpg", 0.0)
    tags = pq.read_table(tmp_path / "shards/00000.parquet").column("tags").to_pylist()
    assert tags == ["3", '["x", "y"]', None]


def test_extra_keys_never_replace_our_columns(tmp_path):
    import pyarrow.parquet as pq

    from tasks.crawl.writer import write_shard

    rows = _shard_rows()
    rows[0]["extra"] = json.dumps({"status": "forged", "uid": "zz", "note": "kept"})
    write_shard(str(tmp_path), 0, rows, "jpg", 0.0)
    table = pq.read_table(tmp_path / "shards/00000.parquet")
    assert table.column("status").to_pylist()[0] == "success"
    assert table.column("uid").to_pylist()[0] == "a1" and table.column("note")[0].as_py() == "kept"


def test_a_rerun_after_a_killed_attempt_rewrites_the_same_shard(tmp_path):
    """What a worker killed mid-write leaves (temporary files, a tar without its marker, part of
    a files folder) is cleared, and the rerun writes the same content: no sample twice."""
    from tasks.crawl.writer import write_shard

    for fmt in ("webdataset", "files", "parquet"):
        out = tmp_path / fmt
        write_shard(str(out), 0, _shard_rows(), "jpg", 0.0, fmt)
        first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        for p in list((out / "shards").iterdir()):
            if p.name.endswith(".done"):
                p.unlink()  # the attempt was killed before its marker
        (out / "shards/.00000.tar.x1.tmp").write_bytes(b"half a tar")
        (out / "shards/00000.parquet.ab12.tmp").write_bytes(b"object-store temp")
        (out / "shards/.00001.tar.x2.tmp").write_bytes(b"another shard's: kept")
        (out / "shards/00000").mkdir(exist_ok=True)
        (out / "shards/00000/zz.jpg").write_bytes(b"a sample of an older attempt")
        write_shard(str(out), 0, _shard_rows(), "jpg", 0.0, fmt)
        again = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
        kept = {Path("shards/.00001.tar.x2.tmp")}
        differ = {k for k in first if first[k] != again.get(k)} - {Path("shards/00000_stats.json")}
        assert set(again) - kept == set(first) and not differ, fmt


def test_an_unknown_layout_is_refused_by_name(tmp_path):
    import pytest

    from tasks.crawl.writer import write_shard

    with pytest.raises(ValueError, match="output.output_format"):
        write_shard(str(tmp_path), 0, _shard_rows(), "jpg", 0.0, "tfrecord")
