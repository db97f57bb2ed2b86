"""The plain contrastive objective (CLIP or SigLIP from open_clip), with FLIP patch dropout.

FLIP (Li et al. 2023) is open_clip's patch dropout on the visual tower: each training forward keeps
the CLS token and `max(1, int(N * (1 - ratio)))` random patches. `patch_dropout.final_unmasked_steps`
switches it off for the last steps of the run (FLIP's unmasked tuning phase). This is the only
objective that accumulates: with accum_steps > 1 it uses open_clip's feature caching (features of
every micro-batch computed without gradients, then each micro-batch recomputed with gradients and
the loss taken over the full batch), so all negatives are seen. With FLIP on, the caching pass and
the gradient pass draw different random patches, as in open_clip_train.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.clip.texttrim import clip_forward
from tasks.train.loop import LOSSES, _loss_of
from tasks.train.objectives.base import Batch, ObjectiveBase
from tasks.train.objectives.masking import PatchKeep, install_patch_keep
from tasks.train.params import TrainParams

if TYPE_CHECKING:
    from torch import Tensor


def flip_ratio_at(step: int, p: TrainParams) -> float:
    """Patch dropout ratio for optimizer step `step`: the ratio, then 0 for the final phase."""
    cfg = p.patch_dropout
    return 0.0 if step >= p.steps - cfg.final_unmasked_steps else cfg.ratio


class FlipSchedule:
    """Sets the ViT's patch-dropout ratio for each step (a no-op object when FLIP is off)."""

    def __init__(self, p: TrainParams, model: Any) -> None:
        self.p = p
        self.keeper: PatchKeep | None = (
            install_patch_keep(model, "patch_dropout.ratio") if p.patch_dropout.ratio > 0 else None
        )

    def set_step(self, step: int) -> float:
        if self.keeper is None:
            return 0.0
        self.keeper.keep = None
        self.keeper.prob = flip_ratio_at(step, self.p)
        return self.keeper.prob


class ContrastiveObjective(ObjectiveBase):
    """`LOSSES[p.loss]` over the batch's (image, text) pairs; FLIP when patch_dropout.ratio > 0."""

    accumulates = True

    def __init__(self, p: TrainParams, model: Any, rank: int, world: int) -> None:
        super().__init__()
        self.loss_fn = LOSSES[p.loss](p, rank, world)
        self.flip = FlipSchedule(p, model)

    def loss(self, model: Any, batch: Batch, step: int) -> Tensor:
        ratio = self.flip.set_step(step)
        loss = _loss_of(self.loss_fn, clip_forward(model, batch.images, batch.texts))
        self._terms = {"patch_dropout": ratio} if self.flip.keeper is not None else {}
        return loss

    def forward_backward_accum(
        self, model: Any, batch: Batch, step: int, accum: int, amp: Any
    ) -> Tensor:
        """open_clip's gradient accumulation with feature caching; returns the last micro-loss."""
        import torch

        self.flip.set_step(step)
        imgs, txts = batch.images.chunk(accum), batch.texts.chunk(accum)
        with torch.no_grad(), amp:
            cached = [clip_forward(model, i, t) for i, t in zip(imgs, txts, strict=True)]
        loss = None
        for j, (i, t) in enumerate(zip(imgs, txts, strict=True)):
            with amp:
                out = clip_forward(model, i, t)
                feats = {
                    k: torch.cat([out[k] if m == j else c[k] for m, c in enumerate(cached)])
                    for k in ("image_features", "text_features")
                }
                feats["logit_scale"] = out["logit_scale"]
                if "logit_bias" in out:
                    feats["logit_bias"] = out["logit_bias"]
                loss = _loss_of(self.loss_fn, feats)
            loss.backward()
        assert loss is not None
        return loss.detach()
