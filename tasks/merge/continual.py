"""Continual baselines OPCM is compared with, in the same sequential, constant-memory setting.

Continual task arithmetic: `theta += lambda * tau_t` for each arriving model, from theta0, no
rescaling. Running weight average: `theta = (t * theta + theta_t) / (t + 1)` (t models so far),
theta_1 = the first model. Each holds the base (memory-mapped), the merged state and the
incoming model (memory-mapped): memory does not grow with the number of models.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from tasks.clip.statedict import LazyWeights
from tasks.merge.keys import base_state


def continual_task_arithmetic(
    base: LazyWeights, models: Iterable[LazyWeights], keys: Sequence[str], lam: float
) -> dict[str, Any]:
    """theta0 + lambda * tau_1 + lambda * tau_2 + ..., one model at a time."""
    state = base_state(base)
    for model in models:
        for key in keys:
            state[key] = state[key] + lam * (model.get(key) - base.get(key))
    return state


def running_average(
    base: LazyWeights, models: Iterable[LazyWeights], keys: Sequence[str]
) -> dict[str, Any]:
    """The running mean of the arriving models' weights (excluded keys: the base's)."""
    state = base_state(base)
    for t, model in enumerate(models):
        for key in keys:
            incoming = model.get(key)
            state[key] = incoming if t == 0 else (t * state[key] + incoming) / (t + 1)
    return state
