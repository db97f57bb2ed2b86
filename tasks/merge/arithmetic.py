"""Task-vector methods, one key at a time: task arithmetic, TIES, DARE and WiSE-FT.

`tau_i = theta_i - theta0`. Task arithmetic: `theta0 + lambda * sum(tau_i)`. TIES: each task's
vector trimmed to its top-k fraction of |tau| (globally over the task's flattened vector), a sign
elected per entry (sign of the sum of trimmed values), the values agreeing with it averaged
(disjoint mean, count at least 1) or summed, scaled by lambda. DARE (an option before TA/TIES):
each entry kept with probability 1 - p and rescaled by 1 / (1 - p). WiSE-FT:
`(1 - alpha) * theta0 + alpha * theta1`. Only one key's tensors (N of them) are in memory at a
time, plus the merged state; TIES's trim thresholds take one pass per task.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

from tasks.clip.statedict import LazyWeights
from tasks.merge.keys import base_state


def dare(tau: Any, p: float, seed: int, model_index: int, key: str) -> Any:
    """Drop each entry with probability p, rescale the rest by 1 / (1 - p); p = 0 is identity.

    The mask comes from a generator seeded by (seed, model index, key): the same run drops the
    same entries whatever order keys are visited in."""
    import torch

    if p <= 0:
        return tau
    gen = torch.Generator().manual_seed(dare_seed(seed, model_index, key))
    keep = torch.rand(tau.shape, generator=gen) < (1.0 - p)
    return torch.where(keep, tau / (1.0 - p), torch.zeros_like(tau))


def dare_seed(seed: int, model_index: int, key: str) -> int:
    """The mask generator's seed for one model's key."""
    return (seed * 1_000_003 + model_index * 7919 + zlib.crc32(key.encode())) % (2**63)


def task_vectors(
    base: LazyWeights, models: Sequence[LazyWeights], key: str, p: float, seed: int
) -> list[Any]:
    """tau_i for one key, DARE applied when p > 0."""
    theta0 = base.get(key)
    return [dare(m.get(key) - theta0, p, seed, i, key) for i, m in enumerate(models)]


def task_arithmetic(
    base: LazyWeights,
    models: Sequence[LazyWeights],
    keys: Sequence[str],
    lam: float,
    dare_p: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """theta0 + lambda * sum(tau_i); lambda = 0 returns the base exactly."""
    state = base_state(base)
    for key in keys:
        taus = task_vectors(base, models, key, dare_p, seed)
        state[key] = state[key] + lam * sum(taus[1:], taus[0])
    return state


def trim_threshold(abs_values: Any, top_k: float) -> float:
    """The smallest |tau| kept when keeping the top-k fraction: the n_keep-th largest value,
    n_keep = max(1, round(top_k * n)); entries equal to it are kept too (ties keep a few more)."""
    n = abs_values.numel()
    n_keep = max(1, min(n, round(top_k * n)))
    return float(abs_values.kthvalue(n - n_keep + 1).values)


def ties_thresholds(
    base: LazyWeights,
    models: Sequence[LazyWeights],
    keys: Sequence[str],
    top_k: float,
    dare_p: float,
    seed: int,
) -> list[float]:
    """Per task, the global trim threshold over its whole flattened task vector."""
    import torch

    out = []
    for i, model in enumerate(models):
        flat = torch.cat(
            [dare(model.get(k) - base.get(k), dare_p, seed, i, k).abs().flatten() for k in keys]
        )
        out.append(trim_threshold(flat, top_k))
        del flat
    return out


def ties_merge_key(taus: Sequence[Any], thresholds: Sequence[float], merge: str) -> Any:
    """Trim, elect, disjoint mean (or sum) for one key's task vectors."""
    import torch

    trimmed = torch.stack(
        [
            torch.where(t.abs() >= th, t, torch.zeros_like(t))
            for t, th in zip(taus, thresholds, strict=True)
        ]
    )
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign.unsqueeze(0)) & (trimmed != 0)
    kept = torch.where(agree, trimmed, torch.zeros_like(trimmed)).sum(dim=0)
    if merge == "sum":
        return kept
    return kept / agree.sum(dim=0).clamp(min=1)


def ties(
    base: LazyWeights,
    models: Sequence[LazyWeights],
    keys: Sequence[str],
    top_k: float,
    merge: str,
    lam: float,
    dare_p: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """TIES-merging (trim, elect sign, disjoint merge), scaled by lambda, on top of the base."""
    if merge not in {"mean", "sum"}:
        raise ValueError(f"ties.merge {merge!r}: use 'mean' or 'sum'")
    thresholds = ties_thresholds(base, models, keys, top_k, dare_p, seed)
    state = base_state(base)
    for key in keys:
        taus = task_vectors(base, models, key, dare_p, seed)
        state[key] = state[key] + lam * ties_merge_key(taus, thresholds, merge)
    return state


def wise_ft(
    base: LazyWeights, model: LazyWeights, keys: Sequence[str], alpha: float
) -> dict[str, Any]:
    """Weight-space ensemble of the base (zero-shot) and one fine-tuned model."""
    state = base_state(base)
    for key in keys:
        state[key] = (1.0 - alpha) * state[key] + alpha * model.get(key)
    return state


def task_vector_norm(base: LazyWeights, model: LazyWeights, keys: Sequence[str]) -> float:
    """||theta - theta0|| over the merged keys (used by OPCM's rescaling and by reports)."""
    total = 0.0
    for key in keys:
        total += float(((model.get(key) - base.get(key)) ** 2).sum())
    return math.sqrt(total)
