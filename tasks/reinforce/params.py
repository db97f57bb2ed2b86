"""Typed parameters of the `reinforce` stage (MobileCLIP reinforced dataset, docs/CONTRACTS.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.base import ParamsSection, StageParams


class AugmentParams(ParamsSection):
    """How the K stored augmentations are drawn (torchvision RandomResizedCrop rules, then a flip)."""

    # fmt: off
    scale_min: float = Field(default=0.9, gt=0, le=1)  # smallest crop area / image area (open_clip train: 0.9; MobileCLIP DR: 0.08)
    scale_max: float = Field(default=1.0, gt=0, le=1)  # largest crop area / image area
    ratio_min: float = Field(default=0.75, gt=0)  # smallest crop aspect ratio, width / height
    ratio_max: float = Field(default=4 / 3, gt=0)  # largest crop aspect ratio, width / height
    flip_prob: float = Field(default=0.5, ge=0, le=1)  # probability of a horizontal flip per view
    # fmt: on

    @model_validator(mode="after")
    def _ranges(self) -> AugmentParams:
        if self.scale_min > self.scale_max:
            raise ValueError(f"augment.scale_min {self.scale_min} > scale_max {self.scale_max}")
        if self.ratio_min > self.ratio_max:
            raise ValueError(f"augment.ratio_min {self.ratio_min} > ratio_max {self.ratio_max}")
        return self


class ReinforceParams(StageParams):
    """K stored augmentations per curated sample with the teacher's embedding of each view and of
    every caption field; see params/reinforce.yaml."""

    # fmt: off
    shards: str = "data/curate/shards"  # curated webdataset shards (*.tar): the samples reinforced
    teacher: str = "data/models/teacher"  # teacher model: folder, models:/ URI or random:<config>
    output_dir: str = "data/reinforce"  # manifest.json + parts/<fingerprint>/part-<shard>.parquet
    k: int = Field(default=4, ge=1, le=64)  # augmentations (views) stored per sample
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"  # storage of every embedding (read back as float32)
    caption_fields: list[str] = ["txt", "recaption", "long_positive", "long_negative"]  # sample member or JSON key of the curated shards (curate writes recaption, long_positive, long_negative) per text_emb_<field>; missing on a sample = null
    seed: int = 0  # augmentation draws: one generator per (seed, uid)
    augment: AugmentParams = AugmentParams()  # how the boxes and flips are drawn
    batch_size: int = Field(default=64, ge=1)  # views (or captions) per teacher forward
    torch_threads: int = Field(default=0, ge=0)  # torch CPU threads; 0 = torch's default
    device: str = "auto"  # auto (cuda when present), cpu or cuda
    # fmt: on

    @model_validator(mode="after")
    def _fields(self) -> ReinforceParams:
        if not self.caption_fields or len(set(self.caption_fields)) != len(self.caption_fields):
            raise ValueError(f"caption_fields {self.caption_fields!r}: need distinct field names")
        bad = [f for f in self.caption_fields if not f.replace("_", "").isalnum()]
        if bad:
            raise ValueError(
                f"caption_fields: {bad[0]!r} is not a plain field name (letters, digits, _)"
            )
        return self

    def needs_ray(self) -> bool:
        """One teacher in the runner's process (a few thousand samples x K views): no Ray."""
        return False
