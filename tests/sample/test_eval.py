"""Evaluation sets: CLIP_benchmark's webdataset layout, held out of the site, planted near-duplicates."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.sample import planted

SETS = (
    "fashion_mnist",
    "emoji_groups",
    "emoji_subgroups",
    "tuxpaint_categories",
    "openclipart_categories",
    "retrieval",
)


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.mark.parametrize("name", SETS)
def test_clip_benchmark_layout(small_sample, name):
    out, _, counts = small_sample
    folder = out / "eval" / name
    kind = (folder / "dataset_type.txt").read_text().strip()
    assert kind == ("retrieval" if name == "retrieval" else "classification")
    nshards = int((folder / "test" / "nshards.txt").read_text())
    members: dict[str, bytes] = {}
    for n in range(nshards):
        members.update(_members(folder / "test" / f"{n}.tar"))
    keys = sorted({m.rsplit(".", 1)[0] for m in members})
    assert keys == [f"s{i:07d}" for i in range(len(keys))]
    assert len(keys) == counts["eval"][name] > 0
    if kind == "classification":
        classes = (folder / "classnames.txt").read_text().splitlines()
        templates = (folder / "zeroshot_classification_templates.txt").read_text().splitlines()
        assert templates and all("{c}" in t for t in templates)
        labels = [int(members[f"{k}.cls"]) for k in keys]
        assert min(labels) >= 0 and max(labels) < len(classes)
    else:
        assert all(members[f"{k}.txt"].decode().splitlines() for k in keys)
    Image.open(io.BytesIO(members[f"{keys[0]}.png"])).verify()


def test_webdataset_reads_it_as_clip_benchmark_does(small_sample):
    import webdataset as wds

    out, _, counts = small_sample
    pattern = str(out / "eval" / "fashion_mnist" / "test" / "{0..0}.tar")
    ds = (
        wds.WebDataset(pattern, shardshuffle=False)
        .decode("pil")
        .to_tuple("webp;png;jpg;jpeg", "cls")
    )
    samples = list(ds)
    assert len(samples) == counts["eval"]["fashion_mnist"]
    assert samples[0][0].size == (28, 28) and isinstance(samples[0][1], int)


def test_fashion_mnist_and_emoji_classes(small_sample):
    out, _, _ = small_sample
    assert len((out / "eval" / "fashion_mnist" / "classnames.txt").read_text().splitlines()) == 10
    groups = (out / "eval" / "emoji_groups" / "classnames.txt").read_text().splitlines()
    assert set(groups) <= {
        "smileys & emotion",
        "people & body",
        "animals & nature",
        "food & drink",
        "travel & places",
        "activities",
        "objects",
        "symbols",
        "flags",
    }


def _site_hashes(site: Path) -> set[str]:
    return {hashlib.sha256(p.read_bytes()).hexdigest() for p in site.rglob("*") if p.is_file()}


def test_eval_items_never_appear_on_the_site(small_sample):
    out, _, _ = small_sample
    items = pq.read_table(out / "eval" / "items.parquet").to_pylist()
    assert not {r["image_sha256"] for r in items} & _site_hashes(out / "site")
    rows = pq.read_table(out / "metadata" / "site_images.parquet").to_pylist()
    on_site = {
        (r["source"], r["item_id"])
        for r in rows
        if r["kind"] in ("item", "alias", "duplicate", "private")
    }
    held = {(r["source"], r["item_id"]) for r in items}
    assert not on_site & held


def test_planted_near_duplicates_are_on_the_site_and_listed(small_sample):
    out, params, counts = small_sample
    plant = pq.read_table(out / "eval" / "planted_near_duplicates.parquet").to_pylist()
    assert len(plant) == params.planted_count == counts["planted_near_duplicates"]
    assert {p["transformation"] for p in plant} == set(params.planted_transforms)
    assert len({p["eval_set"] for p in plant}) == 4  # every primary set is represented
    items = {
        (r["eval_set"], r["key"]): r
        for r in pq.read_table(out / "eval" / "items.parquet").to_pylist()
    }
    rows = pq.read_table(out / "metadata" / "site_images.parquet").to_pylist()
    planted_paths = {r["path"] for r in rows if r["kind"] == "planted"}
    for p in plant:
        data = (out / "site" / p["site_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == p["sha256"]
        assert p["site_path"] in planted_paths
        source = items[(p["eval_set"], p["eval_key"])]
        assert source["image_sha256"] != p["sha256"]  # transformed, not a copy
        for other in p["other_eval_keys"]:
            assert tuple(other.split("/")) in items


def test_transformations_keep_the_picture():
    im = Image.new("RGB", (80, 60), (120, 40, 200))
    im.paste((10, 200, 10), (10, 10, 40, 40))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    for name in planted.TRANSFORMS:
        data, ext = planted.transform(buf.getvalue(), name, f"k:{name}")
        out = Image.open(io.BytesIO(data)).convert("RGB")
        assert data != buf.getvalue() and ext in ("png", "jpg")
        small = out.resize((8, 6)).getdata()
        ref = im.resize((8, 6)).getdata()
        diff = sum(
            abs(a - b) for p, q in zip(small, ref, strict=True) for a, b in zip(p, q, strict=True)
        )
        assert diff / (8 * 6 * 3) < 60, name
    assert Counter(planted.transform(buf.getvalue(), "jpeg", "x")[1] for _ in range(2)) == {
        "jpg": 2
    }


def _split_members(folder: Path, split: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for n in range(int((folder / split / "nshards.txt").read_text())):
        members.update(_members(folder / split / f"{n}.tar"))
    return members


def test_fashion_mnist_train_split_is_a_seeded_balanced_subset(small_sample):
    """The probe's train split: CLIP_benchmark layout, real train images, balanced, no eval data."""
    import numpy as np

    from tasks.sample import fashion_mnist
    from tasks.sample.debian import extracted_dir, find_path
    from tasks.settings import get_settings

    out, params, counts = small_sample
    folder = out / "eval" / "fashion_mnist"
    members = _split_members(folder, "train")
    keys = sorted({m.rsplit(".", 1)[0] for m in members})
    n = params.fashion_mnist_train_max_items
    assert keys == [f"s{i:07d}" for i in range(n)]
    assert counts["eval_train_split"] == {"fashion_mnist": n}
    labels = [int(members[f"{k}.cls"]) for k in keys]
    assert Counter(labels) == dict.fromkeys(range(10), n // 10)
    # the very images of the train IDX file at the seeded indices, in file order
    pkg = extracted_dir(get_settings().cache_dir) / "dataset-fashion-mnist"
    images = fashion_mnist.read_idx(find_path(pkg, "train-images-idx3-ubyte*", "fashion"))
    chosen = fashion_mnist.balanced_subset(
        fashion_mnist.read_idx(find_path(pkg, "train-labels-idx1-ubyte*", "fashion")),
        n,
        params.seed,
    )
    for key, index in zip(keys[:5], chosen[:5], strict=True):
        pixels = np.asarray(Image.open(io.BytesIO(members[f"{key}.png"])))
        assert np.array_equal(pixels, images[index])
    # not an eval set: decontamination's items list and the test split hold none of it
    items = pq.read_table(out / "eval" / "items.parquet").to_pylist()
    train_hashes = {hashlib.sha256(members[f"{k}.png"]).hexdigest() for k in keys}
    assert not train_hashes & {r["image_sha256"] for r in items}
    assert len(items) == sum(counts["eval"].values())


def test_balanced_subset_follows_seed_and_cap():
    import numpy as np

    from tasks.sample.fashion_mnist import balanced_subset

    labels = np.repeat(np.arange(3), [10, 10, 4])
    a = balanced_subset(labels, 10, seed=0)
    assert list(np.bincount(labels[a])) == [4, 3, 3]  # 10 // 3 each, the first class one more
    assert np.array_equal(a, np.sort(a)) and len(set(a)) == 10
    assert np.array_equal(a, balanced_subset(labels, 10, seed=0))
    assert not np.array_equal(a, balanced_subset(labels, 10, seed=1))
    assert list(np.bincount(labels[balanced_subset(labels, 18, seed=0)])) == [6, 6, 4]  # capped
    assert np.array_equal(balanced_subset(labels, 0, seed=0), np.arange(24))
