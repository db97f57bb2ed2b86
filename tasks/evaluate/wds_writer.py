"""Write a set in CLIP_benchmark's webdataset layout (tests, benchmarks, small hand-made sets)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds_set(
    root: str | Path,
    images: Sequence[bytes],
    *,
    split: str = "test",
    labels: Sequence[int] | None = None,
    captions: Sequence[Sequence[str]] | None = None,
    classnames: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    image_ext: str = "png",
    shard_size: int = 1000,
) -> Path:
    """One split of a classification set (labels + class names + templates) or a retrieval set (captions)."""
    root = Path(root)
    folder = root / split
    folder.mkdir(parents=True, exist_ok=True)
    if (labels is None) == (captions is None):
        raise ValueError("give exactly one of labels (classification) or captions (retrieval)")
    nshards = 0
    for start in range(0, len(images), shard_size):
        with tarfile.open(folder / f"{nshards}.tar", "w") as tar:
            for i in range(start, min(start + shard_size, len(images))):
                key = f"s{i:07d}"
                _add(tar, f"{key}.{image_ext}", images[i])
                if labels is not None:
                    _add(tar, f"{key}.cls", str(int(labels[i])).encode())
                else:
                    _add(tar, f"{key}.txt", "\n".join(captions[i]).encode("utf-8"))  # type: ignore[index]
        nshards += 1
    (folder / "nshards.txt").write_text(f"{nshards}\n")
    if captions is not None:
        (root / "dataset_type.txt").write_text("retrieval\n")
    if classnames is not None:
        (root / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
    if templates is not None:
        (root / "zeroshot_classification_templates.txt").write_text(
            "\n".join(templates) + "\n", encoding="utf-8"
        )
    return root
