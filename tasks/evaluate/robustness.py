"""Patch robustness: zero-shot accuracy when some patches are corrupted or an adversarial patch is pasted.

Images are split into grid x grid patches; a share of them (chosen per image, seeded) gets Gaussian
noise, a box blur or a grey occluder, in [0, 1] pixel space before the model's normalisation.
The adversarial patch is one universal square optimised by PGD (signed gradient ascent on the
cross-entropy of the true class, random placement each step) on a held-out part of the images and
tested, at random placements, on the rest.
"""

from __future__ import annotations

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


def evaluate(loaded: Any, s: EvalSet, p: RobustnessParams, amp: bool = False) -> dict[str, Any]:
    import torch

    from tasks.evaluate.embed import pixel_batch
    from tasks.evaluate.suite import text_encoder
    from tasks.evaluate.zeroshot import zeroshot_classifier

    n = min(p.max_samples, len(s))
    mean, std = normalisation(loaded.preprocess)
    x = pixel_batch(s.images[:n], loaded.preprocess) * std + mean
    y = torch.as_tensor(s.labels[:n])
    w = zeroshot_classifier(text_encoder(loaded, amp), s.classnames, s.templates)

    def scores(batch: Any) -> Any:
        feats = loaded.model.encode_image((batch - mean) / std)
        return 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ w

    def acc(batch: Any) -> float:
        with torch.no_grad():
            return float((scores(batch).argmax(1) == y[: len(batch)]).float().mean())

    gen = torch.Generator().manual_seed(p.seed)
    out: dict[str, Any] = {"clean_acc1": acc(x)}
    for kind in p.corruptions:
        for frac in p.fractions:
            mask = patch_mask(n, x.shape[-1], p.grid, frac, gen)
            out[f"{kind}_{frac:g}_acc1"] = acc(corrupt(x, kind, mask, p, gen))
    if p.adversarial:
        out.update(adversarial_patch(x, y, scores, p, gen))
    return out


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
