"""Fused AdamW: the loop's optimizer takes torch's fused kernel and moves the weights as the
per-parameter AdamW with the same groups does (float rounding apart), over real contrastive steps."""

from __future__ import annotations

import copy
from typing import Any

import torch


def _steps(model: Any, optimizer: Any, batches: list[tuple[Any, Any]]) -> list[float]:
    """Plain CLIP steps (clip_grad_norm_ and the logit-scale clamp as the loop does)."""
    from open_clip.loss import ClipLoss

    from tasks.train.loop import MAX_LOGIT_SCALE

    loss_fn, losses = ClipLoss(), []
    model.train()
    for images, texts in batches:
        optimizer.zero_grad(set_to_none=True)
        out = model(images, texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        losses.append(float(loss))
    return losses


def test_fused_adamw_matches_the_per_parameter_loop() -> None:
    from tasks.clip import build_model
    from tasks.train.loop import make_optimizer
    from tasks.train.params import TrainParams

    torch.manual_seed(0)
    p = TrainParams(lr=1e-3, weight_decay=0.2)
    model = build_model("clipmill-tiny-vit").model
    model.output_dict = True
    reference = copy.deepcopy(model)
    fused = make_optimizer(model, p)
    assert fused.defaults["fused"] is True  # the CPU takes the fused kernel
    by_name = dict(reference.named_parameters())
    names = {id(q): n for n, q in model.named_parameters()}
    groups = [  # the same groups (decay on matrices only) over the copy's tensors, unfused
        {
            "params": [by_name[names[id(q)]] for q in g["params"]],
            "weight_decay": g["weight_decay"],
        }
        for g in fused.param_groups
    ]
    plain = torch.optim.AdamW(
        groups, lr=p.lr, betas=(p.beta1, p.beta2), eps=p.eps, fused=False, foreach=False
    )
    g = torch.Generator().manual_seed(1)
    size = model.visual.image_size[0]
    batches = [
        (
            torch.randn(8, 3, size, size, generator=g),
            torch.randint(1, 400, (8, model.context_length), generator=g),
        )
        for _ in range(4)
    ]
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    losses_fused = _steps(model, fused, batches)
    losses_plain = _steps(reference, plain, batches)
    assert all(abs(a - b) < 1e-5 for a, b in zip(losses_fused, losses_plain, strict=True))
    moved = 0
    for n, q in model.named_parameters():
        ref = by_name[n]
        # within 1% of one step's largest move (lr): Adam divides by sqrt(v) + eps, so rows with
        # gradients near eps (rare tokens) magnify the kernels' rounding differences (~4e-6 here)
        assert float((q - ref).abs().max()) < 0.01 * p.lr, n
        moved += int(not torch.equal(q, before[n]))
    assert moved > 0  # the steps changed the weights: the comparison compared something


def test_fused_only_where_the_kernel_runs() -> None:
    from tasks.train.loop import fused_supported

    assert fused_supported([torch.zeros(2, requires_grad=True)])
    assert not fused_supported([])
    assert not fused_supported([torch.zeros(2, device="meta")])
