"""Which items are held out of the site, and the evaluation sets built from them."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.io import clipbench
from tasks.io.clipbench import Sample
from tasks.sample import fashion_mnist
from tasks.sample.evalsets import TEMPLATES
from tasks.sample.items import Item, cap_items, held_out_groups, seeded_order
from tasks.sample.params import SampleParams

READABLE = {"naturalforces": "natural forces", "signs_and_symbols": "signs and symbols"}


@dataclass(frozen=True)
class EvalRecord:
    """One sample of one eval set: where it came from, what it is labelled."""

    eval_set: str
    key: str
    source: str
    item_id: str
    label: int | None
    classname: str | None
    captions: tuple[str, ...]
    image: bytes
    ext: str

    def row(self) -> dict:
        return {
            "eval_set": self.eval_set,
            "key": self.key,
            "source": self.source,
            "item_id": self.item_id,
            "label": self.label,
            "classname": self.classname,
            "captions": list(self.captions),
            "image_sha256": hashlib.sha256(self.image).hexdigest(),
        }


def readable(name: str) -> str:
    return READABLE.get(name, name.replace("_", " ").replace("-", " ")).lower()


def representatives(items: Sequence[Item], held: set[str]) -> list[Item]:
    """One item per held-out group (its first by id): an eval set holds no exact duplicates."""
    seen: dict[str, Item] = {}
    for it in sorted(items, key=lambda it: it.item_id):
        if it.group in held:
            seen.setdefault(it.group, it)
    return sorted(seen.values(), key=lambda it: it.item_id)


def classification(
    name: str,
    items: Sequence[Item],
    attr: str,
    class_order: Sequence[str],
    templates: Sequence[str],
) -> tuple[list[EvalRecord], list[str], Sequence[str]]:
    """Records of a classification set whose classes are `class_order` (only those present)."""
    present = {getattr(it, attr) for it in items}
    classes = [c for c in class_order if c in present]
    index = {c: i for i, c in enumerate(classes)}
    records = []
    for n, it in enumerate(sorted(items, key=lambda it: (index[getattr(it, attr)], it.item_id))):
        cls = getattr(it, attr)
        data = Path(it.image).read_bytes()
        records.append(
            EvalRecord(
                name,
                clipbench.sample_key(n),
                it.source,
                it.item_id,
                index[cls],
                readable(cls),
                it.captions,
                data,
                it.ext,
            )
        )
    return records, [readable(c) for c in classes], templates


def retrieval(items: Sequence[Item], max_items: int, seed: int) -> list[EvalRecord]:
    """Held-out images with every English caption their source has."""
    by_uid = {it.uid: it for it in items if it.captions}
    uids = seeded_order(by_uid, seed, "retrieval")
    uids = sorted(uids[:max_items] if max_items else uids)
    return [
        EvalRecord(
            "retrieval",
            clipbench.sample_key(n),
            by_uid[u].source,
            by_uid[u].item_id,
            None,
            None,
            by_uid[u].captions,
            Path(by_uid[u].image).read_bytes(),
            by_uid[u].ext,
        )
        for n, u in enumerate(uids)
    ]


def _label(sample: Sample) -> int:
    """Fashion-MNIST samples always carry a class index (read from the IDX label file)."""
    if sample.label is None:
        raise ValueError("a Fashion-MNIST sample has no label")
    return sample.label


def fashion(samples: Sequence[Sample]) -> list[EvalRecord]:
    return [
        EvalRecord(
            "fashion_mnist",
            clipbench.sample_key(n),
            "fashion_mnist",
            str(n),
            s.label,
            fashion_mnist.CLASSNAMES[_label(s)],
            (),
            s.image,
            s.ext,
        )
        for n, s in enumerate(samples)
    ]


def write_set(
    root: Path,
    name: str,
    records: list[EvalRecord],
    classnames: Sequence[str] | None,
    templates: Sequence[str] | None,
    max_per_shard: int,
) -> None:
    samples = [Sample(r.image, r.ext, r.label, r.captions) for r in records]
    if classnames is None:
        clipbench.write_retrieval(root / name, samples, max_per_shard)
    else:
        clipbench.write_classification(
            root / name, classnames, templates or (), samples, max_per_shard
        )


SOURCES = ("openclipart", "emoji", "tuxpaint")


def split(
    params: SampleParams, loaded: dict[str, list[Item]]
) -> tuple[dict[str, list[Item]], dict[str, list[Item]]]:
    """(on-site items, eval representatives) per source; held-out groups never reach the site."""
    rules = {  # cap, eval fraction, class attribute, classes that give no eval items
        "openclipart": (
            params.openclipart_max_items,
            params.openclipart_eval_fraction,
            "category",
            params.openclipart_skip_classes,
        ),
        "emoji": (params.emoji_max_items, params.emoji_eval_fraction, "subcategory", ()),
        "tuxpaint": (params.tuxpaint_max_items, params.tuxpaint_eval_fraction, "category", ()),
    }
    site, held_items = {}, {}
    for source, (cap, fraction, class_of, skip) in rules.items():
        items = cap_items(loaded[source], cap, params.seed)
        held = held_out_groups(
            items,
            fraction,
            params.seed,
            params.eval_min_class_items,
            params.eval_max_per_class,
            skip,
            class_of,
        )
        site[source] = [it for it in items if it.group not in held]
        held_items[source] = representatives(items, held)
    return site, held_items


def write_eval_sets(
    params: SampleParams,
    held: dict[str, list[Item]],
    emoji_all: list[Item],
    fashion_samples: Sequence[Sample],
    out: Path,
    fashion_train: Sequence[Sample] = (),
) -> dict[str, list[EvalRecord]]:
    """Write every eval set under out/; return the records (of the evaluated `test` splits).

    `fashion_train` becomes fashion_mnist's `train` split (for the linear probe; not an eval
    set, so it has no records). Sets built from the site's held-out items have no train split:
    their items are too few to spare, and every one of them is kept off the site.
    """
    emoji_order = sorted(emoji_all, key=lambda it: it.rank)
    groups = list(dict.fromkeys(it.category for it in emoji_order))
    subgroups = list(dict.fromkeys(it.subcategory for it in emoji_order))
    tux, clip = held["tuxpaint"], held["openclipart"]
    specs = {  # set -> (items, class attribute, class order, templates)
        "emoji_groups": (held["emoji"], "category", groups, TEMPLATES["emoji"]),
        "emoji_subgroups": (held["emoji"], "subcategory", subgroups, TEMPLATES["emoji"]),
        "tuxpaint_categories": (
            tux,
            "category",
            sorted({it.category for it in tux}),
            TEMPLATES["clipart"],
        ),
        "openclipart_categories": (
            clip,
            "category",
            sorted({it.category for it in clip}),
            TEMPLATES["clipart"],
        ),
    }
    shard = params.eval_shard_max_items
    sets = {"fashion_mnist": fashion(fashion_samples)}
    write_set(
        out, "fashion_mnist", sets["fashion_mnist"], fashion_mnist.CLASSNAMES,
        TEMPLATES["fashion_mnist"], shard,
    )  # fmt: skip
    if fashion_train:
        clipbench.write_classification(
            out / "fashion_mnist", fashion_mnist.CLASSNAMES, TEMPLATES["fashion_mnist"],
            fashion_train, shard, split="train",
        )  # fmt: skip
    for name, (items, attr, order, templates) in specs.items():
        sets[name], classnames, used = classification(name, items, attr, order, templates)
        write_set(out, name, sets[name], classnames, used, shard)
    everything = [it for s in SOURCES for it in held[s]]
    sets["retrieval"] = retrieval(everything, params.retrieval_max_items, params.seed)
    write_set(out, "retrieval", sets["retrieval"], None, None, shard)
    return dict(sorted(sets.items()))
