"""OPCM: sequential, projection-based continual merging (Tang et al., "Merging Models on the Fly
Without Retraining"), exactly as ../shared/REFERENCE.md "Merge" states it.

1. First model: merged = theta_1, lambda_1 = 1, mean norm = ||tau_1|| (over all merged keys).
2. Model t: mean norm = mean of ||tau_i|| so far. For every matrix that acts as a linear map
   (keys.is_linear_matrix), with D the current merged task vector: D = U S V^T (full SVD),
   r = argmax(cumsum(S)/sum(S) > alpha) (0-based), P = U^T tau_t V with its diagonal and its
   top-left r x r block zeroed, update = U P V^T; new = theta0 + lambda_{t-1} D + update. Every
   other merged key adds tau_t unprojected.
3. lambda_t = ||theta' - theta0|| / mean norm, theta_t = theta0 + (theta' - theta0) / lambda_t.

Iterates over state-dict KEYS, so every parameter of both towers takes part (fusion_bench's
leaf-module walk skips open_clip's in_proj_weight, class_embedding, positional_embedding, proj,
text_projection, logit_scale). Memory: the base and the incoming model are memory-mapped and read
one tensor at a time; only the merged state is held, whatever the number of models. `OpcmState`
is what a later arrival needs (merged weights, lambda, the task-vector norms so far), so the
merge-on-arrival flow continues from a registered merged model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tasks.clip.statedict import LazyWeights
from tasks.merge.keys import base_state, is_linear_matrix


@dataclass
class OpcmState:
    """The merged model so far and what the next step needs."""

    merged: dict[str, Any]  # theta_t, every key of the base
    lam: float = 1.0  # lambda_t
    norms: list[float] = field(default_factory=list)  # ||tau_i|| of every model merged so far
    names: list[str] = field(default_factory=list)  # the models merged, in order

    def info(self) -> dict[str, Any]:
        return {"lambda": self.lam, "norms": list(self.norms), "order": list(self.names)}


def split_rank(singular_values: Any, alpha: float) -> int:
    """0-based r: the first index where the cumulative share of singular values exceeds alpha."""
    import torch

    total = float(singular_values.sum())
    if total <= 0:
        return 0
    share = torch.cumsum(singular_values, dim=0) / total
    return int(torch.argmax((share > alpha).to(torch.int8)))


def project(d: Any, tau: Any, alpha: float) -> tuple[Any, int]:
    """(projected update, r): tau_t with the merged task vector's dominant directions removed.

    REFERENCE.md's form is U (U^T tau V with its diagonal and top-left r x r block zeroed) V^T
    with the full SVD. Every zeroed entry lies in the top-left k x k block (k = min of the
    shape; r < k), which only the first k singular vectors reach, so the update equals
    tau - U_k Z V_k^T with Z the zeroed entries: the thin SVD gives the same result without the
    m x m basis (the full form's cost at 3072 x 768). A wide matrix is projected as its
    transpose (the pattern is transpose-invariant; LAPACK is slow on wide inputs). Float64
    throughout, as before."""
    import torch

    if d.shape[0] < d.shape[1]:
        update, r = project(d.T, tau.T, alpha)
        return update.T, r
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    r = split_rank(s, alpha)
    t = tau.double()
    m = u.T @ t @ vh.T  # k x k: the top-left block of U^T tau V
    zeroed = torch.diag_embed(torch.diagonal(m))
    zeroed[:r, :r] = m[:r, :r]
    return (t - u @ zeroed @ vh).to(tau.dtype), r


def opcm_start(base: LazyWeights, first: LazyWeights, keys: Sequence[str]) -> OpcmState:
    """Step 1: the first model as it is, lambda 1."""
    state = base_state(base)
    total = 0.0
    for key in keys:
        state[key] = first.get(key)
        total += float(((state[key] - base.get(key)) ** 2).sum())
    return OpcmState(state, 1.0, [math.sqrt(total)], [first.name])


def opcm_step(
    state: OpcmState, base: LazyWeights, incoming: LazyWeights, keys: Sequence[str], alpha: float
) -> OpcmState:
    """Steps 2 and 3 for one arriving model; updates `state` in place and returns it."""
    tau_sq = 0.0
    new_sq = 0.0
    for key in keys:
        theta0 = base.get(key)
        tau = incoming.get(key) - theta0
        tau_sq += float((tau**2).sum())
        d = state.merged[key] - theta0
        if is_linear_matrix(key, tuple(d.shape)) and bool(tau.any()):  # U^T 0 V = 0: no SVD
            update, _ = project(d, tau, alpha)
        else:
            update = tau
        new = state.lam * d + update
        new_sq += float((new**2).sum())
        state.merged[key] = new  # the unscaled task vector until lambda_t is known
    state.norms.append(math.sqrt(tau_sq))
    mean_norm = sum(state.norms) / len(state.norms)
    lam = math.sqrt(new_sq) / mean_norm if mean_norm > 0 and new_sq > 0 else 1.0
    for key in keys:
        state.merged[key] = base.get(key) + state.merged[key] / lam
    state.lam = lam
    state.names.append(incoming.name)
    return state


def opcm(
    base: LazyWeights, models: Iterable[LazyWeights], keys: Sequence[str], alpha: float
) -> OpcmState:
    """Merge the models in the order given. `models` may be a generator that opens each model
    only when it arrives: no earlier model is referenced once the next one is merged."""
    state: OpcmState | None = None
    for model in models:
        state = (
            opcm_start(base, model, keys)
            if state is None
            else opcm_step(state, base, model, keys, alpha)
        )
        del model
    if state is None:
        raise ValueError("OPCM: no models to merge")
    return state


def opcm_continue(merged: LazyWeights, info: dict[str, Any]) -> OpcmState:
    """The state a registered OPCM model was left in (its weights and its lineage's lambda,
    norms and order), so the next arrival merges as if the run had never stopped."""
    try:
        lam, norms, order = float(info["lambda"]), list(info["norms"]), list(info["order"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f"model {merged.name}: its merge lineage holds no OPCM state ({exc}); "
            "continue only from a model the merge stage wrote with method opcm"
        ) from None
    state = {key: merged.get(key) for key in merged.names()}
    return OpcmState(state, lam, [float(n) for n in norms], [str(n) for n in order])
