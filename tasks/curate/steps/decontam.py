"""Eval-set decontamination: drop a pool image that is a near-duplicate of any evaluation image,
by pHash Hamming distance OR by cosine of CLIP image embeddings (thresholds are params)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.features import hex_to_u64
from tasks.curate.steps.base import StepContext, StepResult, embeddings
from tasks.curate.steps.dedup import _codes, hamming_pairs


def _hash_hits(
    rows: pa.Table, ev: pa.Table, max_p: int, max_d: int
) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """row -> (closest eval index, pHash distance) for rows within BOTH thresholds (pHash and
    dHash to the same eval image: on the sample's clip-art, pHash alone confuses look-alike
    shapes); also the rows lacking a hash."""
    ph, dh = rows.column("phash").to_pylist(), rows.column("dhash").to_pylist()
    have = [i for i, h in enumerate(ph) if h is not None and dh[i] is not None]
    eval_ph, eval_dh = ev.column("phash").to_pylist(), ev.column("dhash").to_pylist()
    eval_have = [j for j, h in enumerate(eval_ph) if h is not None and eval_dh[j] is not None]
    hits: dict[int, tuple[int, int]] = {}
    if have and eval_have:
        a, b, dist = hamming_pairs(
            _codes([ph[i] for i in have]), _codes([eval_ph[j] for j in eval_have]), max_p
        )
        row_d, eval_d = (
            hex_to_u64([dh[i] for i in have]),
            hex_to_u64([eval_dh[j] for j in eval_have]),
        )
        both = np.bitwise_count(row_d[a] ^ eval_d[b]) <= max_d
        for x, y, z in zip(a[both], b[both], dist[both], strict=True):
            row, j = have[x], eval_have[y]
            if row not in hits or z < hits[row][1]:
                hits[row] = (j, int(z))
    return hits, [i for i, h in enumerate(ph) if h is None or dh[i] is None]


def _embedding_hits(
    rows: pa.Table, ev: pa.Table, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(best cosine per row, eval index of it, mask of rows that have an embedding)."""
    x, mask = embeddings(rows, "image_emb")
    e, emask = embeddings(ev, "image_emb")
    best = np.full(rows.num_rows, np.nan)
    arg = np.full(rows.num_rows, -1)
    if len(x) and len(e):
        eval_idx = np.flatnonzero(emask)
        for start in range(0, len(x), 8192):
            sims = x[start : start + 8192] @ e.T
            j = np.argmax(sims, axis=1)
            rows_here = np.flatnonzero(mask)[start : start + 8192]
            best[rows_here] = sims[np.arange(len(j)), j]
            arg[rows_here] = eval_idx[j]
    return best, arg, mask


def decontaminate(rows: pa.Table, ctx: StepContext) -> StepResult:
    ev = ctx.eval_features
    if ev is None or ev.num_rows == 0:
        raise ValueError(f"decontaminate: no evaluation images found under {ctx.params.eval_dir}")
    p = ctx.params
    ids = ev.column("id").to_pylist()
    hits, no_hash = _hash_hits(
        rows, ev, p.decontam_hash_max_distance, p.decontam_dhash_max_distance
    )
    reasons: list[str | None] = [None] * rows.num_rows
    refs: list[str | None] = [None] * rows.num_rows
    score = np.full(rows.num_rows, np.nan)
    if p.decontam_embed_threshold is not None:
        best, arg, mask = _embedding_hits(rows, ev, p.decontam_embed_threshold)
        score = best
        for i in np.flatnonzero(
            mask & (np.nan_to_num(best, nan=-2.0) >= p.decontam_embed_threshold)
        ):
            reasons[i], refs[i] = "eval_near_duplicate_embedding", ids[arg[i]]
        for i in np.flatnonzero(~mask):
            reasons[i] = "no_embedding"
    for row, (j, _) in hits.items():
        reasons[row], refs[row] = "eval_near_duplicate_phash", ids[j]
    for i in no_hash:
        if reasons[i] is None:
            reasons[i] = "no_image_hash"
    return StepResult.from_reasons(
        reasons,
        ref=refs,
        score=score,
        metrics={"decontam_flagged": sum(r is not None and r.startswith("eval_") for r in reasons)},
    )
