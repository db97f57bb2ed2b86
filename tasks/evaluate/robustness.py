"""Patch robustness: zero-shot accuracy when some patches are corrupted or an adversarial patch is pasted.

Images are split into grid x grid patches; a share of them (chosen per image, seeded) gets Gaussian
noise, a box blur or a grey occluder, in [0, 1] pixel space before the model's normalisation.
The adversarial patch is one universal square optimised by PGD (signed gradient ascent on the
cross-entropy of the true class, random placement each step) on a held-out part of the images and
tested, at random placements, on the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tasks.evaluate.datasets import EvalSet
from tasks.evaluate.params import RobustnessParams


def normalisation(preprocess: Any) -> tuple[Any, Any]:
    """Mean and std of the preprocess's Normalize step, shaped (1, 3, 1, 1)."""
    import torch
    from torchvision.transforms import Normalize

    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, Normalize):
            return torch.tensor(t.mean).view(1, -1, 1, 1), torch.tensor(t.std).view(1, -1, 1, 1)
    raise ValueError("robustness: the model's preprocess has no Normalize step")


def patch_mask(n: int, size: int, grid: int, fraction: float, gen: Any) -> Any:
    """(n, 1, size, size) bool: `round(fraction * grid^2)` random grid cells per image."""
    import torch

    cells = grid * grid
    k = round(fraction * cells)
    pick = torch.rand(n, cells, generator=gen).argsort(dim=1)[:, :k]
    flat = torch.zeros(n, cells, dtype=torch.bool)
    flat.scatter_(1, pick, True)
    cell = -(-size // grid)
    mask = flat.view(n, 1, grid, grid).repeat_interleave(cell, 2).repeat_interleave(cell, 3)
    return mask[:, :, :size, :size]


def corrupt(x: Any, kind: str, mask: Any, p: RobustnessParams, gen: Any) -> Any:
    import torch
    import torch.nn.functional as F

    if kind == "noise":
        alt = (x + p.noise_std * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    elif kind == "blur":
        k = p.blur_kernel | 1
        alt = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
    elif kind == "occlusion":
        alt = torch.full_like(x, 0.5)
    else:
        raise ValueError(f"robustness: unknown corruption {kind!r}")
    return torch.where(mask, alt, x)


def paste(x: Any, patch: Any, gen: Any) -> Any:
    """Paste `patch` at one random position per image (differentiable in the patch)."""
    import torch

    n, _, h, w = x.shape
    ph, pw = patch.shape[-2:]
    ys = torch.randint(0, h - ph + 1, (n,), generator=gen).tolist()
    xs = torch.randint(0, w - pw + 1, (n,), generator=gen).tolist()
    out = []
    for i in range(n):
        pad = (xs[i], w - pw - xs[i], ys[i], h - ph - ys[i])
        big = torch.nn.functional.pad(patch, pad)
        m = torch.nn.functional.pad(torch.ones_like(patch[:1]), pad)
        out.append(x[i] * (1 - m) + big * m)
    return torch.stack(out)


def evaluate(emb: Any, s: EvalSet, p: RobustnessParams) -> dict[str, Any]:
    """Zero-shot top-1 on the first `max_samples` images: clean (their stored embeddings, the
    zero-shot task's), under each corruption and fraction, and under an adversarial patch.
    `emb` is the model's `Embedder`: its classifier prompts and clean embeddings are reused."""
    import torch

    from tasks.evaluate.embed import pixel_batch
    from tasks.evaluate.zeroshot import zeroshot_classifier

    loaded = emb.loaded
    n = min(p.max_samples, len(s))
    mean, std = normalisation(loaded.preprocess)
    x = pixel_batch(s.images[:n], loaded.preprocess) * std + mean
    y = torch.as_tensor(s.labels[:n])
    w = zeroshot_classifier(emb.text_encoder(), s.classnames, s.templates)
    layout = torch.channels_last if emb.params.channels_last else torch.contiguous_format

    def scores(batch: Any) -> Any:
        pixels = ((batch - mean) / std).contiguous(memory_format=layout)
        feats = loaded.model.encode_image(pixels)
        return 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ w

    def acc(batch: Any) -> float:
        with torch.no_grad():
            return float((scores(batch).argmax(1) == y[: len(batch)]).float().mean())

    gen = torch.Generator().manual_seed(p.seed)
    clean = (100.0 * emb.images(s.images[:n]) @ w).argmax(1)
    out: dict[str, Any] = {"clean_acc1": float((clean == y).float().mean())}
    for kind in p.corruptions:
        for frac in p.fractions:
            mask = patch_mask(n, x.shape[-1], p.grid, frac, gen)
            out[f"{kind}_{frac:g}_acc1"] = acc(corrupt(x, kind, mask, p, gen))
    if p.adversarial:
        with frozen_weights(loaded.model):
            out.update(adversarial_patch(x, y, scores, p, gen))
    return out


@contextmanager
def frozen_weights(model: Any) -> Iterator[None]:
    """No gradient bookkeeping for the weights while the patch is optimised (only the patch
    needs one); every parameter's own flag put back afterwards."""
    flags = [(q, q.requires_grad) for q in model.parameters()]
    for q, _ in flags:
        q.requires_grad_(False)
    try:
        yield
    finally:
        for q, flag in flags:
            q.requires_grad_(flag)


def adversarial_patch(
    x: Any, y: Any, scores: Any, p: RobustnessParams, gen: Any
) -> dict[str, float]:
    """PGD on the first share of images, accuracy with and without the patch on the rest."""
    import torch

    n_opt = max(1, min(len(x) - 1, round(len(x) * p.adv_holdout_fraction)))
    side = max(1, round(p.adv_patch_side * x.shape[-1]))
    patch = torch.rand(3, side, side, generator=gen)
    for _ in range(p.adv_steps):
        patch.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(scores(paste(x[:n_opt], patch, gen)), y[:n_opt])
        (grad,) = torch.autograd.grad(loss, patch)
        patch = (patch.detach() + p.adv_step_size * grad.sign()).clamp(0, 1)
    with torch.no_grad():
        test_x, test_y = x[n_opt:], y[n_opt:]
        clean = float((scores(test_x).argmax(1) == test_y).float().mean())
        attacked = float((scores(paste(test_x, patch, gen)).argmax(1) == test_y).float().mean())
        rand_patch = torch.rand(3, side, side, generator=gen)
        random_acc = float(
            (scores(paste(test_x, rand_patch, gen)).argmax(1) == test_y).float().mean()
        )
    return {
        "adv_clean_acc1": clean,
        "adv_patch_acc1": attacked,
        "random_patch_acc1": random_acc,
        "adv_patch_pixels": side,
    }
