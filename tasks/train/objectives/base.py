"""The objective hook: the loop hands each step's batch to an Objective and back-propagates its loss.

An objective owns everything a training method adds around the model's forward (patch masks, an
EMA copy, teacher targets, extra heads' losses), so the loop stays one readable function and a new
method is a new objective, not a new loop. What an objective must carry across a restart for an
exact resume (an EMA copy, counters) it returns from `state_dict()`; the train-state checkpoint
stores it next to the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class Batch:
    """One step's local batch: image tensors, token ids and any per-sample extras by name.

    `extras` carries what a method needs besides the pair (teacher embeddings, hard-negative
    texts, tag targets, uids, stored augmentation indices); data.py fills it, objectives read it.
    """

    images: Tensor
    texts: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: Any) -> Batch:
        """Every tensor on `device` (non-blocking), extras included; non-tensors pass unchanged."""
        import torch

        def move(v: Any) -> Any:
            return v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v

        return Batch(
            move(self.images), move(self.texts), {k: move(v) for k, v in self.extras.items()}
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])


def as_batch(item: Any) -> Batch:
    """Batch iterators may yield a Batch or the plain (images, texts) pair older readers yield."""
    if isinstance(item, Batch):
        return item
    images, texts = item
    return Batch(images, texts, {})


@runtime_checkable
class Objective(Protocol):
    """What the loop calls each step.

    - `loss(model, batch, step)`: the scalar to back-propagate for this (local) batch; called under
      autocast; may set up step-dependent state on the model first (patch dropout ratio).
    - `after_step(model, step)`: after the optimizer step (EMA updates).
    - `terms()`: the latest loss's parts by name (logged to MLflow as `loss/<name>`).
    - `state_dict()` / `load_state_dict()`: tensors that must resume exactly (an EMA copy).
    - `accumulates`: True only if `forward_backward_accum` keeps the full-batch loss over
      micro-batches (open_clip's feature caching); the others refuse accum_steps > 1.
    """

    accumulates: bool

    def loss(self, model: Any, batch: Batch, step: int) -> Tensor: ...

    def after_step(self, model: Any, step: int) -> None: ...

    def terms(self) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Tensor]: ...

    def load_state_dict(self, state: dict[str, Tensor]) -> None: ...


class ObjectiveBase:
    """Defaults for objectives with nothing to resume, no post-step work and no loss parts."""

    accumulates = False

    def __init__(self) -> None:
        self._terms: dict[str, float] = {}

    def after_step(self, model: Any, step: int) -> None:
        return None

    def terms(self) -> dict[str, float]:
        return dict(self._terms)

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint holds objective state "
                f"({sorted(state)[:3]}...) this objective does not have; the run's params differ"
            )
