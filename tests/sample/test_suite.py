"""The merging task suite's splits: every task has train and val splits with captions, class
names equal to the eval set's, and no suite image is an eval image."""

from __future__ import annotations

import hashlib
import tarfile
from collections import Counter

import pyarrow.parquet as pq
import pytest

SETS = ["emoji_groups", "fashion_mnist", "openclipart_categories", "tuxpaint_categories"]


def _members(path):  # noqa: ANN001, ANN202
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


@pytest.mark.parametrize("name", SETS)
def test_suite_sets_have_train_and_val_with_captions(small_sample, name):
    out, params, counts = small_sample
    folder = out / "suite" / name
    assert (folder / "classnames.txt").read_text() == (
        out / "eval" / name / "classnames.txt"
    ).read_text()
    classes = (folder / "classnames.txt").read_text().splitlines()
    for split, per_class in (
        ("train", params.suite_train_per_class),
        ("val", params.suite_val_per_class),
    ):
        members = _members(folder / split / "0.tar")
        keys = {n.split(".")[0] for n in members}
        assert keys and counts["suite"][name][split] == len(keys)
        labels = Counter(int(members[f"{k}.cls"]) for k in keys)
        assert max(labels.values()) <= per_class
        for k in keys:
            caption = members[f"{k}.txt"].decode()
            assert classes[int(members[f"{k}.cls"])] in caption


def test_no_suite_image_is_an_eval_image(small_sample):
    out, _, _ = small_sample
    evals = {r["image_sha256"] for r in pq.read_table(out / "eval" / "items.parquet").to_pylist()}
    suite = set()
    for path in (out / "suite").glob("*/*/0.tar"):
        for name, data in _members(path).items():
            if name.endswith((".png", ".jpg", ".webp")):
                suite.add(hashlib.sha256(data).hexdigest())
    assert suite and not suite & evals
    # train and val do not share an image either
    for name in SETS:
        tr = {
            hashlib.sha256(d).hexdigest()
            for n, d in _members(out / "suite" / name / "train/0.tar").items()
            if n.endswith(".png")
        }
        va = {
            hashlib.sha256(d).hexdigest()
            for n, d in _members(out / "suite" / name / "val/0.tar").items()
            if n.endswith(".png")
        }
        assert not tr & va, name
