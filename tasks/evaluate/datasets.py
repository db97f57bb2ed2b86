"""Dataset registry and reader for CLIP_benchmark's webdataset layout (local sets and public benchmarks).

The layout is the one `clip_benchmark eval --dataset wds/<name>` reads, so both tools see the
same bytes: `<set>/classnames.txt`, `<set>/zeroshot_classification_templates.txt`,
`<set>/dataset_type.txt` ("retrieval" for caption sets), `<set>/<split>/nshards.txt`, `<split>/<i>.tar`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from tasks.io.paths import resolve_path
from tasks.io.wds import IMAGE_EXTS, image_bytes, iter_samples, member_names

CLASSIFICATION = "zeroshot_classification"
RETRIEVAL = "zeroshot_retrieval"

# Public benchmarks by name -> task. They are read from <public_root>/<name>/ or
# <public_root>/wds_<name>/ (the names of CLIP_benchmark's copies on the Hugging Face hub).
PUBLIC_BENCHMARKS: dict[str, str] = {
    "imagenet1k": CLASSIFICATION,
    "imagenetv2": CLASSIFICATION,
    "imagenet_sketch": CLASSIFICATION,
    "imagenet-a": CLASSIFICATION,
    "imagenet-r": CLASSIFICATION,
    "objectnet": CLASSIFICATION,
    "cars": CLASSIFICATION,
    "fgvc_aircraft": CLASSIFICATION,
    "food101": CLASSIFICATION,
    "gtsrb": CLASSIFICATION,
    "mnist": CLASSIFICATION,
    "renderedsst2": CLASSIFICATION,
    "stl10": CLASSIFICATION,
    "sun397": CLASSIFICATION,
    "voc2007": CLASSIFICATION,
    "country211": CLASSIFICATION,
    "fer2013": CLASSIFICATION,
    "vtab/caltech101": CLASSIFICATION,
    "vtab/cifar10": CLASSIFICATION,
    "vtab/cifar100": CLASSIFICATION,
    "vtab/clevr_count_all": CLASSIFICATION,
    "vtab/clevr_closest_object_distance": CLASSIFICATION,
    "vtab/diabetic_retinopathy": CLASSIFICATION,
    "vtab/dmlab": CLASSIFICATION,
    "vtab/dsprites_label_orientation": CLASSIFICATION,
    "vtab/dsprites_label_x_position": CLASSIFICATION,
    "vtab/dtd": CLASSIFICATION,
    "vtab/eurosat": CLASSIFICATION,
    "vtab/flowers": CLASSIFICATION,
    "vtab/kitti_closest_vehicle_distance": CLASSIFICATION,
    "vtab/pcam": CLASSIFICATION,
    "vtab/pets": CLASSIFICATION,
    "vtab/resisc45": CLASSIFICATION,
    "vtab/smallnorb_label_azimuth": CLASSIFICATION,
    "vtab/smallnorb_label_elevation": CLASSIFICATION,
    "vtab/svhn": CLASSIFICATION,
    "flickr30k": RETRIEVAL,
    "flickr8k": RETRIEVAL,
    "mscoco_captions": RETRIEVAL,
}


class DatasetError(ValueError):
    """A set is unknown, absent, malformed or empty; the message names the set and the fault."""


class PublicBenchmarkMissing(DatasetError):
    """A public benchmark is configured but no local copy is present."""


@dataclass
class EvalSet:
    """One split of one set, fully in memory (raw image bytes; decoding happens where it runs)."""

    name: str
    task: str
    root: Path
    split: str
    keys: list[str]
    images: list[bytes]
    labels: list[int] = field(default_factory=list)  # classification
    captions: list[list[str]] = field(default_factory=list)  # retrieval: several per image
    classnames: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def locate(name: str, eval_root: str | Path, public_root: str | Path) -> Path:
    """The folder of a set: a folder of the local eval root, else a known public benchmark."""
    local = resolve_path(eval_root) / name
    if local.is_dir():
        return local
    if name in PUBLIC_BENCHMARKS:
        base = resolve_path(public_root)
        slug = name.replace("/", "-")
        for candidate in (
            base / name,
            base / slug,
            base / f"wds_{slug.replace('-', '_')}",
            base / f"wds_{slug}",
        ):
            if candidate.is_dir():
                return candidate
        raise PublicBenchmarkMissing(
            f"public benchmark {name!r} is not present under {base} (looked for {name}/ and "
            f"wds_{slug}/ holding CLIP_benchmark's webdataset layout, e.g. a local copy of "
            f"huggingface.co/datasets/clip-benchmark/wds_{slug}); it cannot be downloaded offline"
        )
    known = (
        sorted(p.name for p in resolve_path(eval_root).glob("*") if p.is_dir())
        if resolve_path(eval_root).is_dir()
        else []
    )
    raise DatasetError(
        f"unknown dataset {name!r}: no folder {local} (local sets there: {known or 'none; run the sample stage'}) "
        f"and not a public benchmark ({', '.join(sorted(PUBLIC_BENCHMARKS))})"
    )


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def dataset_task(root: Path) -> str:
    """CLIP_benchmark's rule: dataset_type.txt says "retrieval", else classification."""
    kind = root / "dataset_type.txt"
    if kind.exists():
        return (
            RETRIEVAL
            if kind.read_text(encoding="utf-8").strip().lower() == "retrieval"
            else CLASSIFICATION
        )
    if (root / "classnames.txt").exists():
        return CLASSIFICATION
    return RETRIEVAL if _has_captions(root) else CLASSIFICATION


def _has_captions(root: Path) -> bool:
    for shard in sorted(root.glob("*/*.tar"))[:1]:
        names = member_names(shard)
        return any(n.endswith(".txt") for n in names) and not any(n.endswith(".cls") for n in names)
    return False


def shard_paths(root: Path, split: str) -> list[Path]:
    """The split's shards: {0..n-1}.tar from nshards.txt when present, else every .tar in order."""
    folder = root / split
    if not folder.is_dir():
        have = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DatasetError(
            f"{root.name}: no split {split!r} (folder {folder} missing; splits present: {have})"
        )
    nshards = folder / "nshards.txt"
    if nshards.exists():
        paths = [folder / f"{i}.tar" for i in range(int(nshards.read_text().strip()))]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise DatasetError(f"{root.name}/{split}: nshards.txt lists missing shards {missing}")
        return paths
    return sorted(
        folder.glob("*.tar"),
        key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)],
    )


def read_samples(paths: list[Path]) -> list[tuple[str, dict[str, bytes]]]:
    """Every sample of the shards, in order (tasks.io.wds groups members by webdataset's rule)."""
    return [sample for path in paths for sample in iter_samples(path)]


def _image_of(name: str, key: str, fields: dict[str, bytes]) -> bytes:
    data = image_bytes(fields)
    if data is None:
        raise DatasetError(
            f"{name}: sample {key!r} has no image ({'/'.join(IMAGE_EXTS)}); fields: {sorted(fields)}"
        )
    return data


def load_set(
    name: str, eval_root: str | Path, public_root: str | Path, split: str = "test"
) -> EvalSet:
    """Read one split of a set into memory, checking what each task needs."""
    root = locate(name, eval_root, public_root)
    task = dataset_task(root)
    samples = read_samples(shard_paths(root, split))
    if not samples:
        raise DatasetError(f"{name}/{split}: empty split (no samples in {root / split})")
    out = EvalSet(name=name, task=task, root=root, split=split, keys=[], images=[])
    for key, fields in samples:
        out.keys.append(key)
        out.images.append(_image_of(name, key, fields))
        if task == RETRIEVAL:
            if "txt" not in fields:
                raise DatasetError(f"{name}: retrieval sample {key!r} has no .txt captions")
            out.captions.append(fields["txt"].decode("utf-8").splitlines())
        else:
            if "cls" not in fields:
                raise DatasetError(f"{name}: classification sample {key!r} has no .cls label")
            out.labels.append(int(fields["cls"].decode("utf-8").strip()))
    if task == CLASSIFICATION:
        _attach_class_info(out)
    elif not any(out.captions):
        raise DatasetError(f"{name}: retrieval set with no captions at all")
    return out


def _attach_class_info(out: EvalSet) -> None:
    names_file = out.root / "classnames.txt"
    templates_file = out.root / "zeroshot_classification_templates.txt"
    if not names_file.exists():
        raise DatasetError(f"{out.name}: missing class names ({names_file})")
    if not templates_file.exists():
        raise DatasetError(f"{out.name}: missing zero-shot templates ({templates_file})")
    out.classnames = [c for c in _read_lines(names_file) if c]
    out.templates = [t for t in _read_lines(templates_file) if t]
    if not out.classnames:
        raise DatasetError(f"{out.name}: {names_file} holds no class names")
    if not out.templates:
        raise DatasetError(f"{out.name}: {templates_file} holds no templates")
    bad = [t for t in out.templates if "{c}" not in t]
    if bad:
        raise DatasetError(f"{out.name}: templates without the {{c}} placeholder: {bad[:3]}")
    worst = max(out.labels)
    if worst >= len(out.classnames) or min(out.labels) < 0:
        raise DatasetError(
            f"{out.name}: label {worst} out of range for {len(out.classnames)} class names in {names_file}"
        )


def has_split(name: str, eval_root: str | Path, public_root: str | Path, split: str) -> bool:
    root = locate(name, eval_root, public_root)
    return (root / split).is_dir() and bool(shard_paths(root, split))
