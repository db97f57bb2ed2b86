"""Typed parameters of the `decontaminate` stage: paths, the hash thresholds, the quality report,
compute. Crawl's resize settings are not repeated: the stage reads the `resize` section of
params/crawl.yaml (eval images are hashed as the crawl stored the pool's images).

The thresholds are the hash part of curate's `decontaminate` section with the same defaults;
here no embedding gate follows, so a hash match alone flags (curate adds its gate later).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.base import ParamsSection, StageParams
from tasks.decontam.matching import HashThresholds


class PathsParams(ParamsSection):
    """Where things are; relative paths resolve against the settings' root (tasks/io/paths.py)."""

    # fmt: off
    shards: str = "data/crawl/shards"  # webdataset *.tar shards checked (the crawl's; sample keys are uids)
    eval_dir: str = "data/sample/eval"  # CLIP_benchmark-layout eval sets; every set's test split is matched
    planted: str | None = "data/sample/eval/planted_near_duplicates.parquet"  # the sample's planted copies, for recall; None = no recall
    out_dir: str = "data/decontaminate"  # flagged_uids.parquet, planted_uids.parquet, summary.json
    # fmt: on


class MatchParams(ParamsSection):
    """When a crawl image counts as a copy of an eval image (pHash AND dHash, whole view or crop)."""

    # fmt: off
    eval_view: Literal["raw", "crawl"] = "crawl"  # eval images hashed through the crawl's resize + encode, or as stored
    hash_max_distance: int = Field(default=4, ge=0, le=64)  # pHash Hamming bits to an eval image (AND dHash below)
    dhash_max_distance: int = Field(default=8, ge=0, le=64)  # dHash Hamming bits to the same eval image
    crops: list[float] = [0.82, 0.9]  # crops of each eval image also hashed: kept fraction of each side, 3x3 positions each; [] = none
    crop_hash_max_distance: int = Field(default=8, ge=0, le=64)  # pHash Hamming bits to an eval crop (AND dHash below)
    crop_dhash_max_distance: int = Field(default=12, ge=0, le=64)  # dHash Hamming bits to the same eval crop
    # fmt: on

    @model_validator(mode="after")
    def _crops_are_fractions(self) -> MatchParams:
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


class QAParams(ParamsSection):
    """Report only: how the flags compare with the planted copies (never decides)."""

    # fmt: off
    lookalike_mad: float = Field(default=8.0, ge=0.0, le=255.0)  # a flagged non-planted image within this mean absolute 32x32 RGB difference of its eval image is a look-alike, not a false positive
    # fmt: on


class ComputeParams(ParamsSection):
    """How the work is cut for Ray Data."""

    # fmt: off
    rows_per_block: int = Field(default=1000, ge=1)  # samples per Ray task (read + hash)
    # fmt: on


class DecontaminateParams(StageParams):
    """Hash-only decontamination of the crawl against every eval set; see params/decontaminate.yaml."""

    # fmt: off
    paths: PathsParams = PathsParams()  # shards checked, eval sets, planted copies, outputs
    match: MatchParams = MatchParams()  # hash thresholds and the eval view
    qa: QAParams = QAParams()  # planted-copy report
    compute: ComputeParams = ComputeParams()  # Ray Data blocks
    # fmt: on
