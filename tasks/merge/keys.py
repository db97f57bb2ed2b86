"""Which keys a method merges: every floating tensor of both towers, minus params' exclude patterns.

Iterating over the state dict's KEYS (not over modules) is the point: fusion_bench's OPCM visits
leaf modules and so never merges parameters held by a module with children (open_clip's
`in_proj_weight`, `class_embedding`, `positional_embedding`, `proj`, `text_projection`,
`logit_scale`). A key that is excluded, or not floating (e.g. BatchNorm's `num_batches_tracked`),
keeps the base model's value in every method.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from tasks.clip.statedict import LazyWeights


def merged_keys(base: LazyWeights, exclude: Sequence[str]) -> list[str]:
    """The keys that take part, in file order."""
    out = []
    for key in base.names():
        if any(fnmatchcase(key, pattern) for pattern in exclude):
            continue
        if str(base.dtype(key)) in {"F32", "F16", "BF16", "F64"}:
            out.append(key)
    return out


def is_linear_matrix(key: str, shape: Sequence[int]) -> bool:
    """OPCM projects the updates of matrices that act as linear maps: every 2-D parameter except
    embedding tables (token / position / word embeddings, whose rows are looked up, not mixed).
    This covers nn.Linear weights, attention `in_proj_weight`, and open_clip's bare `proj` and
    `text_projection` matrices. Everything else (biases, norms, conv kernels, embeddings,
    `class_embedding`, `logit_scale`) adds the incoming task vector unprojected."""
    return len(shape) == 2 and "embedding" not in key


def base_state(base: LazyWeights) -> dict:
    """Every tensor of the base (the starting point of every output; excluded keys stay so)."""
    return {key: base.get(key) for key in base.names()}


def changed_keys(
    base: LazyWeights, models: Sequence[LazyWeights], keys: Sequence[str]
) -> list[str]:
    """The keys at least one model changes. A key no model changes keeps the base's exact bytes
    in every method (a soup's mean of equal floats can be one ulp off), so locked towers stay
    byte-identical and evaluate reuses their stored frozen features (tasks/clip/featurestore.py)."""
    import torch

    out = []
    for key in keys:
        theta0 = base.get(key)
        if any(not torch.equal(m.get(key), theta0) for m in models):
            out.append(key)
    return out
