"""The one shape every image-text source is read into, and seeded, order-free choices over it."""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Item:
    """One image with its texts, as a source describes it (before any site or eval decision)."""

    source: str  # openclipart | emoji | tuxpaint
    item_id: str  # unique within the source, path-like; used in site URLs
    image: str  # absolute path of the image file (PNG, or SVG when raster is False)
    ext: str  # file extension without the dot: png | svg
    category: str  # top category: the class of the classification eval sets
    subcategory: str  # finer class (emoji subgroup, leaf folder)
    alts: dict[str, str]  # language -> alt text shown on the site
    title: str  # title attribute (keywords, description)
    captions: tuple[
        str, ...
    ]  # English captions for the retrieval set (several where the source has them)
    group: str  # items of one group (pixel-identical copies, skin-tone variants) split together
    aliases: tuple[str, ...] = field(default=())  # other category paths listing the same image
    raster: bool = True  # the image can go into an eval set as it is
    rank: int = 0  # display order within the source (the source's own order where it has one)

    @property
    def uid(self) -> str:
        return f"{self.source}/{self.item_id}"


def stable_hash(*parts: object) -> int:
    """A 64-bit hash that is the same on every machine and Python run (unlike hash())."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def stable_unit(*parts: object) -> float:
    """A number in [0, 1) drawn from the parts: the seeded coin every noise decision flips."""
    return stable_hash(*parts) / 2**64


def seeded_order(keys: Iterable[str], seed: int, salt: str) -> list[str]:
    """The keys in a seeded pseudo-random order that does not depend on the input order."""
    return sorted(set(keys), key=lambda k: (stable_hash(seed, salt, k), k))


def slug(text: str) -> str:
    """A URL-safe name: lower case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def cap_items(items: list[Item], cap: int, seed: int) -> list[Item]:
    """Keep `cap` items (0 = all), chosen by seed, whole groups at a time, in id order."""
    items = sorted(items, key=lambda it: it.item_id)
    if not cap or cap >= len(items):
        return items
    by_group: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_group[it.group].append(it)
    kept: list[Item] = []
    for g in seeded_order(by_group, seed, "cap"):
        if len(kept) >= cap:
            break
        kept.extend(by_group[g])
    return sorted(kept, key=lambda it: it.item_id)


def held_out_groups(
    items: list[Item],
    fraction: float,
    seed: int,
    min_class_items: int,
    max_per_class: int,
    skip_classes: Iterable[str] = (),
    class_of: str = "subcategory",
) -> set[str]:
    """Groups held out for evaluation: a share of every class, stratified, whole groups.

    Whole groups move together, so a held-out image never leaves a pixel-identical twin on the
    site. Eligible: raster groups with one unambiguous class (no listing under another one).
    """
    skip = set(skip_classes)
    classes_of_group: dict[str, set[str]] = defaultdict(set)
    raster: dict[str, bool] = defaultdict(lambda: True)
    first: dict[str, Item] = {}
    for it in items:
        first.setdefault(it.group, it)
        classes_of_group[it.group].add(getattr(it, class_of))
        if class_of == "category":  # listed under another category too: an ambiguous label
            classes_of_group[it.group].update(a.split("/")[0] for a in it.aliases if "/" in a)
        raster[it.group] &= it.raster
    per_class: dict[str, list[str]] = defaultdict(list)
    for g, classes in classes_of_group.items():
        if len(classes) == 1 and raster[g]:
            (cls,) = classes
            if cls not in skip and first[g].category not in skip:
                per_class[cls].append(g)
    held: set[str] = set()
    for cls, groups in sorted(per_class.items()):
        if len(groups) < min_class_items or fraction <= 0:
            continue
        n = max(1, math.floor(len(groups) * fraction))
        if max_per_class:
            n = min(n, max_per_class)
        held.update(seeded_order(groups, seed, f"eval:{cls}")[:n])
    eligible = [g for groups in per_class.values() for g in groups]
    if not held and eligible and fraction > 0:  # a tiny slice: no class is big enough alone
        held.update(
            seeded_order(eligible, seed, "eval")[: max(1, math.floor(len(eligible) * fraction))]
        )
    return held
