"""Retrieval recall@k against hand-worked cases, including the any-positive rule."""

from __future__ import annotations

import pytest
import torch

from tasks.evaluate.retrieval import flatten_captions, mean_recall, recall_at_k


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_any_positive_rule_for_image_queries():
    # image 0 has captions t0, t1; image 1 has t2. Image 0 is closest to t1 (its second caption),
    # then t2; image 1 is closest to t0 (image 0's caption), then t2.
    images = _unit([1.0, 0.0], [0.0, 1.0])
    texts = _unit([0.1, 1.0], [1.0, 0.05], [0.6, 0.7])
    owner = [0, 0, 1]
    m = recall_at_k(images, texts, owner, ks=[1, 2])
    # image -> text @1: image 0 hits (t1 is a positive, ANY positive counts); image 1 misses (t0) -> 1/2
    assert m["text_retrieval_recall@1"] == pytest.approx(0.5)
    # @2: image 1's top 2 are t0 and t2 -> hit; image 0 hits -> 1
    assert m["text_retrieval_recall@2"] == pytest.approx(1.0)
    # text -> image @1: t0 -> image 1 (miss), t1 -> image 0 (hit), t2 -> image 1 (hit) -> 2/3
    assert m["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert m["image_retrieval_recall@2"] == pytest.approx(1.0)
    assert mean_recall(m, 1) == pytest.approx((0.5 + 2 / 3) / 2)


def test_any_positive_is_not_the_share_of_positives():
    # one image with 4 captions, two distractor images; only one caption is retrieved at k=1
    images = _unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0])
    texts = _unit([1.0, 0.0, 0.0], [0.0, 0.9, 0.1], [0.0, 0.1, 0.9], [0.5, 0.5, 0.0])
    m = recall_at_k(images, texts, [0, 0, 0, 0], ks=[1])
    # image 0 hits: 1 of its 4 captions is its top-1 (the "actual recall" would be 1/4);
    # images 1 and 2 have no captions and count as misses, as in CLIP_benchmark -> 1/3
    assert m["text_retrieval_recall@1"] == pytest.approx(1 / 3)


def test_k_larger_than_gallery_is_everything():
    images = _unit([1.0, 0.0], [0.0, 1.0])
    texts = _unit([0.0, 1.0], [1.0, 0.0])
    m = recall_at_k(images, texts, [0, 1], ks=[10])
    assert m["image_retrieval_recall@10"] == 1.0 and m["text_retrieval_recall@10"] == 1.0


def test_flatten_captions_keeps_owners():
    texts, owner = flatten_captions([["a", "b"], [], ["c"]])
    assert texts == ["a", "b", "c"] and owner == [0, 0, 2]


def test_empty_split_is_refused():
    with pytest.raises(ValueError, match="empty split"):
        recall_at_k(torch.zeros(0, 2), torch.zeros(0, 2), [], ks=[1])
