"""DataComp's image-based filter on curate's streamed path (issue 17): the in-memory step's
decisions (tasks/curate/steps/image_based.py) with only the centroids and the kept cluster ids
in the driver.

- map (per block): the rows reaching the step that have an image embedding go to a scratch
  file (uid, row, embedding), as SemDeDup's map (tasks/curate/streamsemdedup.py);
- reduce: one Ray task fits the spherical k-means in uid order (the in-memory step's array and
  order while the pool holds at most `image_based.stream_fit_rows` rows, so the same
  centroids; above it on the rows whose sha256("<seed>:<uid>") falls in the lowest
  `stream_fit_rows / pool rows` share); the driver takes each target image's nearest centroid
  (k x d centroids, a few target embeddings);
- decide (per block): each row's nearest centroid, kept when it is a target's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.curate.steps.base import (
    Step,
    StepContext,
    StepResult,
    embeddings,
    missing_embedding_reasons,
)
from tasks.curate.streambase import Streamed
from tasks.curate.streamsemdedup import fit_in_uid_order, write_embedding_rows

FOLDER = "image_based"


class ImageBasedStreamed(Streamed):
    """The clusters nearest to the target images: k-means in a Ray task, nearest per block."""

    global_decision = True

    def __init__(self, step: Step[Any]) -> None:
        super().__init__(step)
        self.total_rows = 0
        self.embedded = 0  # rows reaching the step with an embedding
        self.centroids: np.ndarray | None = None  # k x d, set by reduce (None: nothing fitted)
        self.wanted: frozenset[int] = frozenset()  # clusters some target image is nearest to

    def plan(self, total_rows: int) -> None:
        self.total_rows = total_rows

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        return write_embedding_rows(rows, block, scratch / FOLDER / "rows")

    def absorb(self, part: Any, total_rows: int) -> None:
        self.embedded += int(part)

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        import ray

        from tasks.curate.steps.image_based import nearest

        target = ctx.target_embeddings
        if target is None or len(target) == 0:
            raise ValueError(
                "image_based: no target images were embedded (check image_based.target_dir)"
            )
        if self.embedded == 0:  # the in-memory step fits nothing either
            return
        p = self.step.params
        share = min(1.0, p.stream_fit_rows / max(1, self.total_rows))
        fit = ray.remote(fit_in_uid_order).options(num_cpus=ctx.params.compute.cpus_per_worker)
        folder = str(scratch / FOLDER / "rows")
        self.centroids = ray.get(fit.remote(folder, p.kmeans_k, ctx.params.seed, share))
        self.wanted = frozenset(nearest(target, self.centroids).tolist())

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        from tasks.curate.steps.image_based import nearest

        img, mask = embeddings(rows, "image_emb")
        reasons = missing_embedding_reasons(mask)
        score = np.full(rows.num_rows, np.nan)
        if self.centroids is not None and len(img):
            clusters = nearest(img, self.centroids)
            score[mask] = clusters
            for i, c in zip(np.flatnonzero(mask), clusters, strict=True):
                if int(c) not in self.wanted:
                    reasons[i] = "cluster_not_near_target"
        return StepResult.from_reasons(reasons, score=score), {}

    def finish(self) -> dict[str, Any]:
        if self.centroids is None:
            return {}
        return {"image_based_clusters_kept": len(self.wanted)}
