"""DataComp's CLIP-score filter: cosine of normalised embeddings, global top fraction or threshold."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.params import ClipScoreParams
from tasks.curate.steps.base import (
    Step,
    StepContext,
    StepResult,
    embeddings,
    missing_embedding_reasons,
)


def top_fraction_threshold(scores: np.ndarray, fraction: float) -> float:
    """The score at rank int(N * fraction) of ALL scores sorted descending (a global quantile)."""
    if scores.size == 0:
        return float("inf")
    ranked = np.sort(scores)[::-1]
    return float(ranked[min(int(scores.size * fraction), scores.size - 1)])


class ClipScore(Step[ClipScoreParams]):
    """Cosine of each pair's stored image and text embeddings against a global threshold."""

    name = "clip_score"
    params_model = ClipScoreParams
    requires = frozenset({"embeddings"})

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        img, mask_i = embeddings(rows, "image_emb")
        txt, mask_t = embeddings(rows, "text_emb")
        mask = mask_i & mask_t
        score = np.full(rows.num_rows, np.nan)
        if mask.any():
            both_i = img[mask[mask_i]]
            both_t = txt[mask[mask_t]]
            score[mask] = np.einsum("ij,ij->i", both_i, both_t)  # already L2-normalised: cosine
        p = self.params
        if p.fraction is not None:
            threshold = top_fraction_threshold(score[mask], p.fraction)
        else:
            threshold = float(p.threshold)  # type: ignore[arg-type]  # params: one is set
        reasons = missing_embedding_reasons(mask)
        for i in np.flatnonzero(mask):
            if score[i] < threshold:
                reasons[i] = "clip_score_low"
        return StepResult.from_reasons(
            reasons, score=score, metrics={"clip_score_threshold": threshold}
        )
