"""Reading CLIP_benchmark's webdataset layout, and clear errors for bad sets."""

from __future__ import annotations

import pytest

from tasks.evaluate.datasets import (
    CLASSIFICATION,
    RETRIEVAL,
    DatasetError,
    PublicBenchmarkMissing,
    load_set,
)

from .sets import COLOURS, make_classification, make_retrieval


def test_reads_classification_and_retrieval(tmp_path):
    make_classification(tmp_path / "colours", per_class=2)
    make_retrieval(tmp_path / "retrieval", n=5)
    s = load_set("colours", tmp_path, tmp_path / "public")
    assert s.task == CLASSIFICATION and len(s) == 12
    assert s.classnames == COLOURS and s.templates[0] == "a photo of a {c} square."
    assert s.labels[:4] == [0, 0, 1, 1]
    r = load_set("retrieval", tmp_path, tmp_path / "public")
    assert (
        r.task == RETRIEVAL
        and len(r) == 5
        and r.captions[0] == ["a red square number 0", "picture 0 in red"]
    )


def test_unknown_dataset_names_what_exists(tmp_path):
    make_classification(tmp_path / "colours", per_class=1)
    with pytest.raises(DatasetError, match="unknown dataset 'nope'.*colours"):
        load_set("nope", tmp_path, tmp_path / "public")


def test_absent_public_benchmark_says_where_it_looked(tmp_path):
    with pytest.raises(
        PublicBenchmarkMissing, match="imagenet1k.*not present under.*wds_imagenet1k"
    ):
        load_set("imagenet1k", tmp_path, tmp_path / "public")


def test_public_benchmark_found_under_its_hub_name(tmp_path):
    make_classification(tmp_path / "public" / "wds_vtab-cifar10", per_class=1)
    assert len(load_set("vtab/cifar10", tmp_path, tmp_path / "public")) == 6


@pytest.mark.parametrize("missing", ["classnames.txt", "zeroshot_classification_templates.txt"])
def test_missing_classnames_or_templates(tmp_path, missing):
    root = make_classification(tmp_path / "colours", per_class=1)
    (root / missing).unlink()
    if missing == "classnames.txt":
        (root / "dataset_type.txt").write_text("classification\n")
    with pytest.raises(DatasetError, match="missing (class names|zero-shot templates)"):
        load_set("colours", tmp_path, tmp_path)


def test_template_without_placeholder(tmp_path):
    root = make_classification(tmp_path / "colours", per_class=1)
    (root / "zeroshot_classification_templates.txt").write_text("a photo.\n")
    with pytest.raises(DatasetError, match="placeholder"):
        load_set("colours", tmp_path, tmp_path)


def test_empty_split_and_missing_split(tmp_path):
    root = make_classification(tmp_path / "colours", per_class=1)
    with pytest.raises(DatasetError, match="no split 'train'"):
        load_set("colours", tmp_path, tmp_path, split="train")
    for tar in (root / "test").glob("*.tar"):
        tar.unlink()
    (root / "test" / "nshards.txt").unlink()
    with pytest.raises(DatasetError, match="empty split"):
        load_set("colours", tmp_path, tmp_path)


def test_label_out_of_range(tmp_path):
    root = make_classification(tmp_path / "colours", per_class=1)
    (root / "classnames.txt").write_text("red\ngreen\n")
    with pytest.raises(DatasetError, match="label 5 out of range for 2 class names"):
        load_set("colours", tmp_path, tmp_path)
