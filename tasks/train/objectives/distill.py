"""The distillation objective: online teachers run each step, or the reinforced dataset's stored
embeddings; TinyCLIP affinity mimicking, MobileCLIP's `w0 * CLIP + w1 * KD` or CLIP-KD's feature
terms (tasks/train/distill.py).

With several workers every feature set is gathered (open_clip's gather_features, with gradients
for the student's) and each worker computes the loss over the global batch, as open_clip's
ClipLoss does without local_loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.clip.texttrim import clip_forward, encode_text
from tasks.train.distill import affinity_loss, feature_distill_loss
from tasks.train.objectives.base import Batch, ObjectiveBase
from tasks.train.params import TrainParams

if TYPE_CHECKING:
    from torch import Tensor

OFFLINE_DEFAULT_SCALE = 100.0  # REFERENCE.md: MobileCLIP's teachers' softmax scale


class DistillObjective(ObjectiveBase):
    """Student features vs teacher targets; which teachers and loss the `distill` section says."""

    def __init__(self, p: TrainParams, model: Any, rank: int, world: int) -> None:
        super().__init__()
        if p.loss != "clip":
            raise ValueError(
                f"distill.mode {p.distill.mode!r} with loss {p.loss!r}: distillation matches "
                "softmax affinities; set loss: clip (or distill.mode: off)"
            )
        self.p, self.cfg, self.rank, self.world = p, p.distill, rank, world
        self.types: list[str | None] = list(p.distill.caption_types) or [None]
        self.teachers: list[Any] = []
        self.scales: list[float] = []
        if self.cfg.mode == "online":
            from tasks.train.teachers import load_teachers

            device = next(model.parameters()).device
            self.teachers = load_teachers(
                self.cfg.teachers, p.train_augment, self.cfg.teacher_logit_scale, device
            )
            self.scales = [t.logit_scale for t in self.teachers]

    def make_extras(self, built: Any) -> list[Any]:
        """The batch builders this objective's loss reads (teachers' inputs or stored views)."""
        if self.cfg.mode == "online":
            from tasks.train.teachers import OnlineTeacherInputs

            return [
                OnlineTeacherInputs(
                    self.teachers, self.types, self.p.train_augment, built.tokenizer
                )
            ]
        from tasks.train.reinforced_views import ReinforcedViews

        views = ReinforcedViews(
            self.cfg.reinforced_dir,
            built.preprocess_cfg,
            self.types,
            self.cfg.aug_pick,
            built.tokenizer,
        )
        stored = views.reader.manifest.extra.get("logit_scale", OFFLINE_DEFAULT_SCALE)
        self.scales = [self.cfg.teacher_logit_scale or float(stored)]
        return [views]

    def _gather(self, x: Tensor) -> Tensor:
        if self.world == 1:
            return x
        from open_clip.loss import gather_features

        return gather_features(x, x, False, True, self.rank, self.world)[0]

    def _teacher_targets(self, batch: Batch) -> tuple[list[Tensor], list[list[Tensor]]]:
        """Teacher k's image embeddings and, per caption type c, its text embeddings."""
        import torch
        import torch.nn.functional as F

        if self.cfg.mode == "offline":
            img = [F.normalize(batch.extras["teacher_image_emb:0"].float(), dim=-1)]
            txt = [
                [F.normalize(batch.extras[f"teacher_text_emb:0:{c}"].float(), dim=-1)]
                for c in range(len(self.types))
            ]
            return img, txt
        with torch.no_grad():
            img = [
                t.model.encode_image(batch.extras[f"teacher_images:{k}"], normalize=True).float()
                for k, t in enumerate(self.teachers)
            ]
            txt = [
                [
                    t.model.encode_text(
                        batch.extras[f"teacher_texts:{k}:{c}"], normalize=True
                    ).float()
                    for k, t in enumerate(self.teachers)
                ]
                for c in range(len(self.types))
            ]
        return img, txt

    def loss(self, model: Any, batch: Batch, step: int) -> Tensor:
        out = clip_forward(model, batch.images, batch.texts)
        image = self._gather(out["image_features"])
        texts = [
            self._gather(
                out["text_features"]
                if f is None
                else encode_text(model, batch.extras[f"texts:{c}"], normalize=True)
            )
            for c, f in enumerate(self.types)
        ]
        t_img, t_txt = self._teacher_targets(batch)
        t_img = [self._gather(x) for x in t_img]
        t_txt = [[self._gather(x) for x in per] for per in t_txt]
        if self.cfg.loss == "affinity":
            loss = sum(
                affinity_loss(image, text, self.cfg.student_scale, t_img, tt, self.scales)
                for text, tt in zip(texts, t_txt, strict=True)
            ) / len(texts)
        else:  # mobileclip is the feature loss with CLIP-KD's two terms off
            feature = self.cfg.loss == "feature"
            loss = feature_distill_loss(
                image,
                texts,
                out["logit_scale"],
                t_img,
                t_txt,
                self.scales,
                self.cfg.w0,
                self.cfg.w1,
                self.cfg.w_fd if feature else 0.0,
                self.cfg.w_icl if feature else 0.0,
            )
        self._terms = {"distill": float(loss.detach())}
        return loss
