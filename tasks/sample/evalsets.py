"""Evaluation sets in CLIP_benchmark's webdataset layout (`wds/<name>`), written byte-for-byte stable.

Layout (what `clip_benchmark.datasets.builder.build_wds_dataset` reads):
    <set>/classnames.txt, <set>/zeroshot_classification_templates.txt, <set>/dataset_type.txt,
    <set>/test/nshards.txt, <set>/test/0.tar ... with members `s0000000.png` + `s0000000.cls`
    (classification) or `s0000000.txt` holding one caption per line (retrieval).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

TAR_MTIME = 946684800  # 2000-01-01: fixed, so the same inputs give the same bytes

TEMPLATES: dict[str, tuple[str, ...]] = {
    "fashion_mnist": (
        "a photo of a {c}.",
        "a black and white photo of a {c}.",
        "a low resolution photo of a {c}.",
        "a photo of the {c}.",
        "a product photo of a {c}.",
        "a photo of a {c}, a type of clothing.",
    ),
    "emoji": (
        "an emoji of {c}.",
        "a {c} emoji.",
        "an icon of {c}.",
        "a small picture of {c}.",
    ),
    "clipart": (
        "a clip art of {c}.",
        "a drawing of {c}.",
        "a cartoon of {c}.",
        "an illustration of {c}.",
        "a picture from the category {c}.",
    ),
}


@dataclass(frozen=True)
class Sample:
    """One eval sample: image bytes plus either a class index or captions."""

    image: bytes
    ext: str  # png | jpg | webp
    label: int | None = None
    captions: tuple[str, ...] = ()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uname = info.gname = ""
    info.uid = info.gid = 0
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, samples: Sequence[Sample], max_per_shard: int) -> int:
    """Write test/{0..n-1}.tar and test/nshards.txt; return the number of shards."""
    test = folder / "test"
    test.mkdir(parents=True, exist_ok=True)
    chunks = [samples[i : i + max_per_shard] for i in range(0, len(samples), max_per_shard)] or [[]]
    index = 0
    for n, chunk in enumerate(chunks):
        with tarfile.open(test / f"{n}.tar", "w", format=tarfile.GNU_FORMAT) as tar:
            for s in chunk:
                key = f"s{index:07d}"
                _add(tar, f"{key}.{s.ext}", s.image)
                if s.label is not None:
                    _add(tar, f"{key}.cls", str(s.label).encode())
                else:
                    _add(tar, f"{key}.txt", "\n".join(s.captions).encode("utf-8"))
                index += 1
    (test / "nshards.txt").write_text(f"{len(chunks)}\n")
    return len(chunks)


def write_classification(
    folder: Path,
    classnames: Sequence[str],
    templates: Sequence[str],
    samples: Sequence[Sample],
    max_per_shard: int,
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classnames.txt").write_text("".join(f"{c}\n" for c in classnames), encoding="utf-8")
    (folder / "zeroshot_classification_templates.txt").write_text(
        "".join(f"{t}\n" for t in templates), encoding="utf-8"
    )
    (folder / "dataset_type.txt").write_text("classification\n")
    write_shards(folder, samples, max_per_shard)


def write_retrieval(folder: Path, samples: Sequence[Sample], max_per_shard: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_type.txt").write_text("retrieval\n")
    write_shards(folder, samples, max_per_shard)


def sample_key(index: int) -> str:
    return f"s{index:07d}"
