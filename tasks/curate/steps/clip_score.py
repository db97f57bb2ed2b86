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

Raw or synthetic (`clip_score.caption`, Nguyen et al. 2023): with `raw_else_synthetic` or `both`,
a row whose raw caption scores below the threshold is kept when its synthetic caption (the
recaption stage's long positive, scored by the same teacher: pool column
`recaption_score_long_positive`) scores at or above the SAME threshold; the threshold itself is
still taken over the raw scores of the whole pool, as DataComp's. The `caption_choice` artifact
tells curate's shard writer which rows train on their synthetic caption.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        synthetic = synthetic_scores(rows)
        rescued = np.zeros(rows.num_rows, dtype=bool)
        if self.params.caption != "raw":
            # Nguyen et al.: the synthetic caption, filtered with the same threshold, where the raw
            # one fails (a row with no image embedding has no synthetic score either: stays out)
            rescued = np.array([r == "clip_score_low" for r in reasons]) & (synthetic >= threshold)
            for i in np.flatnonzero(rescued):
                reasons[i] = None
        metrics.update(
            clip_score_threshold=threshold,
            clip_score_reaching=int(rows.num_rows),
            clip_score_passed=int(sum(r is None for r in reasons)),
            clip_score_kept_by_synthetic=int(rescued.sum()),
            clip_score_synthetic_scored=int((~np.isnan(synthetic)).sum()),
        )
        n = rows.num_rows  # rows always carry their uid; hand-made ones in tests may not
        uids = (
            rows.column("uid").to_pylist()
            if "uid" in rows.column_names
            else list(map(str, range(n)))
        )
        artifacts = {
            "caption_choice": CaptionChoice(
                mode=self.params.caption,
                threshold=threshold,
                synthetic_uids=frozenset(uids[i] for i in np.flatnonzero(rescued)),
                synthetic_passing=frozenset(
                    uids[i] for i in np.flatnonzero(synthetic >= threshold)
                ),
            ),
            "caption_scores": (score, synthetic, threshold),
        }
        return StepResult.from_reasons(reasons, score=score, metrics=metrics, artifacts=artifacts)


@dataclass(frozen=True)
class CaptionChoice:
    """Which caption each kept row trains on, for the shards curate writes: `synthetic_uids`
    kept only by their synthetic caption (their `txt` becomes it), `synthetic_passing` whose
    synthetic caption passes the threshold (written as `recaption` when mode is both)."""

    mode: str
    threshold: float
    synthetic_uids: frozenset[str]
    synthetic_passing: frozenset[str]


def synthetic_scores(rows: pa.Table) -> np.ndarray:
    """The teacher's CLIP score of each row's synthetic caption (recaption's long positive), NaN
    where the recaption stage wrote none (or never ran)."""
    if "synthetic_score" not in rows.column_names:
        return np.full(rows.num_rows, np.nan)
    values = rows.column("synthetic_score").cast(pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)
