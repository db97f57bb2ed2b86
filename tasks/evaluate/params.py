"""Parameters of the `evaluate` stage: which models, which sets, which tasks and their knobs."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tasks.base import StageParams

Corruption = Literal["noise", "blur", "occlusion"]
CORRUPTIONS: tuple[Corruption, ...] = ("noise", "blur", "occlusion")

LOCAL_SETS = (
    "fashion_mnist",
    "emoji_groups",
    "emoji_subgroups",
    "tuxpaint_categories",
    "openclipart_categories",
    "retrieval",
)
CLASSIFICATION_SETS = LOCAL_SETS[:-1]


class _Section(BaseModel):
    """A nested block of params: frozen and strict like the stage model itself."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class EmbedParams(_Section):
    """How embeddings are computed: each image and text once per model (tasks/evaluate/features.py),
    frozen-tower features from the feature store when stored, in process unless Ray pays off."""

    # fmt: off
    batch_size: int = Field(default=64, ge=1, le=4096)  # images per forward pass
    text_batch_size: int = Field(default=256, ge=1, le=65536)  # texts per forward pass
    feature_store: bool = True  # read/add frozen-tower features in the store (data/features or $CLIPMILL_FEATURE_STORE; a pure cache, same results); False = compute every one
    channels_last: bool = True  # run the image tower in channels-last memory (oneDNN's fast CPU path for conv towers; same outputs)
    ray: Literal["auto", "always", "never"] = "auto"  # Ray Data actor pool: auto = only on a Ray cluster with more CPUs than this machine
    ray_min_samples: int = Field(default=5000, ge=0)  # images still to embed at or above which Ray may be used
    # fmt: on
    actors: int = Field(
        default=1, ge=1, le=64
    )  # size of the Ray Data actor pool (keep small on 2 CPUs)
    cpus_per_actor: float = Field(default=1.0, gt=0.0, le=64.0)  # CPUs reserved by each actor
    num_blocks: int = Field(
        default=8, ge=1, le=10000
    )  # Ray Data blocks the image list is split into
    amp: bool = False  # bf16/fp16 autocast; off = fp32 (CLIP_benchmark's --no_amp)
    decode_threads: int = Field(
        default=1, ge=0, le=64
    )  # threads decoding the next batches while the model runs (0 = none)


class ProbeParams(_Section):
    """Linear probe: logistic regression on frozen image features, C chosen on a validation split.

    A set with a `train_split` trains there (C on its validation part) and only scores the test
    split; a set without one is probed by stratified k-fold over the test split (nested C choice).
    """

    enabled: bool = True  # run the probe at all
    datasets: list[str] = Field(
        default_factory=lambda: list(CLASSIFICATION_SETS)
    )  # classification sets probed
    train_split: str = "train"  # split the probe trains on when the set has it
    folds: int = Field(
        default=5, ge=2, le=50
    )  # no train split: stratified k-fold over the test split, each image scored once
    val_proportion: float = Field(
        default=0.2, gt=0.0, lt=1.0
    )  # share of the probe's training data (train split, or a fold's training part) that chooses C
    c_grid: list[float] = Field(
        default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0], min_length=1
    )  # inverse L2 strengths tried
    max_iter: int = Field(default=1000, ge=10)  # L-BFGS iterations
    seed: int = Field(default=0, ge=0)  # splits
    n_jobs: int = Field(
        default=2, ge=1
    )  # worker processes fitting folds / C values side by side (same results); 1 = in process


class PerceptionParams(_Section):
    """PerceptionCLIP: infer contextual attributes zero-shot, then classify conditioned on them."""

    enabled: bool = True  # run PerceptionCLIP at all
    datasets: list[str] = Field(
        default_factory=lambda: list(CLASSIFICATION_SETS)
    )  # classification sets used
    attributes: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "background": ["on a plain background", "in a busy scene"],
            "style": ["a photo", "a drawing", "an icon"],
        }
    )  # attribute name -> its value descriptions, appended to each class prompt
    max_templates: int = Field(
        default=4, ge=1
    )  # first N templates of the set combined with attributes


class RobustnessParams(_Section):
    """Accuracy under corrupted patches and under a PGD-optimised adversarial patch."""

    enabled: bool = True  # run the robustness checks at all
    datasets: list[str] = Field(
        default_factory=lambda: ["fashion_mnist", "emoji_groups"]
    )  # classification sets used
    max_samples: int = Field(default=256, ge=2)  # images used per set (first N)
    grid: int = Field(default=4, ge=1, le=64)  # image split into grid x grid patches
    fractions: list[float] = Field(
        default_factory=lambda: [0.25, 0.5]
    )  # share of patches corrupted
    corruptions: list[Corruption] = Field(
        default_factory=lambda: list(CORRUPTIONS)
    )  # corruption kinds
    noise_std: float = Field(default=0.5, ge=0.0)  # Gaussian noise std, in [0, 1] pixel units
    blur_kernel: int = Field(default=7, ge=3)  # box-blur kernel size, pixels (odd)
    adversarial: bool = True  # also optimise and test an adversarial patch
    adv_patch_side: float = Field(
        default=0.25, gt=0.0, le=1.0
    )  # patch side as a share of the image side
    adv_steps: int = Field(default=20, ge=1, le=10000)  # PGD steps
    adv_step_size: float = Field(
        default=0.05, gt=0.0
    )  # PGD step on [0, 1] pixels (signed gradient)
    adv_holdout_fraction: float = Field(
        default=0.5, gt=0.0, lt=1.0
    )  # share of images the patch is optimised on; tested on the rest
    seed: int = Field(default=0, ge=0)  # patch choice and initialisation


class MembershipTarget(_Section):
    """One audited model, the pairs it trained on, and held-out pairs of the SAME distribution."""

    # fmt: off
    model: str = "data/models/train"  # model folder or models:/ URI (loaded again unless among `models`)
    members: str | None = "data/curate/shards"  # pairs it trained on (webdataset folder); None = not available
    held_out: str | None = "data/curate/holdout"  # same-distribution pairs it never trained on; None = it has none: no AUC, the result says so
    note: str = ""  # recorded with the result: what the model trained on, why nothing is held out
    # fmt: on


def _default_targets() -> list[MembershipTarget]:
    """The student against curate's holdout; the teacher, which has no held-out part, said so."""
    return [
        MembershipTarget(),
        MembershipTarget(
            model="data/models/teacher",
            members=None,
            held_out=None,
            note="the teacher trains on the whole crawled pool: "
            "no part of its training data is held out",
        ),
    ]


class MembershipParams(_Section):
    """LeakyCLIP-style audit: can training pairs be told from held-out pairs of the same
    distribution by similarity or loss? AUC with a bootstrap CI and TPR at 1% FPR."""

    # fmt: off
    enabled: bool = True  # run the audit at all
    targets: list[MembershipTarget] = Field(default_factory=_default_targets)  # audited models, each with its members and held-out pairs
    shift_non_members: str | None = "data/sample/eval/retrieval"  # extra, labelled "distribution shift, not membership": members vs this eval set; None = skip
    max_pairs: int = Field(default=512, ge=4)  # most pairs per side (members: as many as held-out)
    loss_batch: int = Field(default=32, ge=2)  # pairs per contrastive batch when scoring the loss
    bootstrap: int = Field(default=1000, ge=10)  # bootstrap resamples for the AUC confidence interval
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)  # level of that interval (percentile)
    seed: int = Field(default=0, ge=0)  # sampling, batching and bootstrap
    # fmt: on


class EvaluateParams(StageParams):
    """Evaluate checkpoints on the sample stage's sets (and public benchmarks when present)."""

    stage: ClassVar[str] = "evaluate"

    models: list[str] = Field(
        default_factory=lambda: ["data/models/train", "data/models/teacher"], min_length=1
    )  # model folders (docs/CONTRACTS.md) or MLflow URIs models:/name/version
    eval_root: str = "data/sample/eval"  # local sets in CLIP_benchmark webdataset layout
    datasets: list[str] = Field(
        default_factory=lambda: list(LOCAL_SETS)
    )  # local set names (folders of eval_root)
    public_root: str = "data/benchmarks"  # public benchmarks, wds layout (<name>/ or wds_<name>/)
    public_datasets: list[str] = Field(
        default_factory=list
    )  # public benchmark names (imagenet1k, flickr30k, ...)
    public_required: bool = False  # True = an absent public set fails, else it is skipped
    split: str = "test"  # split evaluated
    language: str = "en"  # recorded in the CLIP_benchmark JSON
    recall_k: list[int] = Field(
        default_factory=lambda: [1, 5, 10], min_length=1
    )  # retrieval recall@k
    main_metrics: dict[str, str] = Field(
        default_factory=dict
    )  # dataset -> scoreboard metric (default acc1 / mean_recall@1)
    output_dir: str = "data/evaluate"  # results JSON, scoreboard and plots
    model_processes: int = Field(
        default=1, ge=1, le=64
    )  # models evaluated side by side, each in its own process of cpu_count / model_processes torch threads (stage.py: same numbers); 1 = one after the other in this process
    leakage_dir: str | None = None  # decontaminate's outputs, for leakage.json; None = no report
    figures: bool = True  # per-model figures (confusion, per-class recall, retrieval examples, scoreboard); scores are the same without
    embed: EmbedParams = Field(default_factory=EmbedParams)  # embedding computation
    probe: ProbeParams = Field(default_factory=ProbeParams)  # linear probe
    perception: PerceptionParams = Field(default_factory=PerceptionParams)  # PerceptionCLIP
    robustness: RobustnessParams = Field(default_factory=RobustnessParams)  # patch robustness
    membership: MembershipParams = Field(
        default_factory=MembershipParams
    )  # membership-inference audit

    def needs_ray(self) -> bool:
        """Ray only where the embedder may use it (tasks/evaluate/features.py `use_ray`):
        `embed.ray: always`, or `auto` joining a cluster (RAY_ADDRESS), whose actor pool can use
        more CPUs than this machine. On one machine `auto` never embeds on Ray, so the runner
        starts none: a local Ray booted for nothing took CPU from the first model's embedding
        (its daemons start and poll on the same 2 cores) and time to start and stop around it.
        Everything else in evaluate runs in process (the probe's fits on loky workers)."""
        if self.embed.ray == "always":
            return True
        if self.embed.ray == "never":
            return False
        from tasks.settings import get_settings

        return get_settings().ray_address is not None
