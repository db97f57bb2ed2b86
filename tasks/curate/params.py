"""Typed parameters of the curate stage (pydantic only, so validating them imports nothing heavy)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.base import StageParams
from tasks.crawl.params import Encoding, ResizeMode

StepName = Literal[
    "basic",
    "exact_dedup",
    "perceptual_dedup",
    "decontaminate",
    "clip_score",
    "text_based",
    "image_based",
    "semantic_dedup",
    "balance",
]
MODEL_STEPS: frozenset[str] = frozenset({"clip_score", "image_based", "semantic_dedup"})


class CurateParams(StageParams):
    """Which filters run in which order, with every threshold; paths resolve against the root."""

    # fmt: off
    # --- where things are -------------------------------------------------------------------
    pool_uri: str | None = None  # LanceDB URI of the pool; None = settings (CLIPMILL_LANCEDB_URI)
    crawl_dir: str = "data/crawl"  # crawl output; the pool's `shard` column is relative to it
    out_dir: str = "data/curate"  # subset_uids.parquet, matches/, shards/, report/
    wordnet_metadata: str | None = "data/sample/metadata/wordnet.parquet"  # WordNet entries; None = skip
    extra_metadata: list[str] = []  # user entry lists: .txt (one per line) or .json (MetaCLIP list)
    include_numbers: bool = False  # add the strings "0".."99" to the metadata as MetaCLIP does
    clip_model: str | None = "data/models/teacher"  # CLIP folder, models:/ URI, or random:<config>; None = none
    eval_dir: str = "data/sample/eval"  # CLIP_benchmark-layout eval sets to decontaminate against
    planted_path: str | None = "data/sample/eval/planted_near_duplicates.parquet"  # known planted copies; None = no recall metric

    # --- order of work -------------------------------------------------------------------------
    steps: list[StepName] = [
        "basic",
        "exact_dedup",
        "perceptual_dedup",
        "decontaminate",
        "clip_score",
        "semantic_dedup",
        "balance",
    ]  # filters in order; each sees only the rows every earlier step kept

    # --- text checks (bad input) ---------------------------------------------------------------
    max_text_chars: int = Field(default=2000, ge=1)  # characters; longer texts are flagged text_too_long

    # --- basic filter (DataComp) ---------------------------------------------------------------
    basic_languages: list[str] = ["en"]  # ISO 639-1 codes kept; [] = any language
    basic_min_words: int = Field(default=3, ge=0)  # words; kept if >= (DataComp: more than 2)
    basic_min_chars: int = Field(default=6, ge=0)  # characters; kept if >= (DataComp: more than 5)
    basic_min_side: int = Field(default=200, ge=0)  # pixels of the ORIGINAL image; kept if >=
    basic_max_aspect: float = Field(default=3.0, ge=1.0)  # long side / short side; kept if <=

    # --- CLIP score filter -----------------------------------------------------------------
    clip_score_fraction: float | None = Field(default=0.3, gt=0.0, le=1.0)  # keep top fraction over all rows reaching the step
    clip_score_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)  # fixed cosine threshold; used when fraction is None

    # --- text-based filter -----------------------------------------------------------------
    text_based_languages: list[str] = ["en"]  # ISO 639-1 codes accepted by the text-based filter

    # --- image-based filter ----------------------------------------------------------------
    image_target_dir: str | None = None  # folder of target-task training images (files or .tar shards)
    image_kmeans_k: int = Field(default=64, ge=2)  # clusters of the pool's image embeddings

    # --- dedup -------------------------------------------------------------------------------
    phash_max_distance: int = Field(default=4, ge=0, le=64)  # Hamming bits; pHash AND dHash within -> duplicate
    semdedup_eps: float = Field(default=0.01, gt=0.0, lt=1.0)  # duplicate if cosine > 1 - eps in a cluster
    semdedup_clusters: int = Field(default=16, ge=1)  # k-means clusters (capped at rows / 4)
    semdedup_ann_min_rows: int = Field(default=50_000, ge=1)  # clusters at least this big use the LanceDB ANN index
    semdedup_ann_k: int = Field(default=16, ge=2)  # neighbours per query on the ANN path

    # --- decontamination ---------------------------------------------------------------------
    # Eval images are compared as the pool's images were stored: "crawl" runs them through the
    # crawl's own resize + encode (tasks.crawl.resizer) with the settings below, which must match
    # params/crawl.yaml; "raw" compares them as stored (a pool of raw, un-resized images).
    decontam_eval_view: Literal["raw", "crawl"] = "crawl"  # how eval images are hashed and embedded
    decontam_resize_mode: ResizeMode = "border"  # crawl view: the crawl's resize_mode
    decontam_image_size: int = Field(default=256, ge=8, le=8192)  # crawl view: the crawl's image_size, px
    decontam_resize_only_if_bigger: bool = False  # crawl view: the crawl's resize_only_if_bigger
    decontam_encode_format: Encoding = "jpg"  # crawl view: the crawl's encode_format
    decontam_encode_quality: int = Field(default=95, ge=1, le=100)  # crawl view: the crawl's encode_quality
    decontam_hash_max_distance: int = Field(default=4, ge=0, le=64)  # pHash Hamming bits to an eval image (AND dHash below)
    decontam_dhash_max_distance: int = Field(default=8, ge=0, le=64)  # dHash Hamming bits to the same eval image
    decontam_hash_embed_min: float | None = Field(default=0.85, ge=-1.0, le=1.0)  # a hash match also needs this image-embedding cosine to that eval image; None = hashes alone
    decontam_crops: list[float] = [0.82, 0.9]  # crops of each eval image also hashed: kept fraction of each side, 3x3 positions each; [] = none
    decontam_crop_hash_max_distance: int = Field(default=8, ge=0, le=64)  # pHash Hamming bits to an eval crop (AND dHash below)
    decontam_crop_dhash_max_distance: int = Field(default=12, ge=0, le=64)  # dHash Hamming bits to the same eval crop
    decontam_crop_embed_min: float | None = Field(default=0.78, ge=-1.0, le=1.0)  # a crop match also needs this cosine to the whole eval image; None = hashes alone
    decontam_embed_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)  # cosine to an eval image that flags on its own; None = off
    decontam_lookalike_mad: float = Field(default=8.0, ge=0.0, le=255.0)  # report only: a flagged non-planted image whose 32x32 RGB thumbnail is within this mean absolute difference of its eval image's counts as a look-alike

    # --- balancing (MetaCLIP) ----------------------------------------------------------------
    balance_t: int = Field(default=20_000, ge=1)  # per-entry cap t: p_e = t / max(count, t)
    balance_target_size: int | None = Field(default=None, ge=1)  # pairs wanted; set = find t for it
    seed: int = 0  # seeds balancing coins, shard shuffling and k-means

    # --- compute ------------------------------------------------------------------------------
    match_workers: int = Field(default=1, ge=1)  # matcher actors (each holds one automaton)
    embed_workers: int = Field(default=1, ge=1)  # CLIP actors (one model each)
    embed_batch_size: int = Field(default=64, ge=1)  # images or texts per forward pass
    cpus_per_worker: float = Field(default=1.0, gt=0.0)  # CPUs reserved per actor; keep room for reads
    rows_per_block: int = Field(default=4096, ge=1)  # rows per Ray Data block of pool rows

    # --- outputs ---------------------------------------------------------------------------------
    materialise: bool = True  # write the shuffled training shards
    shard_size: int = Field(default=1000, ge=1)  # samples per output shard
    report_examples: int = Field(default=16, ge=0)  # images per kept/dropped grid; 0 = no grids

    # fmt: on

    @model_validator(mode="after")
    def _check(self) -> CurateParams:
        if any(not 0.0 < k < 1.0 for k in self.decontam_crops):
            raise ValueError(f"decontam_crops are kept fractions in (0, 1): {self.decontam_crops}")
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"steps repeat a name: {self.steps}")
        if "balance" in self.steps and self.steps[-1] != "balance":
            raise ValueError(
                "'balance' must be the last step (MetaCLIP balances after the filters)"
            )
        if (
            "clip_score" in self.steps
            and self.clip_score_fraction is None
            and self.clip_score_threshold is None
        ):
            raise ValueError("clip_score needs clip_score_fraction or clip_score_threshold")
        if "image_based" in self.steps and not self.image_target_dir:
            raise ValueError(
                "image_based needs image_target_dir (the target task's training images)"
            )
        if self.clip_model is None and self.needs_model():
            needing = sorted(MODEL_STEPS & set(self.steps)) or [
                "decontaminate (decontam_embed_threshold / decontam_*_embed_min)"
            ]
            raise ValueError(f"steps {needing} need a CLIP model but clip_model is None")
        return self

    def needs_model(self) -> bool:
        """True when some step needs image/text embeddings from a CLIP model."""
        return bool(MODEL_STEPS & set(self.steps)) or (
            "decontaminate" in self.steps and self.decontam_uses_embeddings()
        )

    def decontam_uses_embeddings(self) -> bool:
        """True when decontamination compares image embeddings (a threshold or a gate is set)."""
        return any(
            t is not None
            for t in (
                self.decontam_embed_threshold,
                self.decontam_hash_embed_min,
                self.decontam_crop_embed_min if self.decontam_crops else None,
            )
        )
