"""The merging task suite's splits: per task a seeded, class-balanced `train` split (what one
expert fine-tunes on) and a `val` split (greedy soup's held-out score), never from eval data.

Written to `data/sample/suite/<set>/` in CLIP_benchmark's layout with the eval set's own class
names, class order and templates, so a model scored on `val` and on the eval `test` split uses
the same classifier. Site sets (emoji groups, Tux Paint and OpenClipart categories) take ON-SITE
items of the eval classes: held-out groups never reach the site, so no suite image is an eval
image. Fashion-MNIST takes the sample's train-file images (the probe's train split, not the
10k test file). Every sample carries `.cls` (its class) and `.txt` (a caption: one of the set's
templates filled with its class name), so the train stage reads the `train` split as shards.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from tasks.io.clipbench import TAR_MTIME, Sample, sample_key, write_lines
from tasks.io.wds import Part, write_tar
from tasks.sample.evalsets import TEMPLATES
from tasks.sample.items import Item, seeded_order

SITE_SETS = {  # suite set -> (source, class attribute, templates)
    "emoji_groups": ("emoji", "category", "emoji"),
    "tuxpaint_categories": ("tuxpaint", "category", "clipart"),
    "openclipart_categories": ("openclipart", "category", "clipart"),
}


def _write_split(folder: Path, split: str, rows: list[tuple[Sample, str]]) -> None:
    """One shard per split: `<key>.<ext>`, `<key>.cls`, `<key>.txt`."""
    out = folder / split
    out.mkdir(parents=True, exist_ok=True)
    entries: list[tuple[str, dict[str, Part]]] = [
        (sample_key(n), {s.ext: s.image, "cls": str(s.label), "txt": caption})
        for n, (s, caption) in enumerate(rows)
    ]
    write_tar(out / "0.tar", entries, fmt=tarfile.GNU_FORMAT, mtime=TAR_MTIME)
    (out / "nshards.txt").write_text("1\n")


def _split_per_class(
    by_class: dict[int, list[Sample]], n_val: int, n_train: int, seed: int, salt: str
) -> tuple[list[Sample], list[Sample]]:
    """(val, train): per class, the first n_val of a seeded order (at most half the class),
    then the next n_train."""
    val: list[Sample] = []
    train: list[Sample] = []
    for label in sorted(by_class):
        samples = by_class[label]
        order = seeded_order([str(i) for i in range(len(samples))], seed, f"{salt}:{label}")
        chosen = [samples[int(i)] for i in order]
        k = min(n_val, len(chosen) // 2)  # a small class still keeps half for training
        val += chosen[:k]
        train += chosen[k : k + n_train]
    return val, train


def write_set(
    folder: Path,
    classnames: Sequence[str],
    templates: Sequence[str],
    by_class: dict[int, list[Sample]],
    n_val: int,
    n_train: int,
    seed: int,
) -> dict[str, int]:
    """A suite set's files; returns its split sizes."""
    folder.mkdir(parents=True, exist_ok=True)
    write_lines(folder / "classnames.txt", classnames)
    write_lines(folder / "zeroshot_classification_templates.txt", templates)
    (folder / "dataset_type.txt").write_text("classification\n")
    val, train = _split_per_class(by_class, n_val, n_train, seed, folder.name)
    for split, samples in (("val", val), ("train", train)):
        rows = [
            (s, templates[n % len(templates)].format(c=classnames[s.label or 0]))
            for n, s in enumerate(samples)
        ]
        _write_split(folder, split, rows)
    return {"train": len(train), "val": len(val)}


def site_samples(
    items: Sequence[Item], attr: str, classnames: Sequence[str]
) -> dict[int, list[Sample]]:
    """On-site raster items of the eval classes, one per group (no pixel-identical pairs)."""
    from tasks.sample.heldout import readable

    index = {c: i for i, c in enumerate(classnames)}
    seen: set[str] = set()
    out: dict[int, list[Sample]] = defaultdict(list)
    for it in sorted(items, key=lambda it: it.item_id):
        label = index.get(readable(getattr(it, attr)))
        if label is None or not it.raster or it.group in seen:
            continue
        seen.add(it.group)
        out[label].append(Sample(Path(it.image).read_bytes(), it.ext, label))
    return out


def write_suite(
    out: Path,
    eval_root: Path,
    on_site: dict[str, list[Item]],
    fashion_train: Sequence[Sample],
    n_val: int,
    n_train: int,
    seed: int,
) -> dict[str, dict[str, int]]:
    """Every suite set under out/; class names read back from the eval sets just written."""
    counts = {}
    for name, (source, attr, templates) in SITE_SETS.items():
        classnames = (eval_root / name / "classnames.txt").read_text(encoding="utf-8").splitlines()
        samples = site_samples(on_site[source], attr, classnames)
        counts[name] = write_set(
            out / name, classnames, TEMPLATES[templates], samples, n_val, n_train, seed
        )
    fashion: dict[int, list[Sample]] = defaultdict(list)
    for s in fashion_train:
        fashion[s.label or 0].append(s)
    classnames = (
        (eval_root / "fashion_mnist" / "classnames.txt").read_text(encoding="utf-8").splitlines()
    )
    counts["fashion_mnist"] = write_set(
        out / "fashion_mnist", classnames, TEMPLATES["fashion_mnist"], fashion, n_val, n_train, seed
    )
    return dict(sorted(counts.items()))
