"""Eval-set decontamination: drop a pool image that is a near-duplicate of any evaluation image.

The eval images are featurised in the pool's own form (`eval_view` of decontaminate's `match`, see
tasks/decontam/views.py EvalView): as the crawl stored them, plus crops. A pool image is flagged when
- its pHash AND dHash are within the thresholds of the same eval image (whole view), and its
  image embedding is close enough to that eval image's (`decontaminate.hash_embed_min`), or
- the same holds for one of the eval image's crops (`decontaminate.crop_embed_min`; the embedding
  gate uses the whole eval image, crops are not embedded), or
- its embedding alone reaches `decontaminate.embed_threshold` (off by default: the teacher's embeddings
  put whole families of clip-art, e.g. every generated star, above 0.96).
The step's score is the image-embedding cosine to the closest eval image it was compared with:
with `embed_threshold` set, every eval image; otherwise the eval images its hashes matched (NaN
when none). Without a threshold only those eval images are embedded (tasks/curate/inputs.py), so
a cosine to any other would not exist.
Hashes see luminance only and confuse look-alike shapes; the embedding gate removes most of those.
The hash matching is the library's (tasks/decontam/matching.py) with the thresholds and crops of
the `match` section of params/decontaminate.yaml (read by tasks/curate/inputs.py, never
re-declared in curate's params): the same the `decontaminate` stage runs before any model trains;
the embedding gate on top is curate's own.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.params import DecontaminateParams
from tasks.curate.steps.base import Input, Step, StepContext, StepResult, embeddings
from tasks.decontam.matching import REASON_CROP, REASON_HASH, hash_pairs, variants
from tasks.decontam.params import HashMatchParams

REASON_EMBED = "eval_near_duplicate_embedding"


class _Cosines:
    """Cosine of a pool row's image embedding to an eval image's WHOLE view (crops share the
    embedding of the view they were cut from); NaN where either has none."""

    def __init__(self, rows: pa.Table, ev: pa.Table, variants: list[str]) -> None:
        self.x, xmask = embeddings(rows, "image_emb")
        self.e, emask = embeddings(ev, "image_emb")
        self.row_pos = np.full(rows.num_rows, -1)
        self.row_pos[xmask] = np.arange(int(xmask.sum()))
        in_e = np.cumsum(emask) - 1  # eval row -> its row in self.e
        full_pos = {
            i: int(in_e[j])
            for j, (i, v) in enumerate(zip(ev.column("id").to_pylist(), variants, strict=True))
            if v == "full" and emask[j]
        }
        self.eval_pos = np.array(
            [full_pos.get(i, -1) for i in ev.column("id").to_pylist()], dtype=np.int64
        )
        self.row_mask = xmask

    def pairs(self, row: np.ndarray, evr: np.ndarray) -> np.ndarray:
        out = np.full(len(row), np.nan)
        rp, ep = self.row_pos[row], self.eval_pos[evr]
        ok = (rp >= 0) & (ep >= 0)
        if ok.any():
            out[ok] = np.einsum("ij,ij->i", self.x[rp[ok]], self.e[ep[ok]])
        return out

    def best(self, whole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best cosine per row over the given eval rows, that eval row); NaN / -1 without."""
        n = len(self.row_pos)
        best, arg = np.full(n, np.nan), np.full(n, -1)
        cols = whole[self.eval_pos[whole] >= 0]
        if not len(self.x) or not len(cols):
            return best, arg
        e = self.e[self.eval_pos[cols]]
        rows_here = np.flatnonzero(self.row_mask)
        for start in range(0, len(self.x), 8192):
            sims = self.x[start : start + 8192] @ e.T
            j = np.argmax(sims, axis=1)
            idx = rows_here[start : start + 8192]
            best[idx] = sims[np.arange(len(j)), j]
            arg[idx] = cols[j]
        return best, arg


def _gated(
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray], cos: _Cosines | None, gate: float | None
) -> dict[int, int]:
    """row -> eval row of its pairs passing the embedding gate: the one with the highest
    embedding cosine (the closest pHash without embeddings)."""
    row, evr, dist = pairs
    rank = -dist.astype(np.float64)
    if cos is not None:
        sims = np.nan_to_num(cos.pairs(row, evr), nan=-2.0)
        if gate is not None:
            keep = sims >= gate
            row, evr, sims = row[keep], evr[keep], sims[keep]
            rank = rank[keep]
        rank = sims
    hits: dict[int, tuple[int, float]] = {}
    for r, j, z in zip(row.tolist(), evr.tolist(), rank.tolist(), strict=True):
        if r not in hits or z > hits[r][1]:
            hits[r] = (j, z)
    return {r: j for r, (j, _) in hits.items()}


class Decontaminate(Step[DecontaminateParams]):
    """Flags pool images that are near-duplicates of an eval image (hashes, crops, embeddings)."""

    name = "decontaminate"
    params_model = DecontaminateParams
    requires = frozenset({"hashes", "eval_features"})

    def inputs(self) -> frozenset[Input]:
        """Embeddings only when a cosine gate or threshold is set (the crop gate only with
        crops, which params/decontaminate.yaml's `match` section says)."""
        from tasks.curate.inputs import decontaminate_match

        extra: frozenset[Input] = frozenset({"embeddings"})
        crops = bool(decontaminate_match().crops)
        return self.requires | extra if self.params.uses_embeddings(crops) else self.requires

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        ev = ctx.eval_features
        if ev is None or ev.num_rows == 0:
            raise ValueError(
                f"decontaminate: no evaluation images found under {ctx.params.paths.eval_dir}"
            )
        if ctx.hash_match is None:
            raise ValueError("decontaminate: no hash match section (prepared with eval_features)")
        return _decide(rows, ev, self.params, ctx.hash_match)


def _decide(rows: pa.Table, ev: pa.Table, p: DecontaminateParams, m: HashMatchParams) -> StepResult:
    ids = ev.column("id").to_pylist()
    kinds = variants(ev)
    whole = np.array([i for i, v in enumerate(kinds) if v == "full"], dtype=np.int64)
    crops = np.array([i for i, v in enumerate(kinds) if v != "full"], dtype=np.int64)
    use_emb = p.uses_embeddings(bool(m.crops))
    cos = _Cosines(rows, ev, kinds) if use_emb else None

    reasons: list[str | None] = [None] * rows.num_rows
    refs: list[str | None] = [None] * rows.num_rows
    score = np.full(rows.num_rows, np.nan)
    if cos is not None:
        if p.embed_threshold is not None:
            best, arg = cos.best(whole)
            score = best
            for i in np.flatnonzero(np.nan_to_num(best, nan=-2.0) >= p.embed_threshold):
                reasons[i], refs[i] = REASON_EMBED, ids[arg[i]]
        for i in np.flatnonzero(~cos.row_mask):
            reasons[i] = "no_embedding"
    passes = []
    if m.crops and len(crops):
        crop_pairs = hash_pairs(
            rows, ev, crops, m.crop_hash_max_distance, m.crop_dhash_max_distance
        )
        passes.append((REASON_CROP, crop_pairs, p.crop_embed_min))
    whole_pairs = hash_pairs(rows, ev, whole, m.hash_max_distance, m.dhash_max_distance)
    passes.append((REASON_HASH, whole_pairs, p.hash_embed_min))  # last: whole views win
    for reason, pairs, gate in passes:
        if cos is not None and p.embed_threshold is None:  # score: the closest hash match
            np.fmax.at(score, pairs[0], cos.pairs(pairs[0], pairs[1]))
        for row, j in _gated(pairs, cos, gate).items():
            reasons[row], refs[row] = reason, ids[j]
    ph, dh = rows.column("phash").to_pylist(), rows.column("dhash").to_pylist()
    for k in range(rows.num_rows):
        if reasons[k] is None and (ph[k] is None or dh[k] is None):
            reasons[k] = "no_image_hash"
    counts = {r: sum(x == r for x in reasons) for r in (REASON_HASH, REASON_CROP, REASON_EMBED)}
    return StepResult.from_reasons(
        reasons,
        ref=refs,
        score=score,
        metrics={  # over the rows reaching the step (the planted metrics count every row)
            "decontam_step_flagged": sum(counts.values()),
            "decontam_step_flagged_phash": counts[REASON_HASH],
            "decontam_step_flagged_crop": counts[REASON_CROP],
            "decontam_step_flagged_embedding": counts[REASON_EMBED],
        },
    )
