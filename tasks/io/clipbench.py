"""THE writer of eval sets in CLIP_benchmark's webdataset layout (what `wds/<name>` reads).

Layout (what `clip_benchmark.datasets.builder.build_wds_dataset` reads):
    <set>/classnames.txt, <set>/zeroshot_classification_templates.txt, <set>/dataset_type.txt,
    <set>/<split>/nshards.txt, <set>/<split>/0.tar ... with members `s0000000.png` +
    `s0000000.cls` (classification) or `s0000000.txt` holding one caption per line (retrieval).

Written byte-for-byte stable (GNU headers, a fixed date), so the same inputs give the same
DVC hashes. The sample stage writes its sets with it; tests and benchmarks write theirs too.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.io.wds import Part, write_tar

TAR_MTIME = 946684800  # 2000-01-01: fixed, so the same inputs give the same bytes


@dataclass(frozen=True)
class Sample:
    """One eval sample: image bytes plus either a class index or captions."""

    image: bytes
    ext: str  # png | jpg | webp
    label: int | None = None
    captions: tuple[str, ...] = ()


def sample_key(index: int) -> str:
    """The key of the index-th sample of a split: s0000000, s0000001, ..."""
    return f"s{index:07d}"


def _entries(chunk: Sequence[Sample], first: int) -> Iterator[tuple[str, dict[str, Part]]]:
    for i, s in enumerate(chunk):
        target: Part = str(s.label) if s.label is not None else "\n".join(s.captions)
        yield (
            sample_key(first + i),
            {s.ext: s.image, "cls" if s.label is not None else "txt": target},
        )


def write_shards(
    folder: Path, samples: Sequence[Sample], max_per_shard: int, split: str = "test"
) -> int:
    """Write <split>/{0..n-1}.tar and <split>/nshards.txt; return the number of shards.

    An empty set still gets one (empty) shard, so the layout stays readable.
    """
    out = folder / split
    out.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(samples), max_per_shard)
    chunks = [samples[i : i + max_per_shard] for i in starts] or [[]]
    first = 0
    for n, chunk in enumerate(chunks):
        write_tar(out / f"{n}.tar", _entries(chunk, first), fmt=tarfile.GNU_FORMAT, mtime=TAR_MTIME)
        first += len(chunk)
    (out / "nshards.txt").write_text(f"{len(chunks)}\n")
    return len(chunks)


def write_lines(path: Path, lines: Sequence[str]) -> None:
    """One entry per line, each ending in a newline (class names, templates)."""
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def write_classification(
    folder: Path,
    classnames: Sequence[str],
    templates: Sequence[str],
    samples: Sequence[Sample],
    max_per_shard: int,
    split: str = "test",
) -> None:
    """A zero-shot classification set: class names, `{c}` templates, labelled samples."""
    folder.mkdir(parents=True, exist_ok=True)
    write_lines(folder / "classnames.txt", classnames)
    write_lines(folder / "zeroshot_classification_templates.txt", templates)
    (folder / "dataset_type.txt").write_text("classification\n")
    write_shards(folder, samples, max_per_shard, split)


def write_retrieval(
    folder: Path, samples: Sequence[Sample], max_per_shard: int, split: str = "test"
) -> None:
    """A retrieval set: every sample carries its captions, one per line."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset_type.txt").write_text("retrieval\n")
    write_shards(folder, samples, max_per_shard, split)
