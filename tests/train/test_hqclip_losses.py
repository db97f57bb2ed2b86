"""HQ-CLIP losses and tag vocabulary against values worked out by hand (tasks/train/hqclip.py)."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.train.hqclip import build_vocab, hard_negative_clip_loss, tag_loss, tag_targets

EYE = torch.eye(2)
LN3 = math.log(3)
NEG = torch.tensor(
    [[1.0, 0.0], [0.0, 1.0]]
)  # sample 0's negative equals its own caption's embedding
HAS = torch.tensor([True, False])  # sample 1 has no negative: its row is masked out


def test_hard_negatives_by_hand() -> None:
    # logits I.T = [[ln3, 0], [0, ln3]]; the one real negative scores [ln3, 0] against the images.
    # row 0: -ln(3 / (3 + 1 + w*3)), row 1: -ln(3 / (1 + 3 + w*1)); t2i: -ln(3/4) = 0.287682
    # w = 1: rows 0.847298, 0.510826 -> i2t 0.679062 -> L = 0.5 * (0.679062 + 0.287682) = 0.483372
    loss = hard_negative_clip_loss(EYE, EYE, NEG, HAS, LN3, 1.0)
    assert float(loss) == pytest.approx(0.483372, abs=1e-6)
    # w = 0.5: rows -ln(3/5.5) = 0.606136, -ln(3/4.5) = 0.405465 -> L = 0.396741
    assert float(hard_negative_clip_loss(EYE, EYE, NEG, HAS, LN3, 0.5)) == pytest.approx(
        0.396741, abs=1e-6
    )
    # w = 0 and "no sample has a negative" are both plain CLIP
    assert float(hard_negative_clip_loss(EYE, EYE, NEG, HAS, LN3, 0.0)) == pytest.approx(
        -math.log(0.75), abs=1e-6
    )
    none = torch.tensor([False, False])
    assert float(hard_negative_clip_loss(EYE, EYE, NEG, none, LN3, 1.0)) == pytest.approx(
        -math.log(0.75), abs=1e-6
    )


def test_tag_loss_by_hand() -> None:
    # logits (0, ln3), targets (1, 0), weights (1, 0.1):
    # BCE(0, 1) = ln 2; BCE(ln3, 0) = ln(1 + 3) = ln 4; (ln2 + 0.1 ln4) / 1.1 = 0.756160
    loss = tag_loss(
        torch.tensor([[0.0, LN3]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1, 0.1]])
    )
    assert float(loss) == pytest.approx((math.log(2) + 0.1 * math.log(4)) / 1.1, abs=1e-6)
    assert float(loss) == pytest.approx(0.756160, abs=1e-6)


def test_tag_targets_and_weights() -> None:
    meta = {"short_positive": ["Red", " circle"], "short_negative": ["blue", "unknown"]}
    targets, weights = tag_targets(
        [meta], ["blue", "circle", "green", "red"], "short_positive", "short_negative", 0.1
    )
    assert targets.tolist() == [[0.0, 1.0, 0.0, 1.0]]
    assert torch.allclose(weights, torch.tensor([[1.0, 1.0, 0.1, 1.0]]))


def test_vocab_counts_samples_and_breaks_ties_alphabetically() -> None:
    metas = [
        {"p": ["red", "circle"], "n": ["blue"]},
        {"p": ["red", "red"], "n": ["blue"]},  # a tag named twice by one sample counts once
        {"p": ["square"], "n": ["green"]},
        {"p": "circle, square", "n": []},  # a comma-separated string is a list too
    ]
    # counts: red 2, blue 2, circle 2, square 2, green 1
    assert build_vocab(metas, ["p", "n"], min_count=2, max_tags=10) == [
        "blue",
        "circle",
        "red",
        "square",
    ]
    assert build_vocab(metas, ["p", "n"], min_count=1, max_tags=2) == ["blue", "circle"]
