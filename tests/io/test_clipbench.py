"""THE CLIP_benchmark set writer (tasks.io.clipbench): the layout its `wds/<name>` loader reads,
and the same bytes for the same inputs."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

from tasks.io.clipbench import (
    TAR_MTIME,
    Sample,
    sample_key,
    write_classification,
    write_retrieval,
)
from tasks.io.wds import iter_samples


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _classification(folder: Path) -> None:
    samples = [Sample(bytes([i]) * (100 + i), "png", label=i % 3) for i in range(7)]
    write_classification(folder, ["cat", "dog", "bird"], ["a photo of a {c}."], samples, 3)


def test_classification_layout(tmp_path: Path) -> None:
    folder = tmp_path / "pets"
    _classification(folder)
    assert (folder / "classnames.txt").read_text() == "cat\ndog\nbird\n"
    assert (folder / "zeroshot_classification_templates.txt").read_text() == "a photo of a {c}.\n"
    assert (folder / "dataset_type.txt").read_text() == "classification\n"
    assert (folder / "test" / "nshards.txt").read_text() == "3\n"
    samples = [s for n in range(3) for s in iter_samples(folder / "test" / f"{n}.tar")]
    assert (
        [k for k, _ in samples]
        == [sample_key(i) for i in range(7)]
        == [f"s{i:07d}" for i in range(7)]
    )
    assert [int(p["cls"]) for _, p in samples] == [i % 3 for i in range(7)]
    with tarfile.open(folder / "test" / "0.tar") as tar:
        first = tar.next()
        assert first is not None and first.mtime == TAR_MTIME


def test_retrieval_layout_and_webdataset_reads_it(tmp_path: Path) -> None:
    import webdataset as wds

    folder = tmp_path / "captions"
    samples = [Sample(b"img%d" % i, "jpg", captions=(f"a {i}", f"b {i}")) for i in range(4)]
    write_retrieval(folder, samples, 10, split="val")
    assert (folder / "dataset_type.txt").read_text() == "retrieval\n"
    ds = wds.WebDataset(str(folder / "val" / "0.tar"), shardshuffle=False).to_tuple("jpg", "txt")
    assert [(img, txt.decode().splitlines()) for img, txt in ds] == [
        (b"img%d" % i, [f"a {i}", f"b {i}"]) for i in range(4)
    ]


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    _classification(tmp_path / "a")
    _classification(tmp_path / "b")
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


def test_an_empty_set_still_has_one_shard(tmp_path: Path) -> None:
    write_retrieval(tmp_path / "empty", [], 5)
    assert (tmp_path / "empty" / "test" / "nshards.txt").read_text() == "1\n"
    assert list(iter_samples(tmp_path / "empty" / "test" / "0.tar")) == []
