"""DataComp's CLIP-score filter: cosine of normalised embeddings against a threshold taken over the
WHOLE downloaded pool (DataComp's global quantile), or a fixed threshold.

DataComp (`baselines/apply_filter.py:get_threshold`) ranks every pool sample's score, whatever
its other filters later drop: `n = int(N * fraction)`, threshold = the value at 0-based index `n`
of the scores sorted descending, keep `score >= threshold`. So with distinct scores it keeps
`n + 1` rows, not `n` (kept as it is: the published baselines were built that way), and
`fraction = 1.0` indexes one past the end there (an IndexError); here it clamps to the lowest
score, which keeps every scored row.

N, here: every pool row whose image was downloaded (`status` success or unset) AND that has both
stored embeddings. A row whose download failed has no image and no score. A row downloaded but
undecodable (or whose shard went missing) has no image embedding, hence no CLIP score either:
DataComp's pool only lists samples its downloader stored and CLIP-embedded, so such rows are not
part of N. Rows with a text problem (empty, too long) still have both embeddings and count, as in
DataComp, where the caption checks are separate filters. The threshold is then applied to the
rows that reach the step.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.params import ClipScoreParams
from tasks.curate.steps.base import (
    Input,
    Step,
    StepContext,
    StepResult,
    embeddings,
    missing_embedding_reasons,
)


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """The score at 0-based rank int(N * fraction) of ALL scores sorted descending (DataComp)."""
    if scores.size == 0:
        return float("inf")
    ranked = np.sort(scores)[::-1]
    return float(ranked[min(int(scores.size * fraction), scores.size - 1)])


def cosine_scores(rows: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(score per row, NaN where an embedding is missing; mask of the rows that have a score)."""
    img, mask_i = embeddings(rows, "image_emb")
    txt, mask_t = embeddings(rows, "text_emb")
    mask = mask_i & mask_t
    score = np.full(rows.num_rows, np.nan)
    if mask.any():
        both_i = img[mask[mask_i]]
        both_t = txt[mask[mask_t]]
        score[mask] = np.einsum("ij,ij->i", both_i, both_t)  # already L2-normalised: cosine
    return score, mask


def downloaded_pool_scores(pool_rows: pa.Table) -> np.ndarray:
    """The CLIP score of every successfully downloaded pool row that has both embeddings (N)."""
    score, mask = cosine_scores(pool_rows)
    if "status" in pool_rows.column_names:
        status = pool_rows.column("status").to_pylist()
        mask &= np.array([s in (None, "success") for s in status], dtype=bool)
    return score[mask]


class ClipScore(Step[ClipScoreParams]):
    """Cosine of each pair's stored image and text embeddings against a global threshold."""

    name = "clip_score"
    params_model = ClipScoreParams
    requires = frozenset({"embeddings"})

    def inputs(self) -> frozenset[Input]:
        """The top fraction is taken over the whole pool, so it also reads `pool_rows`."""
        extra: frozenset[Input] = frozenset({"pool_rows"})
        return self.requires | extra if self.params.fraction is not None else self.requires

    def _threshold(self, ctx: StepContext) -> tuple[float, dict[str, float]]:
        """(threshold, metrics about how it was found)."""
        p = self.params
        if p.fraction is None:
            return float(p.threshold), {}  # type: ignore[arg-type]  # params: one is set
        if ctx.pool_rows is None:
            raise ValueError(
                "clip_score: clip_score.fraction is a quantile over the whole pool, but the "
                "step context holds no pool rows (input 'pool_rows' was not prepared)"
            )
        pool = downloaded_pool_scores(ctx.pool_rows)
        threshold = top_fraction_threshold(pool, p.fraction)
        return threshold, {"clip_score_pool_n": int(pool.size)}

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        score, mask = cosine_scores(rows)
        threshold, metrics = self._threshold(ctx)
        reasons = missing_embedding_reasons(mask)
        for i in np.flatnonzero(mask):
            if score[i] < threshold:
                reasons[i] = "clip_score_low"
        metrics.update(
            clip_score_threshold=threshold,
            clip_score_reaching=int(rows.num_rows),
            clip_score_passed=int(sum(r is None for r in reasons)),
        )
        return StepResult.from_reasons(reasons, score=score, metrics=metrics)
