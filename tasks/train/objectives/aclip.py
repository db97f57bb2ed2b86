"""Attentive Mask CLIP (A-CLIP, Yang et al. 2023; microsoft/A-CLIP) on open_clip's ViT.

Per step and sample:
1. Views. The zoom-out view is the batch image itself (the whole image at model resolution, no
   colour augmentation). The two online views are random boxes inside it (RandomResizedCrop-style,
   area fraction in [aclip.crop_scale_min, 1], aspect in [3/4, 4/3]) resized back to model
   resolution with bilinear `roi_align`. So the zoom-out view contains both online crops by
   construction and each crop's box in its pixels is known exactly (our choice: the release builds
   the three views with its own transforms from the raw image; ours needs no change to the reader).
2. Attention. An EMA copy of the WHOLE model (both towers and projections, momentum on a cosine
   schedule aclip.momentum_start -> aclip.momentum_end per step, `tasks.train.ema`) encodes the
   zoom-out view unmasked (under inference_mode, in bf16 where the hardware has native bf16
   matmuls: only the ranking of blocks is read; the forward stops once the last block's attention
   row is recorded unless the BYOL term needs the embedding); its CLS -> patch attention is
   averaged over heads and over ALL blocks, read from the same softmax product each block uses
   (`masking.AttentionRecorder`: one in-projection per block, no second key projection).
3. Masks. For each online view the map is cut to its box, resized to the patch grid, pooled to 2x2
   patch blocks, and the top `N - int(N * mask_ratio)` blocks are kept (`masking.select_patches`).
   The mask applies at any ratio > 0 (the release only masks with ratio > 0 and its default is 0,
   so by default it trains unmasked; our default ratio is 0.5).
4. Loss: `0.5 * L(view1, text) + 0.5 * L(view2, text)`, the text tower run once per step (on the
   batch's used columns, `tasks.clip.texttrim`) and shared by both views, with the run's loss (CLIP or
   SigLIP), plus the optional self-supervised terms (weights default 0). Both online views go
   through ONE image-tower forward whose stem embeds only their kept patches
   (`embed_kept_patches`). The optional terms:
   `aclip.simclr_weight * NT-Xent(z1, z2; tau = aclip.simclr_temperature)` over the two online
   views' normalised image embeddings of this worker's batch, and
   `aclip.byol_weight * mean_v (2 - 2 cos(z_v, sg(e)))`, z_v an online view's normalised image
   embedding and e the EMA model's normalised embedding of the zoom-out view (BYOL-style
   online/EMA agreement without a predictor head: our choice, the paper's exact heads differ).
The EMA copy is the objective's state: it goes into every train-state checkpoint (exact resume).
A-CLIP cannot accumulate micro-batches (params refuse accum_steps > 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tasks.clip.texttrim import encode_text
from tasks.train.ema import EmaModel, momentum_at
from tasks.train.loop import LOSSES, _loss_of
from tasks.train.objectives.base import Batch, ObjectiveBase
from tasks.train.objectives.masking import (
    AttentionRecorder,
    MapComplete,
    crop_resize,
    install_patch_keep,
    random_boxes,
    select_patches,
    vision_transformer,
)
from tasks.train.params import TrainParams

if TYPE_CHECKING:
    from torch import Tensor

EMA_PREFIX = "ema."


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    """SimCLR's loss: each view's positive is the other view of its sample, negatives all others."""
    z = torch.cat([F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)])
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, target)


@contextmanager
def embed_kept_patches(visual: Any, keep: Tensor | None) -> Iterator[None]:
    """While open, the ViT's patch embedding embeds only the patches `keep` lists.

    Why: the online views keep half of their patches, yet open_clip's stem convolves every patch
    (and back-propagates into conv1 from all of them) before the patch-dropout slot drops half.
    A stride = kernel convolution is one linear map per patch, so the kept patches are cut out of
    the pixels (`unfold`, one gather), embedded with conv1's weight as a matrix, and scattered into
    a zero grid of conv1's output shape; the dropped positions are never read (PatchKeep gathers
    `keep` after the position embedding), so the kept tokens are the same numbers up to float
    rounding (a matmul instead of the convolution kernel) at half of conv1's forward and weight
    gradient. A stem that is not such a plain patch convolution runs unchanged.
    """
    conv = visual.conv1
    plain = (
        keep is not None
        and isinstance(conv, torch.nn.Conv2d)
        and conv.stride == conv.kernel_size
        and conv.padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )
    if not plain:
        yield
        return
    assert keep is not None

    def forward(images: Tensor) -> Tensor:
        bsz, chans, height, width = images.shape
        ph, pw = conv.kernel_size
        gh, gw = height // ph, width // pw
        if gh * ph != height or gw * pw != width:
            raise ValueError(f"image {height}x{width} is not a whole number of {ph}x{pw} patches")
        patches = images.unfold(2, ph, ph).unfold(3, pw, pw)  # (B, C, gh, gw, ph, pw)
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(bsz, gh * gw, chans * ph * pw)
        kept = torch.gather(patches, 1, keep[..., None].expand(-1, -1, patches.shape[-1]))
        embedded = F.linear(kept, conv.weight.reshape(conv.out_channels, -1), conv.bias)
        grid = embedded.new_zeros(bsz, gh * gw, conv.out_channels)
        grid = grid.scatter(1, keep[..., None].expand(-1, -1, conv.out_channels), embedded)
        return grid.permute(0, 2, 1).view(bsz, conv.out_channels, gh, gw)  # a view, no copy

    conv.forward = forward
    try:
        yield
    finally:
        conv.__dict__.pop("forward", None)


def map_autocast(device: Any) -> Any:
    """bf16 autocast for the EMA forward where bf16 matmuls are native (CUDA, or a CPU with
    AVX512-BF16/AMX through oneDNN: ~1.8x faster than fp32 on this machine's EPYC); else none."""
    from contextlib import nullcontext

    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    native_cpu_bf16 = torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )
    if device.type == "cpu" and native_cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


class AClipObjective(ObjectiveBase):
    """Two attention-masked online views, an EMA teacher of the masks, optional SSL terms."""

    accumulates = False

    def __init__(self, p: TrainParams, model: Any, rank: int, world: int) -> None:
        super().__init__()
        self.p, self.cfg = p, p.aclip
        self.loss_fn = LOSSES[p.loss](p, rank, world)
        visual = vision_transformer(model, "aclip.enabled")
        self.keeper = install_patch_keep(model, "aclip.enabled")
        self.grid = (int(visual.grid_size[0]), int(visual.grid_size[1]))
        self.patch = (int(visual.patch_size[0]), int(visual.patch_size[1]))
        if self.grid[0] % 2 or self.grid[1] % 2:
            raise ValueError(
                f"aclip.enabled: model {p.model!r} has a {self.grid[0]}x{self.grid[1]} patch grid; "
                "A-CLIP pools 2x2 patch blocks, so it needs an even grid"
            )
        self.ema = EmaModel(model)

    def masks(
        self, images: Tensor, boxes: list[Tensor]
    ) -> tuple[list[Tensor | None], Tensor | None]:
        """Each view's kept patch indices (None at mask_ratio 0) and the EMA zoom-out embedding
        (None when no term reads it: then the EMA forward stops once the map is complete)."""
        visual = self.ema.module.visual
        need_embedding = self.cfg.byol_weight > 0
        if self.cfg.mask_ratio == 0 and not need_embedding:  # nothing reads the EMA forward
            return [None for _ in boxes], None
        recorder = AttentionRecorder(visual, stop_at_last=not need_embedding)
        ema_embedding: Tensor | None = None
        try:
            # no autograd bookkeeping at all, and bf16 where the hardware has it: only the map's
            # ranking of blocks is read (the release runs this forward under its AMP as well)
            with torch.inference_mode(), map_autocast(images.device):
                ema_embedding = visual(images)
        except MapComplete:
            pass
        finally:
            recorder.close()
        if ema_embedding is not None:  # a normal tensor: the BYOL term's product saves it
            ema_embedding = ema_embedding.clone()
        if self.cfg.mask_ratio == 0:
            return [None for _ in boxes], ema_embedding
        attention = recorder.map(self.grid)
        return [
            select_patches(attention, b, self.patch, self.cfg.mask_ratio) for b in boxes
        ], ema_embedding

    def loss(self, model: Any, batch: Batch, step: int) -> Tensor:
        cfg = self.cfg
        images = batch.images
        bsz, _, height, width = images.shape
        boxes = [
            random_boxes(bsz, height, width, (cfg.crop_scale_min, 1.0), images.device)
            for _ in range(2)
        ]
        keeps, ema_embedding = self.masks(images, boxes)
        text = encode_text(model, batch.texts, normalize=True)
        out: dict[str, Any] = {"text_features": text, "logit_scale": model.logit_scale.exp()}
        if getattr(model, "logit_bias", None) is not None:
            out["logit_bias"] = model.logit_bias
        # both online views in ONE image-tower forward of 2B samples (same kept-patch count per
        # view): bigger matmuls and half the per-call overhead of two forwards, same numbers
        crops = torch.cat([crop_resize(images, box) for box in boxes])
        keep = None if keeps[0] is None else torch.cat(keeps)  # type: ignore[arg-type]
        self.keeper.keep = keep
        try:
            with embed_kept_patches(model.visual, keep):
                both = model.encode_image(crops, normalize=True)
        finally:
            self.keeper.keep = None
        views = list(both.split(bsz))
        clip_terms = [_loss_of(self.loss_fn, {**out, "image_features": z}) for z in views]
        loss = 0.5 * clip_terms[0] + 0.5 * clip_terms[1]
        terms = {
            "clip_view1": float(clip_terms[0].detach()),
            "clip_view2": float(clip_terms[1].detach()),
        }
        if cfg.simclr_weight > 0:
            ssl = nt_xent(views[0], views[1], cfg.simclr_temperature)
            loss = loss + cfg.simclr_weight * ssl
            terms["simclr"] = float(ssl.detach())
        if cfg.byol_weight > 0:
            assert ema_embedding is not None
            target = F.normalize(ema_embedding.detach().float(), dim=-1)
            byol = torch.stack([(2 - 2 * (z.float() * target).sum(-1)).mean() for z in views])
            loss = loss + cfg.byol_weight * byol.mean()
            terms["byol"] = float(byol.mean().detach())
        terms["kept_patches"] = float(
            keeps[0].shape[1] if keeps[0] is not None else self.grid[0] * self.grid[1]
        )
        self._terms = terms
        return loss

    def momentum(self, step: int) -> float:
        return momentum_at(step, self.p.steps, self.cfg.momentum_start, self.cfg.momentum_end)

    def after_step(self, model: Any, step: int) -> None:
        """Fold the just-updated online weights into the EMA copy with this step's momentum."""
        m = self.momentum(step)
        self.ema.update(model, m)
        self._terms["ema_momentum"] = m

    def state_dict(self) -> dict[str, Tensor]:
        return {EMA_PREFIX + k: v for k, v in self.ema.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            raise ValueError(
                "aclip.enabled: the checkpoint holds no EMA model; cannot resume exactly"
            )
        self.ema.load_state_dict(
            {k[len(EMA_PREFIX) :]: v for k, v in state.items() if k.startswith(EMA_PREFIX)}
        )
