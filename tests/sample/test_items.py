"""Seeded, order-free choices: caps and held-out groups."""

from __future__ import annotations

import random

from tasks.sample.items import Item, cap_items, held_out_groups, stable_unit


def _item(i: int, cls: str, group: str | None = None, raster: bool = True) -> Item:
    return Item("s", f"{cls}/{i:03d}", "/x.png", "png", cls, cls, {"en": str(i)}, "", (str(i),),
                group or f"g{i}", raster=raster)  # fmt: skip


def test_held_out_takes_whole_groups_per_class_whatever_the_order():
    items = [_item(i, "a" if i < 40 else "b", group=f"g{i // 2}") for i in range(80)]
    held = held_out_groups(items, 0.25, seed=3, min_class_items=4, max_per_class=0)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert held == held_out_groups(shuffled, 0.25, seed=3, min_class_items=4, max_per_class=0)
    assert len(held) == 10  # 20 groups per class, a quarter of each
    assert held != held_out_groups(items, 0.25, seed=4, min_class_items=4, max_per_class=0)


def test_ambiguous_or_non_raster_groups_stay_on_the_site():
    items = [_item(i, "a") for i in range(10)] + [_item(99, "b", group="g0")]
    items += [_item(i, "a", raster=False) for i in range(100, 110)]
    held = held_out_groups(items, 0.5, seed=0, min_class_items=2, max_per_class=3)
    assert "g0" not in held and len(held) == 3
    assert not {f"g{i}" for i in range(100, 110)} & held


def test_tiny_slices_still_give_eval_items():
    items = [_item(i, f"c{i}") for i in range(10)]  # ten classes of one item each
    assert len(held_out_groups(items, 0.2, seed=0, min_class_items=4, max_per_class=0)) == 2


def test_cap_keeps_groups_and_is_seeded():
    items = [_item(i, "a", group=f"g{i // 3}") for i in range(30)]
    kept = cap_items(items, 10, seed=0)
    assert len(kept) == 12 and len({it.group for it in kept}) == 4
    assert cap_items(list(reversed(items)), 10, seed=0) == kept
    assert cap_items(items, 0, seed=0) == sorted(items, key=lambda it: it.item_id)
    assert 0 <= stable_unit("x", 1) < 1 and stable_unit("x", 1) == stable_unit("x", 1)
