"""Typed parameters of the train stage (serves both registry stages `teacher` and `train`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.base import StageParams


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
    loss: Literal["clip", "siglip"] = "clip"  # open_clip ClipLoss (softmax) or SigLipLoss (sigmoid)
    local_loss: bool = False  # each worker computes loss on its rows only (open_clip --local-loss)
    gather_with_grad: bool = True  # gathered features carry gradients (exact equivalence with one worker)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast on GPU, fp32 on CPU

    # distribution and checkpoints
    num_workers: int = Field(default=0, ge=0, le=1024)  # Ray Train workers; 0 = in-process local mode
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
        workers = max(self.num_workers, 1)
        if self.batch_size % (workers * self.accum_steps):
            raise ValueError(
                f"batch_size {self.batch_size} must divide evenly over num_workers {workers} "
                f"x accum_steps {self.accum_steps}"
            )
        return self

    def needs_ray(self) -> bool:
        """Local mode (num_workers=0) trains in the runner's process: no Ray to start."""
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
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in skip}
