"""Hand-made sets in CLIP_benchmark's layout for tests and benchmarks, written by the library's
own writer (tasks.io.clipbench), with the optional parts left out on request (to test the errors
a malformed set raises)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tasks.io.clipbench import Sample, write_lines, write_shards


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
    """One split of a classification set (labels; class names and templates when given) or a
    retrieval set (captions). Returns the set's folder."""
    root = Path(root)
    if (labels is None) == (captions is None):
        raise ValueError("give exactly one of labels (classification) or captions (retrieval)")
    if labels is not None:
        samples = [
            Sample(img, image_ext, label=int(y)) for img, y in zip(images, labels, strict=True)
        ]
    else:
        samples = [
            Sample(img, image_ext, captions=tuple(c))
            for img, c in zip(images, captions or (), strict=True)
        ]
    root.mkdir(parents=True, exist_ok=True)
    write_shards(root, samples, shard_size, split)
    if captions is not None:
        (root / "dataset_type.txt").write_text("retrieval\n")
    if classnames is not None:
        write_lines(root / "classnames.txt", classnames)
    if templates is not None:
        write_lines(root / "zeroshot_classification_templates.txt", templates)
    return root
