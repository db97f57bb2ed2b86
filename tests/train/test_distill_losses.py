"""Distillation losses against values worked out by hand on 2x2 examples (tasks/train/distill.py).

Embeddings are unit vectors along the axes, so every logit is 0 or the scale, and with scales
ln 3 and ln 7 every softmax is a ratio of small integers: 3/4, 1/4, 7/8, 1/8.
"""

from __future__ import annotations

import math

import pytest
import torch

from tasks.train.distill import (
    affinity_loss,
    clip_ce,
    feature_distill_loss,
    kd_loss,
    mobileclip_loss,
    teacher_probs,
)

EYE = torch.eye(2)
SWAP = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
LN3, LN7 = math.log(3), math.log(7)


def test_ensemble_averages_after_softmax_each_teacher_with_its_scale() -> None:
    # teacher 1 (scale ln 3): rows (3/4, 1/4); teacher 2 (scale ln 7): rows (7/8, 1/8);
    # mean of the probabilities: (13/16, 3/16). Averaging logits instead would give
    # sqrt(21)/(sqrt(21)+1) = 0.8209, not 0.8125.
    i2t, t2i = teacher_probs([EYE, EYE], [EYE, EYE], [LN3, LN7])
    want = torch.tensor([[13 / 16, 3 / 16], [3 / 16, 13 / 16]])
    assert torch.allclose(i2t, want) and torch.allclose(t2i, want)


def test_kd_against_ensemble_by_hand() -> None:
    # student softmax rows (3/4, 1/4); H = -(13/16 ln 3/4 + 3/16 ln 1/4) = 0.493672 per direction
    p = teacher_probs([EYE, EYE], [EYE, EYE], [LN3, LN7])
    loss = kd_loss(EYE, EYE, LN3, *p)
    assert float(loss) == pytest.approx(13 / 16 * -math.log(0.75) + 3 / 16 * math.log(4), abs=1e-6)
    assert float(loss) == pytest.approx(0.493672, abs=1e-6)


def test_kd_uses_both_directions() -> None:
    # texts both (1, 0): image->text rows (1/2, 1/2); text->image rows (3/4, 1/4), (3/4, 1/4);
    # one-hot targets: i2t -ln 1/2 = 0.693147; t2i mean(-ln 3/4, -ln 1/4) = 0.836988
    text = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = kd_loss(EYE, text, LN3, EYE, EYE)
    assert float(loss) == pytest.approx(0.5 * (0.693147 + 0.836988), abs=1e-6)


def test_clip_ce_by_hand() -> None:
    assert float(clip_ce(EYE, EYE, LN3)) == pytest.approx(-math.log(0.75), abs=1e-6)
    assert float(clip_ce(EYE, SWAP, LN3)) == pytest.approx(math.log(4), abs=1e-6)


def test_mobileclip_mean_over_caption_types() -> None:
    # type 1 (texts = EYE): 0.5 * 0.287682 + 2 * 0.493672 = 1.131185
    # type 2 (texts swapped): CLIP 1.386294; KD = -(13/16 ln 1/4 + 3/16 ln 3/4) = 1.180304
    #   -> 0.5 * 1.386294 + 2 * 1.180304 = 3.053755; mean = 2.092470
    teachers = [[EYE, EYE], [EYE, EYE]]
    loss = mobileclip_loss(EYE, [EYE, SWAP], LN3, [EYE, EYE], teachers, [LN3, LN7], 0.5, 2.0)
    assert float(loss) == pytest.approx(2.092470, abs=1e-5)
    only_clip = mobileclip_loss(EYE, [EYE], LN3, [EYE], [[EYE]], [LN3], 1.0, 0.0)
    assert float(only_clip) == pytest.approx(-math.log(0.75), abs=1e-6)


def test_affinity_is_kd_with_a_fixed_student_scale() -> None:
    loss = affinity_loss(EYE, EYE, LN3, [EYE, EYE], [EYE, EYE], [LN3, LN7])
    assert float(loss) == pytest.approx(0.493672, abs=1e-6)


def test_mismatched_teachers_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match="same number"):
        teacher_probs([EYE], [EYE, EYE], [LN3])


def test_feature_distillation_fd_and_icl_by_hand() -> None:
    # student image = text = EYE; teacher image EYE, teacher text SWAP.
    # FD: images agree (0); each text row is sqrt(2) from its target: 2 per row, mean 2.
    # ICL: student image vs teacher texts = SWAP logits (0, ln 3): -ln 1/4 = 1.386294;
    #      student text vs teacher images = EYE logits: -ln 3/4 = 0.287682; half the sum 0.836988.
    # w_fd 2, w_icl 3: 4 + 2.510964 = 6.510964.
    loss = feature_distill_loss(EYE, [EYE], LN3, [EYE], [[SWAP]], [LN3], 0.0, 0.0, 2.0, 3.0)
    assert float(loss) == pytest.approx(6.510964, abs=1e-5)
    fd_only = feature_distill_loss(EYE, [EYE], LN3, [EYE], [[SWAP]], [LN3], 0.0, 0.0, 1.0, 0.0)
    assert float(fd_only) == pytest.approx(2.0, abs=1e-6)
    # two teachers: the second agrees everywhere (FD 0, ICL -ln 3/4), so each term is halved
    # against the first: FD (2 + 0) / 2 = 1; ICL (0.836988 + 0.287682) / 2 = 0.562335
    two = feature_distill_loss(
        EYE, [EYE], LN3, [EYE, EYE], [[SWAP, EYE]], [LN3, LN3], 0.0, 0.0, 1.0, 1.0
    )
    assert float(two) == pytest.approx(1.0 + 0.562335, abs=1e-5)
    # the CLIP-CE and KD terms are the mobileclip ones
    with_ce = feature_distill_loss(EYE, [EYE], LN3, [EYE], [[EYE]], [LN3], 1.0, 0.0, 0.0, 0.0)
    assert float(with_ce) == pytest.approx(-math.log(0.75), abs=1e-6)


def test_feature_distillation_refuses_unequal_widths() -> None:
    with pytest.raises(ValueError, match="embed_dim"):
        feature_distill_loss(EYE, [EYE], LN3, [torch.eye(3)[:2]], [[EYE]], [LN3], 0, 0, 1, 1)
