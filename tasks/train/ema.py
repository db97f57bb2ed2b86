"""An exponential-moving-average copy of a model (A-CLIP's momentum encoder).

The copy covers every parameter of the model it follows (both towers and their projections) and
its buffers; its momentum rises from `start` to `end` on a half-cosine over the run's steps:
`m(step) = end - (end - start) * (1 + cos(pi * step / steps)) / 2` (A-CLIP / BYOL), so m(0) = start
and m(steps) = end. Update: `ema = m * ema + (1 - m) * online`. Its tensors are a state dict the
train-state checkpoint stores, so a resumed run continues the same average.
"""

from __future__ import annotations

import copy
import math
from typing import Any


def momentum_at(step: int, steps: int, start: float, end: float) -> float:
    """The cosine momentum schedule evaluated before optimizer step `step` is folded in."""
    if not 0 <= start <= end <= 1:
        raise ValueError(f"EMA momentum start {start} / end {end}: need 0 <= start <= end <= 1")
    frac = min(max(step, 0), steps) / max(steps, 1)
    return end - (end - start) * (1 + math.cos(math.pi * frac)) / 2


class EmaModel:
    """A frozen deep copy of `model` in eval mode, moved towards the online weights each step."""

    def __init__(self, model: Any) -> None:
        self.module = copy.deepcopy(model)
        self.module.eval()
        for q in self.module.parameters():
            q.requires_grad_(False)

    def update(self, model: Any, momentum: float) -> None:
        """ema = m * ema + (1 - m) * online for parameters; buffers are copied (BN statistics)."""
        import torch

        with torch.no_grad():
            ema_params = dict(self.module.named_parameters())
            pairs = [(ema_params[name], q.detach()) for name, q in model.named_parameters()]
            # one fused pass over all tensors: ema += (1 - m) * (online - ema)
            torch._foreach_lerp_([e for e, _ in pairs], [q for _, q in pairs], 1 - momentum)
            ema_buffers = dict(self.module.named_buffers())
            for name, b in model.named_buffers():
                ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {k: v.detach() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state, strict=True)
