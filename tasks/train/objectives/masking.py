"""Which patches a ViT step keeps: FLIP's random patch dropout and A-CLIP's attention-chosen blocks.

Both act at the same point of open_clip's VisionTransformer: its `patch_dropout` module, applied
after the position embedding and before `ln_pre`. `PatchKeep` replaces that module (it holds no
weights, so state dicts and exported models are unchanged): in training it either keeps the patch
indices an objective set for the next forward (A-CLIP) or delegates to open_clip's own
`PatchDropout` (FLIP: the CLS token plus `max(1, int(N * (1 - p)))` random patches); in eval mode
it is the identity.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class PatchKeep(nn.Module):
    """open_clip's patch-dropout slot: random dropout at `prob`, or exactly the indices in `keep`."""

    def __init__(self, prob: float = 0.0) -> None:
        from open_clip.transformer import PatchDropout

        super().__init__()
        self.flip = PatchDropout(prob=0.0, exclude_first_token=True)
        self.flip.prob = prob
        self.keep: Tensor | None = None  # (batch, kept) patch indices, CLS excluded, 0-based

    @property
    def prob(self) -> float:
        return float(self.flip.prob)

    @prob.setter
    def prob(self, value: float) -> None:
        if not 0 <= value < 1:
            raise ValueError(f"patch_dropout.ratio {value}: need 0 <= ratio < 1")
        self.flip.prob = value

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        if self.keep is None:
            self.flip.train()
            return self.flip(x)
        keep = self.keep.to(x.device)
        if keep.shape[0] != x.shape[0] or int(keep.max()) >= x.shape[1] - 1:
            raise ValueError(
                f"patch keep indices {tuple(keep.shape)} do not fit tokens {tuple(x.shape)}"
            )
        patches = torch.gather(x[:, 1:], 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        return torch.cat([x[:, :1], patches], dim=1)


def vision_transformer(model: Any, param: str) -> Any:
    """The model's open_clip VisionTransformer, or a clear error naming the param that needs one."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"{param}: needs an open_clip ViT image tower (VisionTransformer), "
            f"this model's is {type(visual).__name__}"
        )
    return visual


def install_patch_keep(model: Any, param: str) -> PatchKeep:
    """Put a PatchKeep in the ViT's patch-dropout slot (idempotent) and return it."""
    visual = vision_transformer(model, param)
    if isinstance(visual.patch_dropout, PatchKeep):
        return visual.patch_dropout
    keeper = PatchKeep(float(getattr(visual.patch_dropout, "prob", 0.0)))
    visual.patch_dropout = keeper
    return keeper


def flip_kept(num_patches: int, ratio: float) -> int:
    """Patches FLIP keeps (open_clip's PatchDropout rule), the CLS token not counted."""
    return max(1, int(num_patches * (1 - ratio)))


def blocks_kept(num_blocks: int, mask_ratio: float) -> int:
    """A-CLIP keeps `N - int(N * ratio)` blocks: ratio 0.5 keeps 25 of 49 (100 of 196 patches)."""
    return num_blocks - int(num_blocks * mask_ratio)


class MapComplete(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by `AttentionRecorder(stop_at_last=True)` once the last block's row is recorded."""


class AttentionRecorder:
    """Records CLS -> patch attention of every block of a ViT during one forward.

    While the recorder is open, each block's `nn.MultiheadAttention` runs `_attend` instead of its
    own forward (an instance-level override: no weights move, state dicts are unchanged; `close()`
    restores it). `_attend` is the same function as the layer without dropout or mask: ONE
    in-projection for q, k and v, the softmax attention written out, `P = softmax(q k^T / sqrt(d))`
    (in float32), output `P v` through the out-projection; the CLS row `P[:, :, 0, 1:]` averaged
    over heads is recorded from the very `P` the block uses, so the map costs nothing extra.
    Why not open_clip's fused call (`need_weights=False`, scaled_dot_product_attention) plus a
    separate CLS row: the row needs k projected a second time (1/12 of a block), and at these sizes
    the CPU flash-attention kernel is slower than the explicit product (65 tokens, 4 heads of 64,
    batch 64, one thread: 8.5 vs 3.9 ms per block in bf16, 14.9 vs 8.1 in fp32); measured on the
    EMA forward of clipmill-small-vit: 0.37 -> 0.25 CPU-s per step. `map()` averages the blocks.
    With `stop_at_last` the last block computes only the CLS query and the keys, records its row
    and raises `MapComplete`, so a forward run only for the map skips the last block's values,
    output and MLP and the head (callers catch it).
    """

    def __init__(self, visual: Any, stop_at_last: bool = False) -> None:
        self.rows: list[Tensor] = []
        self.modules: list[nn.MultiheadAttention] = []
        blocks = list(visual.transformer.resblocks)
        for i, block in enumerate(blocks):
            attn = getattr(block, "attn", None)
            if not isinstance(attn, nn.MultiheadAttention) or not attn.batch_first:
                self.close()
                raise ValueError(
                    f"aclip.enabled: block {i} of the ViT has no batch-first nn.MultiheadAttention "
                    f"({type(attn).__name__}); its attention cannot be read"
                )
            if (
                not attn._qkv_same_embed_dim
                or attn.bias_k is not None
                or attn.add_zero_attn
                or (attn.training and attn.dropout > 0)
            ):
                self.close()
                raise ValueError(
                    f"aclip.enabled: block {i}'s attention has separate q/k/v projections, "
                    "extra key/value biases, zero attention or active dropout; not supported"
                )
            last = stop_at_last and i == len(blocks) - 1
            attn.forward = functools.partial(self._attend, attn, last)  # type: ignore[method-assign]
            self.modules.append(attn)

    def _attend(
        self,
        module: nn.MultiheadAttention,
        last: bool,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
        **_: Any,
    ) -> tuple[Tensor, None]:
        if key is not query or value is not query or attn_mask is not None or need_weights:
            raise ValueError(
                "aclip.enabled: the ViT's attention is not plain unmasked self-attention; "
                "its CLS row cannot be read"
            )
        x = query  # (batch, tokens, width), already layer-normed by the block
        bsz, tokens, width = x.shape
        heads = module.num_heads
        d = width // heads
        w, b = module.in_proj_weight, module.in_proj_bias
        if last:  # only the CLS query and the keys: the row is all that is read of this block
            q = F.linear(x[:, :1], w[:width], None if b is None else b[:width])
            k = F.linear(x, w[width : 2 * width], None if b is None else b[width : 2 * width])
            q = q.view(bsz, 1, heads, d).transpose(1, 2)  # (B, h, 1, d)
            k = k.view(bsz, tokens, heads, d).transpose(1, 2)  # (B, h, T, d)
            p = ((q @ k.transpose(-1, -2)).float() * d**-0.5).softmax(dim=-1)
            self.rows.append(p[:, :, 0, 1:].mean(dim=1))
            raise MapComplete
        qkv = F.linear(x, w, b).view(bsz, tokens, 3, heads, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, h, T, d) each
        p = ((q @ k.transpose(-1, -2)).float() * d**-0.5).softmax(dim=-1)  # (B, h, T, T)
        self.rows.append(p[:, :, 0, 1:].mean(dim=1))  # CLS -> patches, mean over heads
        out = (p.to(v.dtype) @ v).transpose(1, 2).reshape(bsz, tokens, width)
        return F.linear(out, module.out_proj.weight, module.out_proj.bias), None

    def map(self, grid: tuple[int, int]) -> Tensor:
        """(batch, grid_h, grid_w): the recorded CLS -> patch attention averaged over ALL blocks."""
        if not self.rows:
            raise RuntimeError("no attention recorded: run the ViT forward first")
        mean = torch.stack(self.rows).mean(dim=0)
        return mean.view(mean.shape[0], *grid)

    def close(self) -> None:
        """Give every attention layer its own forward back (idempotent)."""
        for m in self.modules:
            m.__dict__.pop("forward", None)
        self.modules = []


def select_patches(
    attention: Tensor, boxes: Tensor, patch_size: tuple[int, int], mask_ratio: float
) -> Tensor:
    """Patch indices each online crop keeps, from the zoom-out view's attention map.

    attention: (B, gh, gw) CLS -> patch attention of the zoom-out view (the whole image);
    boxes: (B, 4) the crop (x1, y1, x2, y2) in the zoom-out view's pixels. The map is cut to the box
    and resized to the patch grid (`roi_align`, bilinear, aligned), pooled to 2x2 patch blocks, and
    the top `blocks_kept` blocks are kept; returns (B, 4 * kept) patch indices, row-major, sorted.
    """
    from torchvision.ops import roi_align

    bsz, gh, gw = attention.shape
    if gh % 2 or gw % 2:
        raise ValueError(
            f"aclip.enabled: patch grid {gh}x{gw} is not divisible into 2x2 blocks; "
            "choose image_size / patch_size even"
        )
    ph, pw = patch_size
    scale = torch.tensor([1 / pw, 1 / ph, 1 / pw, 1 / ph], device=boxes.device)
    rois = torch.cat(
        [torch.arange(bsz, device=boxes.device, dtype=boxes.dtype)[:, None], boxes * scale], dim=1
    )
    cut = roi_align(
        attention[:, None].float(),
        rois.float(),
        output_size=(gh, gw),
        aligned=True,
        sampling_ratio=1,
    )  # (B, 1, gh, gw)
    pooled = nn.functional.avg_pool2d(cut, 2).flatten(1)  # (B, gh/2 * gw/2)
    top = pooled.topk(blocks_kept(pooled.shape[1], mask_ratio), dim=1).indices
    bi, bj = top // (gw // 2), top % (gw // 2)
    rows = torch.stack([2 * bi, 2 * bi, 2 * bi + 1, 2 * bi + 1], dim=-1)
    cols = torch.stack([2 * bj, 2 * bj + 1, 2 * bj, 2 * bj + 1], dim=-1)
    return (rows * gw + cols).flatten(1).sort(dim=1).values


def random_boxes(
    batch: int, height: int, width: int, scale: tuple[float, float], device: Any
) -> Tensor:
    """RandomResizedCrop-style boxes (x1, y1, x2, y2) inside an image, one per sample.

    Area fraction uniform in `scale`, aspect ratio log-uniform in [3/4, 4/3], sides clamped to the
    image, position uniform; drawn from torch's global generator (the loop seeds it per step, so a
    resumed run draws the same boxes).
    """
    import math

    area = torch.empty(batch).uniform_(*scale) * height * width
    logr = torch.empty(batch).uniform_(math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(logr)
    w = torch.sqrt(area * ratio).clamp(1, width)
    h = torch.sqrt(area / ratio).clamp(1, height)
    x1 = torch.rand(batch) * (width - w)
    y1 = torch.rand(batch) * (height - h)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1).to(device)


def crop_resize(images: Tensor, boxes: Tensor) -> Tensor:
    """Each image's box resized back to the full resolution: one bilinear sample per output pixel
    at its centre (`roi_align`, aligned, sampling_ratio 1; the whole-image box is the identity)."""
    from torchvision.ops import roi_align

    bsz, _, height, width = images.shape
    rois = torch.cat(
        [torch.arange(bsz, device=images.device, dtype=boxes.dtype)[:, None], boxes], dim=1
    )
    return roi_align(
        images.float(), rois.float(), output_size=(height, width), aligned=True, sampling_ratio=1
    ).to(images.dtype)
