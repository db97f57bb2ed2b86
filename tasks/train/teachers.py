"""Online distillation teachers: models loaded through the model library, frozen, with the inputs
each needs built from the same samples the student trains on.

A teacher sees the same crop as the student: with `train_augment` both run open_clip's training
transform (RandomResizedCrop) with the sample's own seed, and RandomResizedCrop draws its box from
the source image's size and the scale / ratio ranges only, not from the output size, so the same
seed gives the same box at the teacher's size and normalisation. Without augmentation both see
the whole image through their eval transforms. Captions are the student's picked caption (or
each `distill.caption_types` field), tokenised with the teacher's own tokenizer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tasks.train.data import Picked, decode_image, pick_caption_field


@dataclass
class Teacher:
    """One frozen teacher: its model, the image transform that matches the student's view, its
    tokenizer and the logit scale its softmax uses."""

    ref: str  # the model reference it was loaded from
    model: Any
    transform: Any
    tokenizer: Any
    logit_scale: float


def load_teachers(
    refs: Sequence[str], augment: bool, scale: float, device: Any = "cpu"
) -> list[Teacher]:
    """Each reference through `load_clip` (a failure names it), frozen in eval mode; `scale` 0 =
    the teacher's own learned logit scale."""
    from open_clip.model import get_model_preprocess_cfg

    from tasks.clip import load_clip, make_transforms

    if not refs:
        raise ValueError("distill.teachers: online distillation needs at least one teacher")
    out = []
    for ref in refs:
        model, _, tokenizer = load_clip(ref)
        train_tf, eval_tf, _ = make_transforms(model, get_model_preprocess_cfg(model))
        model = model.to(device).eval().requires_grad_(False)
        own = float(model.logit_scale.detach().exp())
        out.append(Teacher(ref, model, train_tf if augment else eval_tf, tokenizer, scale or own))
    return out


def type_captions(
    samples: list[dict[str, Any]], picked: Picked, field: str | None
) -> tuple[list[str], list[str]]:
    """(fields, captions) of one caption type: the picked ones (None) or the field's own, falling
    back to the alt text where a sample lacks it."""
    if field is None:
        return picked.fields, picked.captions
    chosen = [
        pick_caption_field(s, {field: 1.0}, random.Random(x))
        for s, x in zip(samples, picked.seeds, strict=True)
    ]
    return [c[0] for c in chosen], [c[1] for c in chosen]


class OnlineTeacherInputs:
    """Batch extras for online distillation: `teacher_images:<k>`, `teacher_texts:<k>:<c>` (teacher
    k's inputs, caption type c) and `texts:<c>` (the student's tokens of caption field c)."""

    replaces_images = False

    def __init__(
        self,
        teachers: Sequence[Teacher],
        types: Sequence[str | None],
        augment: bool,
        tokenizer: Any,
    ) -> None:
        self.teachers, self.types, self.augment, self.tokenizer = (
            teachers,
            types,
            augment,
            tokenizer,
        )

    def __call__(self, samples: list[dict[str, Any]], picked: Picked) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        captions = [type_captions(samples, picked, f)[1] for f in self.types]
        for c, f in enumerate(self.types):
            if f is not None:
                out[f"texts:{c}"] = self.tokenizer(captions[c])
        for k, t in enumerate(self.teachers):
            seeds = picked.seeds if self.augment else [None] * len(samples)
            out[f"teacher_images:{k}"] = torch.stack(
                [decode_image(s, t.transform, x) for s, x in zip(samples, seeds, strict=True)]
            )
            for c in range(len(self.types)):
                out[f"teacher_texts:{k}:{c}"] = t.tokenizer(captions[c])
        return out
