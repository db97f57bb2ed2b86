"""The training loop on open_clip's library: losses, AdamW groups, cosine LR, accumulation, AMP.

One loop serves the in-process local mode and every Ray Train worker; all randomness is derived
from (seed, step, rank), so a resumed run and an uninterrupted one compute the same thing. What a
step minimises is the run's objective (tasks/train/objectives: contrastive with FLIP, A-CLIP, ...);
the loop only moves its batch to the device, back-propagates, steps and reports.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from tasks.train.objectives.base import Batch, Objective, as_batch
from tasks.train.params import TrainParams

MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learnable temperature here


class NonFiniteLossError(RuntimeError):
    """Training diverged; the last good checkpoint is kept and named in the message."""


def _no_decay(name: str, param: Any) -> bool:
    """open_clip's rule: no weight decay on gains, biases, norms, embeddings-like 1-d tensors, logit scale."""
    return param.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name


def make_optimizer(model: Any, p: TrainParams) -> Any:
    import torch

    named = [(n, q) for n, q in model.named_parameters() if q.requires_grad]
    if not named:
        raise ValueError(
            f"model {p.model!r}: every parameter is locked; unlock a tower or some layers"
        )
    groups = [
        {"params": [q for n, q in named if _no_decay(n, q)], "weight_decay": 0.0},
        {"params": [q for n, q in named if not _no_decay(n, q)], "weight_decay": p.weight_decay},
    ]
    return torch.optim.AdamW(
        groups,
        lr=p.lr,
        betas=(p.beta1, p.beta2),
        eps=p.eps,
        fused=fused_supported([q for _, q in named]),
    )


FUSED_DEVICES = ("cpu", "cuda")  # where torch's fused AdamW kernel runs (one kernel for all params)


def fused_supported(params: list[Any]) -> bool:
    """Fused AdamW when every parameter is a float tensor on a device it runs on: the same
    update as the per-parameter loop within float rounding (tests/train/test_loop_fused.py), at a
    fraction of the CPU (0.017 vs 0.114 CPU-s per step for clipmill-small-vit, one thread)."""
    return bool(params) and all(
        q.is_floating_point() and q.device.type in FUSED_DEVICES for q in params
    )


def lr_at(step: int, p: TrainParams) -> float:
    """Linear warmup then cosine decay to 0 (open_clip_train.scheduler.cosine_lr)."""
    if step < p.warmup_steps:
        return p.lr * (step + 1) / p.warmup_steps
    span = max(p.steps - p.warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * (step - p.warmup_steps) / span)) * p.lr


def _clip_loss(p: TrainParams, rank: int, world: int) -> Any:
    from open_clip.loss import ClipLoss

    return ClipLoss(
        local_loss=p.local_loss,
        gather_with_grad=p.gather_with_grad,
        cache_labels=True,
        rank=rank,
        world_size=world,
    )


def _siglip_loss(p: TrainParams, rank: int, world: int) -> Any:
    from open_clip.loss import SigLipLoss

    return SigLipLoss(rank=rank, world_size=world)


# CoCa (open_clip's CoCaLoss): contrastive + captioning cross-entropy, with open_clip_train's
# default weights (--coca-contrastive-loss-weight 1, --coca-caption-loss-weight 2); pad id 0 is
# open_clip's tokenizer padding.
COCA_CLIP_WEIGHT = 1.0
COCA_CAPTION_WEIGHT = 2.0


def _coca_loss(p: TrainParams, rank: int, world: int) -> Any:
    from open_clip.loss import CoCaLoss

    return CoCaLoss(
        caption_loss_weight=COCA_CAPTION_WEIGHT,
        clip_loss_weight=COCA_CLIP_WEIGHT,
        pad_id=0,
        local_loss=p.local_loss,
        gather_with_grad=p.gather_with_grad,
        cache_labels=True,
        rank=rank,
        world_size=world,
    )


LOSSES: dict[str, Callable[[TrainParams, int, int], Any]] = {
    "clip": _clip_loss,
    "siglip": _siglip_loss,
    "coca": _coca_loss,
}


def model_kwargs_for_loss(loss: str) -> dict[str, Any]:
    """SigLIP starts from its paper's temperature and bias; CLIP from open_clip's defaults."""
    return {"init_logit_scale": math.log(10), "init_logit_bias": -10.0} if loss == "siglip" else {}


def apply_locks(model: Any, p: TrainParams) -> None:
    """LiT: freeze towers (or all but their last groups/layers) as the params say."""
    if p.lock_image:
        model.lock_image_tower(unlocked_groups=p.lock_image_unlocked_groups, freeze_bn_stats=False)
    if p.lock_text:
        model.lock_text_tower(
            unlocked_layers=p.lock_text_unlocked_layers,
            freeze_layer_norm=p.lock_text_freeze_layer_norm,
        )


def set_train_mode(model: Any, p: TrainParams) -> None:
    """Train mode, except fully locked towers (no dropout) and frozen BatchNorm statistics."""
    import torch

    model.train()
    if p.lock_image and not p.lock_image_unlocked_groups:
        model.visual.eval()
    elif p.lock_image and p.lock_image_freeze_bn:
        for m in model.visual.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    if p.lock_text and not p.lock_text_unlocked_layers:
        model.text.eval() if hasattr(model, "text") else None


def autocast(p: TrainParams, device: Any) -> Any:
    import torch

    use_bf16 = p.precision == "bf16" or (p.precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


def _loss_of(loss_fn: Any, out: dict[str, Any]) -> Any:
    if type(loss_fn).__name__ == "CoCaLoss":  # CoCa's output adds the caption `logits`, `labels`
        if "logits" not in out or "labels" not in out:
            raise ValueError(
                "loss 'coca' needs a CoCa model (an architecture with multimodal_cfg, e.g. "
                "clipmill-tiny-coca) and accum_steps 1"
            )
        clip, caption = loss_fn(
            out["image_features"],
            out["text_features"],
            out["logits"],
            out["labels"],
            out["logit_scale"],
        )
        return clip + caption
    args = [out["image_features"], out["text_features"], out["logit_scale"]]
    if "logit_bias" in out:
        args.append(out["logit_bias"])
    return loss_fn(*args)


def forward_backward(
    model: Any, objective: Objective, batch: Batch, step: int, accum: int, amp: Any
) -> Any:
    """The objective's loss over the whole (local) batch, back-propagated; returns it detached.

    With accumulation the objective does it itself (only the contrastive one can: open_clip's
    feature caching keeps the loss over the full batch, all negatives, one micro-batch at a time).
    """
    if accum == 1:
        with amp:
            loss = objective.loss(model, batch, step)
        loss.backward()
        return loss.detach()
    accumulate = getattr(objective, "forward_backward_accum", None)
    if not objective.accumulates or accumulate is None:
        raise ValueError(
            f"accum_steps {accum}: {type(objective).__name__} cannot accumulate; set accum_steps: 1"
        )
    return accumulate(model, batch, step, accum, amp)


SPARSE_ROWS_MIN = 4096  # gradient matrices with this many rows (token tables) go by touched rows


def average_gradients(model: Any, world: int, extra: Any = None) -> float | None:
    """All-reduce (mean) every gradient, exactly, in two collectives; `extra` (the step's local
    loss, a scalar tensor) rides in the first one and its mean across workers is returned (None
    without it), so a step syncs its workers once less than with a separate loss all-reduce.

    The text tower's token table (49,408 rows: 6.3M of clipmill-tiny-vit's 7.2M parameters) is
    most of the gradient bytes, yet a step touches only the rows of the tokens its batch holds;
    every other row's gradient is zero on every worker, so its mean is the zero it already is.
    So: one flat all-reduce of the small gradients together with a per-row "touched" flag of
    each such table (any matrix of SPARSE_ROWS_MIN rows or more), then one all-reduce of the rows
    some worker touched. The same sums as all-reducing everything (a row's mean is computed from
    the same values), at ~13% of the bytes for clipmill-tiny-vit (29 MB per step before) and
    ~45% for clipmill-small-vit (90 MB). Locked params cost nothing.
    """
    import torch
    import torch.distributed as dist

    if world == 1:
        return None if extra is None else float(extra)
    grads = [q.grad for q in model.parameters() if q.requires_grad and q.grad is not None]
    tables = [g for g in grads if g.dim() == 2 and g.shape[0] >= SPARSE_ROWS_MIN]
    table_ids = {id(g) for g in tables}
    small = [g for g in grads if id(g) not in table_ids]
    # any() on the float rows: 4.2 CPU-ms for the 49,408 x 128 table, against 7.2 for ne(0).any()
    touched = [g.any(dim=1).to(g.dtype) for g in tables]
    dtype = small[0].dtype if small else tables[0].dtype if tables else torch.float32
    head = [] if extra is None else [extra.detach().reshape(1).to(dtype)]
    flat = torch.cat(head + [g.reshape(-1) for g in small] + touched)
    dist.all_reduce(flat)
    mean = None if extra is None else float(flat[0]) / world
    offset = len(head)
    for g in small:
        g.copy_(flat[offset : offset + g.numel()].view_as(g)).div_(world)
        offset += g.numel()
    if tables:
        _average_touched_rows(tables, flat[offset:], world)
    return mean


def _average_touched_rows(tables: list[Any], flags: Any, world: int) -> None:
    """The second collective: the rows of each token table that some worker touched (`flags`,
    the all-reduced per-row flags of every table in order), averaged in place."""
    import torch
    import torch.distributed as dist

    rows, offset = [], 0
    for g in tables:
        rows.append(torch.nonzero(flags[offset : offset + g.shape[0]] > 0).squeeze(1))
        offset += g.shape[0]
    picked = torch.cat(
        [g.index_select(0, r).reshape(-1) for g, r in zip(tables, rows, strict=True)]
    )
    if not picked.numel():  # no worker touched any row: every rank sees the same flags
        return
    dist.all_reduce(picked)
    picked /= world
    offset = 0
    for g, r in zip(tables, rows, strict=True):
        n = r.numel() * g.shape[1]
        g.index_copy_(0, r, picked[offset : offset + n].view(r.numel(), g.shape[1]))
        offset += n


STEP_PHASES = ("data", "forward_backward", "allreduce", "optimizer", "on_step")


class StepClock:
    """Wall and CPU milliseconds of each phase of every step on this rank: the split that says
    where a multi-worker step loses time (benchmarks/train_overhead.py `two_workers`). A phase
    whose wall exceeds its CPU waited: for the other workers in a collective (the feature gather
    inside forward_backward, the all-reduce), for data, or for a core. CPU is the process's
    (`time.process_time`: gloo's and Ray's threads included). Two clock reads per phase."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {k: [] for k in STEP_PHASES}
        self.cpu: dict[str, list[float]] = {k: [] for k in STEP_PHASES}
        self._t = self._c = 0.0

    def start(self) -> None:
        self._t, self._c = time.perf_counter(), time.process_time()

    def mark(self, phase: str) -> None:
        """Close `phase` (it ran since the last start or mark)."""
        t, c = time.perf_counter(), time.process_time()
        self.wall[phase].append((t - self._t) * 1000)
        self.cpu[phase].append((c - self._c) * 1000)
        self._t, self._c = t, c

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean wall and CPU ms per phase over the steps, the first (it fills the shuffle
        buffer) left out; means, not medians, so the phases add up to the mean step."""

        def mean(xs: list[float]) -> float:
            xs = xs[1:] or xs
            return round(sum(xs) / len(xs), 2) if xs else 0.0

        return {
            "wall_ms": {k: mean(v) for k, v in self.wall.items()},
            "cpu_ms": {k: mean(v) for k, v in self.cpu.items()},
        }


@dataclass
class StepResult:
    step: int
    loss: float
    lr: float
    logit_scale: float
    samples_per_s: float
    terms: dict[str, float] = field(default_factory=dict)  # the objective's loss parts by name


def train_steps(
    model: Any,
    optimizer: Any,
    objective: Objective,
    batches: Iterator[Any],
    p: TrainParams,
    *,
    start_step: int,
    rank: int,
    world: int,
    device: Any,
    on_step: Callable[[StepResult], None],
    last_good: Callable[[], str],
    clock: StepClock | None = None,
) -> None:
    """Run optimizer steps start_step..steps-1; `on_step` logs and checkpoints after each.

    `batches` yields `Batch`es (or plain (images, texts) pairs); the objective turns each into the
    loss and, after the optimizer step, updates what it keeps (an EMA copy). `clock` gets each
    step's phase times (a fresh one when None)."""
    import torch

    from tasks.train.data import sample_seed

    amp = autocast(p, device)
    trainable = [q for q in model.parameters() if q.requires_grad]
    clock = clock or StepClock()
    for step in range(start_step, p.steps):
        t0 = time.perf_counter()
        clock.start()
        torch.manual_seed(sample_seed(p.seed, 10**15 + step * 4096 + rank))
        lr = lr_at(step, p)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = as_batch(next(batches)).to(device)
        clock.mark("data")
        optimizer.zero_grad(set_to_none=True)
        local = forward_backward(model, objective, batch, step, p.accum_steps, amp)
        clock.mark("forward_backward")
        # the loss's mean rides in the gradients' all-reduce: one sync of the workers less
        loss = average_gradients(model, world, local)
        assert loss is not None
        clock.mark("allreduce")
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"step {step}: loss is {loss}; training stopped, no checkpoint written after the divergence; "
                f"last good checkpoint: {last_good() or 'none yet'} (lower lr or raise warmup_steps)"
            )
        if p.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, p.grad_clip_norm)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        objective.after_step(model, step)
        clock.mark("optimizer")
        dt = time.perf_counter() - t0
        on_step(
            StepResult(
                step,
                loss,
                lr,
                float(model.logit_scale.detach().exp()),
                p.batch_size / dt,
                objective.terms(),
            )
        )
        clock.mark("on_step")
