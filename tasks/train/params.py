"""Typed parameters of the train stage (serves both registry stages `teacher` and `train`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.base import ParamsSection, StageParams


class PatchDropoutParams(ParamsSection):
    """FLIP: open_clip's random patch dropout on the ViT image tower (training only)."""

    # fmt: off
    ratio: float = Field(default=0.0, ge=0, lt=1)  # fraction of patches dropped each step (keeps CLS + max(1, int(N*(1-ratio)))); 0 = off
    final_unmasked_steps: int = Field(default=0, ge=0)  # last optimizer steps trained without dropout (FLIP's unmasked tuning)
    # fmt: on


class AClipParams(ParamsSection):
    """A-CLIP: attention-guided patch masking from an EMA copy of the model (tasks/train/objectives/aclip.py)."""

    # fmt: off
    enabled: bool = False  # train with two attention-masked online views instead of the plain contrastive step
    mask_ratio: float = Field(default=0.5, ge=0, lt=1)  # fraction of 2x2 patch blocks masked per view (keeps N - int(N*ratio)); 0 = no mask
    momentum_start: float = Field(default=0.996, ge=0, le=1)  # EMA momentum at step 0 (cosine schedule)
    momentum_end: float = Field(default=1.0, ge=0, le=1)  # EMA momentum at the last step
    crop_scale_min: float = Field(default=0.5, gt=0, le=1)  # smallest area fraction of an online crop inside the zoom-out view
    simclr_weight: float = Field(default=0.0, ge=0)  # weight of the SimCLR term between the two online views (0 = off)
    simclr_temperature: float = Field(default=0.1, gt=0)  # SimCLR temperature
    byol_weight: float = Field(default=0.0, ge=0)  # weight of the online-vs-EMA agreement term, 2 - 2cos (0 = off)
    # fmt: on


class DistillParams(ParamsSection):
    """Distillation from teachers (tasks/train/distill.py, objectives/distill.py): TinyCLIP affinity mimicking, MobileCLIP's w0*CLIP + w1*KD, or CLIP-KD's feature terms."""

    # fmt: off
    mode: Literal["off", "online", "offline"] = "off"  # online = teachers run every step; offline = stored embeddings of the reinforced dataset
    loss: Literal["mobileclip", "affinity", "feature"] = "mobileclip"  # mobileclip: mean over caption types of w0*CLIP-CE + w1*KD; affinity: TinyCLIP, KD alone with a fixed student scale; feature: CLIP-KD's w_fd*FD + w_icl*ICL (+ w0*CLIP-CE + w1*KD), student embed_dim = teacher's
    teachers: list[str] = Field(default_factory=lambda: ["data/models/teacher"])  # online: model references load_clip reads (folder, models:/ URI, random:<cfg>); ensemble averaged after softmax
    teacher_logit_scale: float = Field(default=0.0, ge=0)  # scale of every teacher's softmax; 0 = each teacher's own learned scale (offline: manifest extra logit_scale, else 100)
    w0: float = Field(default=1.0, ge=0)  # weight of the student's own CLIP cross-entropy (mobileclip)
    w1: float = Field(default=1.0, ge=0)  # weight of the KD term (mobileclip, feature)
    w_fd: float = Field(default=1.0, ge=0)  # feature: weight of CLIP-KD's feature distillation, squared distance of the unit embeddings to the teacher's
    w_icl: float = Field(default=1.0, ge=0)  # feature: weight of CLIP-KD's interactive contrastive term (student image vs teacher texts, student text vs teacher images)
    student_scale: float = Field(default=50.0, gt=0)  # affinity: the student's fixed logit scale (TinyCLIP: 50)
    caption_types: list[str] = Field(default_factory=list)  # caption fields each given its own loss term (missing on a sample: its picked caption); [] = the picked caption only
    reinforced_dir: str = "data/reinforce"  # offline: the reinforce stage's output (docs/CONTRACTS.md)
    aug_pick: Literal["random", "epoch"] = "random"  # offline: stored augmentation per sample and step: seeded random, or (pass over the data) % K
    # fmt: on


class InheritParams(ParamsSection):
    """TinyCLIP manual weight inheritance (tasks/train/inherit.py): start the student from slices of a larger trained model."""

    # fmt: off
    source: str = ""  # model reference load_clip reads (folder, models:/ URI, random:<cfg>); "" = off
    image: bool = True  # inherit the image tower
    text: bool = True  # inherit the text tower
    # fmt: on


class HQClipParams(ParamsSection):
    """HQ-CLIP losses from the recaption fields (tasks/train/hqclip.py): hard-negative texts and tag classification."""

    # fmt: off
    enabled: bool = False  # train with the HQ-CLIP objective instead of the plain contrastive one
    negative_field: str = "long_negative"  # JSON side-file field holding the long negative description
    positive_tags_field: str = "short_positive"  # JSON side-file field holding the positive tags (list)
    negative_tags_field: str = "short_negative"  # JSON side-file field holding the negative tags (list)
    negative_weight: float = Field(default=1.0, ge=0)  # w_neg: weight of the hard negatives in the image->text softmax denominator; 0 = plain CLIP
    tag_weight: float = Field(default=0.5, ge=0)  # w_tag: weight of the tag classification loss; 0 = off
    unmentioned_weight: float = Field(default=0.1, ge=0)  # BCE weight of vocabulary tags a sample names neither way (target 0)
    tag_min_count: int = Field(default=2, ge=1)  # a tag enters the vocabulary when this many samples name it
    max_tags: int = Field(default=512, ge=1)  # vocabulary size cap (most frequent first)
    # fmt: on


class HeadInitParams(ParamsSection):
    """How the two projection heads start (tasks/train/headinit.py): random, or closed form (CCA or a text-space regression) from the training pairs' stored features."""

    # fmt: off
    method: Literal["random", "cca", "regress"] = "random"  # random = the model's own init (or the weights `pretrained` loads); cca = regularised CCA between image and text features; regress = text PCA + image ridge regression onto it (both need locked towers, stored features)
    ridge: float = Field(default=1.0, ge=0)  # added to each covariance, times its mean eigenvalue (trace / d) (cca: both; regress: the image one); teacher, cca with no step: 0.01 0.198, 1 0.296, 10 0.266
    center: bool = True  # centre the features first (and start the shared mean offset at zero: the heads have no bias)
    power: float = Field(default=1.0, ge=0)  # cca only: canonical direction i weighted by its correlation ** power (0 = plain whitened CCA)
    # fmt: on


class TrainParams(StageParams):
    """Everything that changes what a training run computes; WHERE it runs comes from settings."""

    # fmt: off
    # model
    model: str = "clipmill-tiny-vit"  # open_clip architecture name or a config in tasks/clip/configs
    pretrained: str = ""  # whole-model weights: open_clip tag (needs internet), checkpoint path or "" for none
    pretrained_image: str = ""  # image-tower state dict mapped in order: "pkg:<package>/<file>", a path or an https URL
    pretrained_text: bool = False  # load the Hugging Face text tower's own pretrained weights
    image_size: int = Field(default=0, ge=0, le=1024)  # pixels; 0 = the model config's size
    lock_image: bool = False  # freeze the image tower (LiT)
    lock_image_unlocked_groups: int = Field(default=0, ge=0)  # last layer groups of a locked image tower left trainable
    lock_image_freeze_bn: bool = True  # keep BatchNorm statistics of a locked image tower fixed
    lock_text: bool = False  # freeze the text tower
    lock_text_unlocked_layers: int = Field(default=0, ge=0)  # last layers of a locked text tower left trainable
    lock_text_freeze_layer_norm: bool = True  # also freeze LayerNorms of a locked text tower
    grad_checkpointing: bool = False  # recompute activations in backward to save memory
    feature_cache: bool = True  # fully locked towers (no augmentation): encode their frozen features once into the feature store (data/features), steps run only the heads; same results

    # data
    shards: str = "data/curate/shards"  # folder of webdataset *.tar shards (or a glob)
    exclude_uids: str | None = None  # parquet with a `uid` column (decontaminate's flagged_uids.parquet): samples never trained on; None = none
    caption_fields: dict[str, float] = Field(default_factory=lambda: {"txt": 1.0})  # sample field -> probability of using it as the caption
    resample: bool = True  # draw shards with replacement (webdataset resampling) instead of epoch passes
    shuffle_buffer: int = Field(default=256, ge=1)  # samples held for shuffling
    train_augment: bool = False  # open_clip training transform (random resized crop) instead of the eval one
    seed: int = 0  # one seed for data order, init and augmentation

    # optimisation
    steps: int = Field(default=100, ge=1)  # optimizer steps
    batch_size: int = Field(default=64, ge=2)  # global batch (all workers, all accumulation micro-batches)
    accum_steps: int = Field(default=1, ge=1)  # micro-batches per optimizer step (open_clip feature caching)
    lr: float = Field(default=5e-4, gt=0)  # peak learning rate
    weight_decay: float = Field(default=0.1, ge=0)  # AdamW decay on >=2-d weights (not on gains, biases, logit scale)
    beta1: float = Field(default=0.9, ge=0, lt=1)  # AdamW beta1
    beta2: float = Field(default=0.98, ge=0, lt=1)  # AdamW beta2
    eps: float = Field(default=1e-6, gt=0)  # AdamW epsilon
    warmup_steps: int = Field(default=10, ge=0)  # linear warmup steps before the cosine decay
    grad_clip_norm: float = Field(default=1.0, ge=0)  # max global gradient norm; 0 = no clipping
    loss: Literal["clip", "siglip", "coca"] = "clip"  # open_clip ClipLoss (softmax), SigLipLoss (sigmoid) or CoCaLoss (contrastive + captioning; a CoCa model)
    local_loss: bool = False  # each worker computes loss on its rows only (open_clip --local-loss)
    gather_with_grad: bool = True  # gathered features carry gradients (exact equivalence with one worker)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU

    # training methods (tasks/train/objectives)
    patch_dropout: PatchDropoutParams = PatchDropoutParams()  # FLIP random patch dropout
    aclip: AClipParams = AClipParams()  # A-CLIP attentive masking with an EMA model
    distill: DistillParams = DistillParams()  # distillation from teachers (online or from the reinforced dataset)
    inherit: InheritParams = InheritParams()  # weight inheritance from a larger trained model
    hqclip: HQClipParams = HQClipParams()  # HQ-CLIP hard negatives and tag loss
    head_init: HeadInitParams = HeadInitParams()  # random or data-driven (CCA, text-space regression) init of the projection heads (locked towers, stored features)

    # distribution and checkpoints
    num_workers: int = Field(default=0, ge=0, le=1024)  # Ray Train workers; 0 = local mode, no Ray
    shard_split: bool = False  # each worker reads only its own shards (shards[rank::num_workers], open_clip style) instead of all of them; faster, but not equal to one worker
    use_gpu: bool = False  # one GPU per worker (nccl) instead of CPU (gloo)
    cpus_per_worker: float = Field(default=1.0, gt=0)  # CPUs Ray reserves per worker
    max_failures: int = Field(default=0, ge=-1)  # Ray Train restarts after a worker failure (-1 = unlimited)
    checkpoint_every: int = Field(default=50, ge=1)  # optimizer steps between checkpoints
    keep_checkpoints: int = Field(default=2, ge=1)  # newest train-state checkpoints kept
    run_root: str = "data/train_runs"  # train-state checkpoints and Ray Train storage (resume source)
    resume: bool = True  # continue from the latest checkpoint of the same params (exact resume)
    log_every: int = Field(default=1, ge=1)  # steps between MLflow metric points

    # outputs
    output_dir: str = "data/models/train"  # model folder (docs/CONTRACTS.md)
    registered_model_name: str = "clipmill-student"  # MLflow model registry name; "" = do not register
    # fmt: on

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        if not self.caption_fields or any(p < 0 for p in self.caption_fields.values()):
            raise ValueError(
                f"caption_fields {self.caption_fields!r}: need at least one field, probabilities >= 0"
            )
        if sum(self.caption_fields.values()) <= 0:
            raise ValueError(f"caption_fields {self.caption_fields!r}: probabilities sum to 0")
        self._check_methods()
        if self.loss == "coca" and self.accum_steps > 1:
            raise ValueError(
                f"loss coca with accum_steps {self.accum_steps}: the captioning loss cannot use "
                "feature caching; set accum_steps: 1"
            )
        workers = max(self.num_workers, 1)
        if self.batch_size % (workers * self.accum_steps):
            raise ValueError(
                f"batch_size {self.batch_size} must divide evenly over num_workers {workers} "
                f"x accum_steps {self.accum_steps}"
            )
        return self

    def _check_methods(self) -> None:
        """Method switches that cannot work together, refused before any work."""
        fully_locked_image = self.lock_image and self.lock_image_unlocked_groups == 0
        for name, on in (
            ("patch_dropout.ratio", self.patch_dropout.ratio > 0),
            ("aclip.enabled", self.aclip.enabled),
        ):
            if on and fully_locked_image:
                raise ValueError(
                    f"{name}: masks patches of the image tower, but lock_image with "
                    "lock_image_unlocked_groups 0 keeps it frozen in eval mode (no masking); unlock groups"
                )
        if self.aclip.enabled and self.patch_dropout.ratio > 0:
            raise ValueError(
                f"aclip.enabled with patch_dropout.ratio {self.patch_dropout.ratio}: A-CLIP chooses "
                "the kept patches itself; set patch_dropout.ratio: 0"
            )
        if self.aclip.enabled and self.accum_steps > 1:
            raise ValueError(
                f"aclip.enabled with accum_steps {self.accum_steps}: A-CLIP cannot accumulate "
                "micro-batches; set accum_steps: 1"
            )
        text_cached = (
            self.lock_text
            and not self.lock_text_unlocked_layers
            and self.lock_text_freeze_layer_norm
        )
        if self.aclip.enabled and text_cached and self.feature_cache:
            raise ValueError(
                "aclip.enabled with a locked text tower and feature_cache: A-CLIP runs the towers "
                "itself; set feature_cache: false"
            )
        if self.aclip.enabled and self.loss not in ("clip", "siglip"):
            raise ValueError(
                f"aclip.enabled with loss {self.loss!r}: A-CLIP's views use a contrastive loss "
                "(clip or siglip)"
            )
        if self.head_init.method != "random" and not (
            fully_locked_image and not self.train_augment and text_cached and self.feature_cache
        ):
            raise ValueError(
                f"head_init.method {self.head_init.method!r}: computed from the stored features "
                "of both frozen towers; needs lock_image and lock_text with nothing unlocked, "
                "lock_text_freeze_layer_norm, train_augment false and feature_cache true"
            )
        if self.aclip.momentum_start > self.aclip.momentum_end:
            raise ValueError(
                f"aclip.momentum_start {self.aclip.momentum_start} > aclip.momentum_end "
                f"{self.aclip.momentum_end}: the EMA momentum only rises"
            )

    def needs_ray(self) -> bool:
        """Local mode (num_workers=0) trains without Ray (in a child process of the runner's:
        tasks/train/local.py): no Ray to start."""
        return self.num_workers > 0

    def fingerprint_fields(self) -> dict:
        """What makes two runs the same computation: resume only ever continues an identical run."""
        skip = {
            "num_workers",
            "use_gpu",
            "cpus_per_worker",
            "max_failures",
            "log_every",
            "resume",
            "output_dir",
            "registered_model_name",
            "run_root",
            "keep_checkpoints",
            "feature_cache",  # a pure cache: on or off, the same computation
        }
        if self.shard_split and self.num_workers > 1:  # the workers' parts make the data order
            skip.discard("num_workers")
        if self.head_init == HeadInitParams():  # the default: fingerprints of earlier runs kept
            skip.add("head_init")
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}
