"""The shard tar is byte for byte what tarfile writes, and webdataset reads it back."""

from __future__ import annotations

import io
import json
import tarfile

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
