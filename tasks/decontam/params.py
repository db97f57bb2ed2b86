"""The hash-matching params section, declared once: the `match` section of
params/decontaminate.yaml (the decontaminate stage's own), which curate's decontaminate step
reads from that file (tasks/curate/inputs.py) instead of re-declaring it, so curate's hash matching
(and the eval view it hashes) is by construction the one that protects the teacher.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.base import ParamsSection
from tasks.decontam.matching import HashThresholds


class HashMatchParams(ParamsSection):
    """When an image counts as a copy of an eval image (pHash AND dHash, whole view or crop),
    and how the eval images are viewed for it."""

    # fmt: off
    eval_view: Literal["raw", "crawl"] = "crawl"  # how eval images are hashed and embedded: through the crawl's resize + encode, or as stored
    hash_max_distance: int = Field(default=4, ge=0, le=64)  # pHash Hamming bits to an eval image (AND dHash below)
    dhash_max_distance: int = Field(default=8, ge=0, le=64)  # dHash Hamming bits to the same eval image
    crops: list[float] = [0.82, 0.9]  # crops of each eval image also hashed: kept fraction of each side, 3x3 positions each; [] = none
    crop_hash_max_distance: int = Field(default=8, ge=0, le=64)  # pHash Hamming bits to an eval crop (AND dHash below)
    crop_dhash_max_distance: int = Field(default=12, ge=0, le=64)  # dHash Hamming bits to the same eval crop
    # fmt: on

    @model_validator(mode="after")
    def _crops_are_fractions(self) -> HashMatchParams:
        if any(not 0.0 < k < 1.0 for k in self.crops):
            raise ValueError(f"crops are kept fractions in (0, 1): {self.crops}")
        return self

    def thresholds(self) -> HashThresholds:
        """The library's thresholds for these values."""
        return HashThresholds(
            hash_max_distance=self.hash_max_distance,
            dhash_max_distance=self.dhash_max_distance,
            crops=bool(self.crops),
            crop_hash_max_distance=self.crop_hash_max_distance,
            crop_dhash_max_distance=self.crop_dhash_max_distance,
        )
