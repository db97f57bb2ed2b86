"""Data-driven initialisation of a LiT model's two projection heads (params `head_init`).

With both towers locked, the only weights that train are two bias-free linear projections
(image features -> embed_dim, text features -> embed_dim) and the temperature. Their random
init decides much of where 150 steps end up: on the teacher's stored features the scoreboard
mean spread 0.231-0.295 over seeds, and the spread came from the init, not the sample order
(README, issue 12). `cca` starts both heads from the closed-form answer to a close relative of
the contrastive objective instead: regularised canonical correlation analysis (CCA) between the
image and text features of the training pairs, whose top canonical directions are the linear
maps under which paired image and text features agree most (Hotelling 1936; used as a
cross-modal embedding by Gong et al. 2014, "A multi-view embedding space for modeling internet
images, tags, and their semantics"). The contrastive steps then run from there.

The init is computed before step 0 on every rank from the feature store (the same stored
features the steps read, so every rank gets the same matrices; rank 0's are broadcast anyway),
from every trainable sample once: its image features and the expected caption features under the
caption-field probabilities `pick_caption` samples from. It is a deterministic function of the
data and the params, so a run resumed from a checkpoint never recomputes it (the checkpointed
heads hold it and what the steps made of it), and a run killed before its first checkpoint
recomputes the same matrices.

Recipe (`cca_projections`), x = image features, y = text features, weighted pairs:
1. centre both (params `center`; the heads have no bias, so the embedding of the mean then is
   `W mean`, an offset shared by every image (text); `center` also projects that direction
   out of the init so the shared offset starts at zero);
2. covariances Cxx, Cyy with a ridge of `ridge` x their mean eigenvalue (trace / d) added,
   cross-covariance Cxy;
3. whiten, M = Cxx^-1/2 Cxy Cyy^-1/2, SVD M = U S V^T; the top `embed_dim` canonical pairs
   A = Cxx^-1/2 U, B = Cyy^-1/2 V, canonical correlations S;
4. direction i weighted by S_i ** `power` (CCA embeddings weight the better-correlated
   directions more; power 0 = plain whitened CCA);
5. each matrix rescaled to the Frobenius norm of PyTorch's default Linear init of that shape
   (uniform(+-1/sqrt(in))), so the optimiser's steps (Adam: about lr per element) move the
   heads as far, relative to their size, as they move a random init.
Fewer canonical pairs than embed_dim (a narrower tower) leaves the remaining rows at the
random init, scaled down to (near) zero influence.

`regress` keeps the text tower's own geometry instead of whitening it (CCA's whitening weights
every direction alike, so the class prompts' neighbourhoods that zero-shot relies on change):
the text head = the top embed_dim principal directions of the text features (orthonormal rows:
distances between captions kept up to the weakest directions), the image head = the ridge
regression of those text coordinates on the image features (steps 1, 2 and 5 as above), so an
image starts where its expected caption is. On the teacher it scored higher with no step than
CCA (README, issue 12).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from tasks.train.params import TrainParams


class HeadInitError(ValueError):
    """`head_init` cannot run for this model or these params; the message names the param."""


def caption_weights(sample: dict[str, Any], fields: dict[str, float]) -> list[tuple[str, float]]:
    """(caption, probability) of every caption `pick_caption` can return for this sample: the
    same fields it considers (a list field's elements share its weight evenly), the `txt`
    fallback when no field with a positive probability is present."""
    from tasks.io.wds import sample_json

    meta = sample_json(sample)
    present: dict[str, list[str]] = {}
    for name in fields:
        value = sample.get(name)
        value = (
            value.decode("utf-8", "replace") if isinstance(value, bytes) else meta.get(name, value)
        )
        values = value if isinstance(value, list) else [value]
        kept = [v.strip() for v in values if isinstance(v, str) and v.strip()]
        if kept:
            present[name] = kept
    total = sum(fields[n] for n in present)
    if not present or total <= 0:
        txt = sample.get("txt", b"")
        text = txt.decode("utf-8", "replace").strip() if isinstance(txt, bytes) else str(txt)
        return [(text, 1.0)]
    out: dict[str, float] = {}
    for name, kept in present.items():
        for v in kept:
            out[v] = out.get(v, 0.0) + fields[name] / total / len(kept)
    return [(c, w) for c, w in out.items() if w > 0]


def training_pairs(towers: Any, p: TrainParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image features (n, dx), expected caption features (n, dy), weights (n,)) of every
    trainable sample (image present, not excluded), once each, from the store the steps read."""
    from tasks.clip.featurestore import content_id
    from tasks.io.wds import image_ext
    from tasks.train.data import list_shards, load_excluded
    from tasks.train.features import _image_id

    exclude = load_excluded(p.exclude_uids)
    image_ids: list[str] = []
    rows: list[list[tuple[str, float]]] = []
    for shard in list_shards(p.shards):
        for r in towers.records.get(shard, []):
            if image_ext(r) is None or r.get("__key__") in exclude:
                continue
            image_ids.append(_image_id(r))
            rows.append(caption_weights(r, p.caption_fields))
    if not image_ids:
        raise HeadInitError("head_init: no trainable sample indexed (encode the towers first)")
    x = _stored(towers.image_store, image_ids, "image")
    captions = list(dict.fromkeys(c for row in rows for c, _ in row))
    index = {c: n for n, c in enumerate(captions)}
    feats = _stored(towers.text_store, [content_id(c) for c in captions], "text")
    y = np.zeros((len(rows), feats.shape[1]), np.float64)
    for n, row in enumerate(rows):
        for c, w in row:
            y[n] += w * feats[index[c]]
    return x.astype(np.float64), y, np.ones(len(rows), np.float64)


def _stored(store: Any, ids: list[str], tower: str) -> np.ndarray:
    feats, found = store.lookup(ids)
    if not found.all():
        raise HeadInitError(
            f"head_init: {int((~found).sum())} {tower} features missing from the store "
            f"{store!r}; the towers are encoded before the init"
        )
    return feats


def _moments(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray | None, center: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean x, mean y, Cxx, Cyy, Cxy), weighted; the Gram products in float32 (the stored
    features are float32; ~1 CPU-s for the teacher's 12.9k x 1280 instead of ~2 in float64)."""
    w = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    mx = w @ x if center else np.zeros(x.shape[1])
    my = w @ y if center else np.zeros(y.shape[1])
    xw = ((x - mx) * np.sqrt(w)[:, None]).astype(np.float32)
    yw = ((y - my) * np.sqrt(w)[:, None]).astype(np.float32)
    cxx = (xw.T @ xw).astype(np.float64)
    cyy = (yw.T @ yw).astype(np.float64)
    cxy = (xw.T @ yw).astype(np.float64)
    return mx, my, cxx, cyy, cxy


def _ridged(c: np.ndarray, ridge: float) -> np.ndarray:
    return c + ridge * np.trace(c) / len(c) * np.eye(len(c))


def cca_projections(
    x: np.ndarray,
    y: np.ndarray,
    dim: int,
    *,
    ridge: float,
    center: bool,
    power: float,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A (k, dx), B (k, dy), canonical correlations (k,)) of the top k = min(dim, dx, dy)
    canonical pairs of x and y (rows paired), directions weighted by corr ** power (module
    docstring); rows of A / B map features to the shared space as a Linear weight does.
    Whitened by Cholesky factors (any W with W^T C W = I gives the same canonical pairs; a
    Cholesky costs a tenth of the eigendecomposition of the 1280-d image covariance)."""
    from scipy.linalg import cholesky, solve_triangular

    mx, my, cxx, cyy, cxy = _moments(x, y, weights, center)
    lx = cholesky(_ridged(cxx, ridge), lower=True)
    ly = cholesky(_ridged(cyy, ridge), lower=True)
    m = solve_triangular(lx, solve_triangular(ly, cxy.T, lower=True).T, lower=True)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    k = min(dim, len(s))
    scale = np.clip(s[:k], 0.0, None) ** power
    a = solve_triangular(lx, u[:, :k], lower=True, trans="T").T * scale[:, None]
    b = solve_triangular(ly, vt[:k].T, lower=True, trans="T").T * scale[:, None]
    if center:  # no bias: the mean's image would be a shared offset; start it at zero
        a = a - np.outer(a @ mx, mx) / max(float(mx @ mx), 1e-12)
        b = b - np.outer(b @ my, my) / max(float(my @ my), 1e-12)
    return a, b, s[:k]


def regress_projections(
    x: np.ndarray,
    y: np.ndarray,
    dim: int,
    *,
    ridge: float,
    center: bool,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A (k, dx), B (k, dy), explained text variance share (k,)): B = the top k principal
    directions of the text features (their geometry kept, only the weakest directions
    dropped), A = the ridge regression of those text coordinates on the image features, so an
    image lands where its caption does in (a projection of) the text tower's own space."""
    mx, my, cxx, cyy, cxy = _moments(x, y, weights, center)
    vals, vecs = np.linalg.eigh(cyy)
    order = np.argsort(vals)[::-1]
    k = min(dim, len(vals))
    b = vecs[:, order[:k]].T
    a = np.linalg.solve(_ridged(cxx, ridge), cxy @ b.T).T
    if center:
        a = a - np.outer(a @ mx, mx) / max(float(mx @ mx), 1e-12)
        b = b - np.outer(b @ my, my) / max(float(my @ my), 1e-12)
    share = np.clip(vals[order[:k]], 0, None) / max(float(np.clip(vals, 0, None).sum()), 1e-12)
    return a, b, share


def _linear(module: Any, tower: str) -> Any:
    """The head's one bias-free Linear (a timm head: Sequential(drop, proj); HF: proj)."""
    import torch

    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if len(linears) != 1 or linears[0].bias is not None:
        raise HeadInitError(
            f"head_init: the {tower} head {type(module).__name__} is not one bias-free linear "
            "projection (model config *_proj 'linear'); use head_init.method: random"
        )
    return linears[0]


def _fill(linear: Any, mat: np.ndarray) -> None:
    """Copy `mat` (k <= out rows) into the Linear's weight, rescaled to the default init's
    Frobenius norm; rows past k keep their random init, shrunk to 1e-3 of its size."""
    import torch

    out_f, in_f = linear.weight.shape
    target = math.sqrt(out_f / 3.0)  # ||W||_F of uniform(+-1/sqrt(in)) with out x in entries
    full = linear.weight.detach().double().cpu().numpy() * 1e-3
    full[: len(mat)] = mat * (target / max(float(np.linalg.norm(mat)), 1e-12))
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(full).to(linear.weight))


def _broadcast(tensors: Iterator[Any], world: int) -> None:
    if world <= 1:
        return
    import torch.distributed as dist

    for t in tensors:
        dist.broadcast(t.data, src=0)


def init_heads(model: Any, towers: Any, p: TrainParams, world: int = 1) -> dict[str, float]:
    """Set both heads to the `p.head_init` init before step 0 (a fresh run only: the caller
    skips it when resuming); returns what the run reports (`head_init_*` metrics)."""
    if p.head_init.method == "random":
        return {}
    if towers is None or towers.image is None or towers.text is None:
        raise HeadInitError(
            f"head_init.method {p.head_init.method!r}: needs both towers locked and read from "
            "stored features (lock_image and lock_text with nothing unlocked, "
            "train_augment false, feature_cache true)"
        )
    started = time.perf_counter()
    x, y, w = training_pairs(towers, p)
    image_linear = _linear(model.visual.head, "image")
    text_linear = _linear(model.text.proj, "text")
    dim = image_linear.weight.shape[0]
    hi = p.head_init
    out: dict[str, float] = {"head_init_pairs": float(len(x))}
    if hi.method == "regress":
        a, b, share = regress_projections(x, y, dim, ridge=hi.ridge, center=hi.center, weights=w)
        out["head_init_text_variance"] = float(share.sum())  # kept by the text head
    else:
        a, b, corr = cca_projections(
            x, y, dim, ridge=hi.ridge, center=hi.center, power=hi.power, weights=w
        )
        out["head_init_corr_top"] = float(corr[0])
        out["head_init_corr_mean"] = float(corr.mean())
    _fill(image_linear, a)
    _fill(text_linear, b)
    _broadcast(iter((image_linear.weight, text_linear.weight)), world)
    return {
        **out,
        "head_init_seconds": round(time.perf_counter() - started, 3),
    }
