"""Typed parameters of the curate stage: one frozen section per step, plus paths, compute, outputs.

Pydantic only, so validating them imports nothing heavy (the step table is imported only to say
which steps need a model when none is named). Crawl's resize settings and the decontaminate
stage's hash thresholds are NOT repeated here: decontamination reads the `resize` section of
params/crawl.yaml and the `match` section of params/decontaminate.yaml itself
(tasks/curate/inputs.py).
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from tasks.base import ParamsSection, StageParams

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
    "uid_subset",
]
STEP_NAMES: tuple[str, ...] = get_args(StepName)


class StepSection(ParamsSection):
    """The params of one step; `unusable` says why the step cannot run with them (None = it can)."""

    def unusable(self) -> str | None:
        """Checked only when the step is in `steps`, so unused sections may stay half-filled."""
        return None


class PathsParams(ParamsSection):
    """Where things are; relative paths resolve against the settings' root (tasks/io/paths.py)."""

    # fmt: off
    pool_uri: str | None = None  # LanceDB URI of the pool; None = settings (CLIPMILL_LANCEDB_URI)
    crawl_dir: str = "data/crawl"  # crawl output; the pool's `shard` column is relative to it
    out_dir: str = "data/curate"  # subset_uids.parquet, matches/, shards/, report/
    clip_model: str | None = "data/models/teacher"  # CLIP folder, models:/ URI, or random:<config>; None = none
    eval_dir: str = "data/sample/eval"  # CLIP_benchmark-layout eval sets to decontaminate against
    decontaminate_dir: str | None = "data/decontaminate"  # the decontaminate stage's output: its eval view and crawl image hashes are reused when they fit; None = hash everything here
    # fmt: on


class MetadataParams(ParamsSection):
    """MetaCLIP's entry list, matched against every text (balance) and read by text_based."""

    # fmt: off
    wordnet: str | None = "data/sample/metadata/wordnet.parquet"  # WordNet entries; None = skip
    extra: list[str] = []  # user entry lists: .txt (one per line) or .json (MetaCLIP list)
    include_numbers: bool = False  # add the strings "0".."99" to the metadata as MetaCLIP does
    # fmt: on


class TextChecksParams(ParamsSection):
    """The checks every text gets before any step (bad input leaves with its reason)."""

    # fmt: off
    max_chars: int = Field(default=2000, ge=1)  # characters; longer texts are flagged text_too_long
    # fmt: on


class BasicParams(StepSection):
    """DataComp's basic filter; the defaults are DataComp's, params/curate.yaml sizes them to the
    sample web (short names, small clip-art and emoji) and says why."""

    # fmt: off
    languages: list[str] = ["en"]  # ISO 639-1 codes kept; [] = any language
    min_words: int = Field(default=3, ge=0)  # words; kept if >= (DataComp: more than 2)
    min_chars: int = Field(default=6, ge=0)  # characters; kept if >= (DataComp: more than 5)
    min_side: int = Field(default=200, ge=0)  # pixels of the ORIGINAL image; kept if >=
    max_aspect: float = Field(default=3.0, ge=1.0)  # long side / short side; kept if <=
    # fmt: on


class PerceptualDedupParams(StepSection):
    """Within-pool perceptual dedup."""

    # fmt: off
    max_distance: int = Field(default=4, ge=0, le=64)  # Hamming bits; pHash AND dHash within -> duplicate
    # fmt: on


class DecontaminateParams(StepSection):
    """Eval-set decontamination (tasks/curate/steps/decontam.py explains the rules): curate's
    embedding gates on top of the hash matching.

    Eval images are compared as the pool's images were stored (`eval_view` of the `match`
    section of params/decontaminate.yaml): "crawl" runs them through the crawl's own resize +
    encode with the `resize` section of params/crawl.yaml; "raw" compares them as stored (a pool
    of raw, un-resized images). The eval view, hash thresholds and eval crops are NOT repeated
    here: the step reads that `match` section (tasks/curate/inputs.py), the hash matching of the
    stage that protects the teacher.
    """

    # fmt: off
    hash_embed_min: float | None = Field(default=0.85, ge=-1.0, le=1.0)  # a hash match also needs this image-embedding cosine to that eval image; None = hashes alone
    crop_embed_min: float | None = Field(default=0.78, ge=-1.0, le=1.0)  # a crop match also needs this cosine to the whole eval image; None = hashes alone
    embed_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)  # cosine to an eval image that flags on its own; None = off
    # fmt: on

    def uses_embeddings(self, crops: bool) -> bool:
        """True when image embeddings are compared (a threshold or a gate is set); `crops`:
        whether eval crops are matched (the `match` section of params/decontaminate.yaml)."""
        gates = (
            self.embed_threshold,
            self.hash_embed_min,
            self.crop_embed_min if crops else None,
        )
        return any(t is not None for t in gates)


class ClipScoreParams(StepSection):
    """DataComp's CLIP-score filter."""

    # fmt: off
    fraction: float | None = Field(default=0.3, gt=0.0, le=1.0)  # keep score >= the one at rank int(N * fraction) of ALL N downloaded, embedded pool rows
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)  # fixed cosine threshold; used when fraction is None
    caption: Literal["raw", "raw_else_synthetic", "both"] = "raw"  # raw: DataComp; raw_else_synthetic: the synthetic caption (recaption's long positive, same threshold) where the raw one fails, one caption per sample (Nguyen et al.); both: as raw_else_synthetic, and a passing synthetic caption is also written as `recaption` beside a passing raw one
    # fmt: on

    def unusable(self) -> str | None:
        if self.fraction is None and self.threshold is None:
            return "clip_score needs clip_score.fraction or clip_score.threshold"
        return None


class TextBasedParams(StepSection):
    """DataComp's text-based filter (ImageNet-21k words from metadata.wordnet)."""

    # fmt: off
    languages: list[str] = ["en"]  # ISO 639-1 codes accepted by the text-based filter
    # fmt: on


class ImageBasedParams(StepSection):
    """DataComp's image-based filter."""

    # fmt: off
    target_dir: str | None = None  # folder of target-task training images (files or .tar shards)
    kmeans_k: int = Field(default=64, ge=2)  # clusters of the pool's image embeddings
    stream_fit_rows: int = Field(default=500_000, ge=1)  # rows; the streamed path fits k-means on a seeded sample of about this many embeddings (every one below it: the in-memory fit)
    # fmt: on

    def unusable(self) -> str | None:
        if not self.target_dir:
            return "image_based needs image_based.target_dir (the target task's training images)"
        return None


class SemanticDedupParams(StepSection):
    """SemDeDup."""

    # fmt: off
    eps: float = Field(default=0.01, gt=0.0, lt=1.0)  # duplicate if cosine > 1 - eps in a cluster
    clusters: int = Field(default=16, ge=1)  # k-means clusters (capped at rows / 4)
    ann_min_rows: int = Field(default=100_000, ge=1)  # clusters at least this big use the LanceDB ANN index (never faster than exact up to 40k rows, benchmarks/curate.py; it saves the exact path's ~2 GB block from here)
    ann_k: int = Field(default=16, ge=2)  # neighbours per query on the ANN path
    stream_fit_rows: int = Field(default=500_000, ge=1)  # rows; the streamed path fits k-means on a seeded sample of about this many embeddings (every one below it: the in-memory fit)
    # fmt: on


class BalanceParams(StepSection):
    """MetaCLIP balancing."""

    # fmt: off
    t: int = Field(default=20_000, ge=1)  # per-entry cap t: p_e = t / max(count, t)
    target_size: int | None = Field(default=None, ge=1)  # pairs wanted; set = find t for it
    # fmt: on


class UidSubsetParams(StepSection):
    """Apply an existing subset: keep only the pool rows a uid file lists (tasks/curate/formats.py)."""

    # fmt: off
    path: str | None = None  # DataComp .npy of (u8,u8) uid pairs, a parquet with a `uid` column, or a .txt of hex uids
    # fmt: on

    def unusable(self) -> str | None:
        if self.path is None:
            return "step 'uid_subset' needs uid_subset.path (a DataComp .npy, .parquet or .txt uid file)"
        return None


class PlantedQAParams(ParamsSection):
    """Report only: decontamination quality on the sample's planted copies (never decides)."""

    # fmt: off
    path: str | None = "data/sample/eval/planted_near_duplicates.parquet"  # known planted copies; None = no recall metric
    lookalike_mad: float = Field(default=8.0, ge=0.0, le=255.0)  # a flagged non-planted image whose 32x32 RGB thumbnail is within this mean absolute difference of its eval image's counts as a look-alike
    # fmt: on


class HoldoutParams(ParamsSection):
    """A seeded random part of the curated set that no model trains on: the membership audit's
    non-members, drawn from the same distribution as the training pairs (tasks/curate/holdout.py)."""

    # fmt: off
    fraction: float = Field(default=0.05, ge=0.0, le=0.5)  # share of the kept pairs held out, round(n * fraction); 0 = none
    seed: int = 0  # which pairs: the lowest sha256("<seed>:<uid>") are held out
    # fmt: on


class ComputeParams(ParamsSection):
    """How much of Ray the stage takes (small defaults leave room for reads on 2 CPUs)."""

    # fmt: off
    match_workers: int = Field(default=1, ge=1)  # matcher actors (each holds one automaton)
    embed_workers: int = Field(default=1, ge=1)  # CLIP actors (one model each)
    embed_batch_size: int = Field(default=64, ge=1)  # images or texts per forward pass
    cpus_per_worker: float = Field(default=1.0, gt=0.0)  # CPUs reserved per actor; keep room for reads
    rows_per_block: int = Field(default=4096, ge=1)  # rows per Ray Data block of pool rows
    feature_store: bool = True  # read the locked towers' features the teacher stored (a pure cache, same results); False = run the whole towers
    # fmt: on


class ExecutionParams(ParamsSection):
    """Where the decisions are taken: every row in the driver (memory) or in blocks of pool rows
    on Ray with only small arrays in the driver (stream, tasks/curate/stream.py). Both write the
    same ledger columns, uid lists and shards (tasks/curate/streamsteps.py)."""

    # fmt: off
    mode: Literal["memory", "stream", "auto"] = "auto"  # memory | stream | auto: stream when the pool holds >= stream_min_rows rows
    stream_min_rows: int = Field(default=1_000_000, ge=1)  # rows; auto streams from here (the in-memory path holds every row, ~2 KB each with embeddings, ~2 GB per million)
    scratch_dir: str | None = None  # the streamed run's scratch (block ledgers, partitions), a folder every Ray node sees, e.g. a shared mount; null = <out_dir>/.stream (one machine)
    # fmt: on


class OutputsParams(ParamsSection):
    """What the stage writes besides the subset list."""

    # fmt: off
    materialise: bool = True  # write the shuffled training shards
    shard_size: int = Field(default=1000, ge=1)  # samples per output shard
    report_examples: int = Field(default=16, ge=0)  # images per kept/dropped grid; 0 = no grids
    datacomp_uids: bool = True  # also write the subset as DataComp's sorted (u8,u8) uid file subset_uids.npy
    metaclip_counts: bool = True  # after balance: entry_counts.npy + metadata.json in balance/, MetaCLIP's form
    # fmt: on


class CurateParams(StageParams):
    """Which steps run in which order, one section of thresholds per step; see params/curate.yaml."""

    # fmt: off
    steps: list[StepName] = [
        "basic",
        "exact_dedup",
        "perceptual_dedup",
        "decontaminate",
        "clip_score",
        "semantic_dedup",
        "balance",
    ]  # filters in order; each sees only the rows every earlier step kept
    seed: int = 0  # seeds balancing coins, shard shuffling and k-means
    paths: PathsParams = PathsParams()  # where the pool, crawl, outputs, model and eval sets are
    metadata: MetadataParams = MetadataParams()  # MetaCLIP entry lists
    text_checks: TextChecksParams = TextChecksParams()  # checks of every text before the steps
    basic: BasicParams = BasicParams()  # step basic (DataComp)
    perceptual_dedup: PerceptualDedupParams = PerceptualDedupParams()  # step perceptual_dedup
    decontaminate: DecontaminateParams = DecontaminateParams()  # step decontaminate
    clip_score: ClipScoreParams = ClipScoreParams()  # step clip_score (DataComp)
    text_based: TextBasedParams = TextBasedParams()  # step text_based (DataComp)
    image_based: ImageBasedParams = ImageBasedParams()  # step image_based (DataComp)
    semantic_dedup: SemanticDedupParams = SemanticDedupParams()  # step semantic_dedup (SemDeDup)
    balance: BalanceParams = BalanceParams()  # step balance (MetaCLIP)
    uid_subset: UidSubsetParams = UidSubsetParams()  # step uid_subset: keep the rows an existing uid file lists
    planted_qa: PlantedQAParams = PlantedQAParams()  # report on the planted copies, after decontaminate
    holdout: HoldoutParams = HoldoutParams()  # held-out pairs, after every step; never in the training shards
    compute: ComputeParams = ComputeParams()  # Ray actors, batch sizes, CPUs
    execution: ExecutionParams = ExecutionParams()  # in memory or streamed in blocks over the pool
    outputs: OutputsParams = OutputsParams()  # shards and report
    # fmt: on

    @model_validator(mode="after")
    def _check(self) -> CurateParams:
        if len(set(self.steps)) != len(self.steps):
            raise ValueError(f"steps repeat a name: {self.steps}")
        if "balance" in self.steps and self.steps[-1] != "balance":
            raise ValueError(
                "'balance' must be the last step (MetaCLIP balances after the filters)"
            )
        for name in self.steps:
            section = self.step_section(name)
            problem = section.unusable() if section is not None else None
            if problem:
                raise ValueError(problem)
        if self.paths.clip_model is None:
            needing = self.steps_needing("embeddings")
            if needing:
                raise ValueError(
                    f"steps {needing} need a CLIP model (image/text embeddings) "
                    "but paths.clip_model is None"
                )
        return self

    def step_section(self, name: str) -> StepSection | None:
        """The params section of step `name` (the field of the same name), None if it has none."""
        section = getattr(self, name, None) if name in type(self).model_fields else None
        return section if isinstance(section, StepSection) else None

    def steps_needing(self, wanted: str) -> list[str]:
        """Names of the steps in `steps` whose declared inputs include `wanted`."""
        from tasks.curate.steps.registry import build_steps

        return [s.name for s in build_steps(self) if wanted in s.inputs()]
