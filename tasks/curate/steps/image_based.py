"""DataComp's image-based filter: k-means the pool's image embeddings, keep the clusters that are
the nearest cluster of at least one image of the target task's training set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.params import ImageBasedParams
from tasks.curate.steps.base import (
    Step,
    StepContext,
    StepResult,
    embeddings,
    missing_embedding_reasons,
)


def spherical_kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20) -> np.ndarray:
    """Centroids (k x d, L2-normalised) of faiss' spherical k-means; k is capped at len(x)."""
    import faiss

    k = max(1, min(k, len(x)))
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=100_000,
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids)


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmax(x @ centroids.T, axis=1) if len(x) else np.zeros(0, dtype=np.int64)


class ImageBased(Step[ImageBasedParams]):
    """Keeps the pool clusters nearest to at least one target-task image."""

    name = "image_based"
    params_model = ImageBasedParams
    requires = frozenset({"embeddings", "target_embeddings"})

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        target = ctx.target_embeddings
        if target is None or len(target) == 0:
            raise ValueError(
                "image_based: no target images were embedded (check image_based.target_dir)"
            )
        return image_based(rows, target, self.params.kmeans_k, ctx.params.seed)


def image_based(rows: pa.Table, target: np.ndarray, k: int, seed: int) -> StepResult:
    """k-means of the rows' image embeddings; a cluster is kept when it is some target's nearest.

    Fitted in uid order (when rows carry uids), as SemDeDup: the pool's physical row order,
    which LanceDB's merges change, must not change the clusters, and the streamed path
    (tasks/curate/streamimage.py) fits on the same array."""
    img, mask = embeddings(rows, "image_emb")
    reasons = missing_embedding_reasons(mask)
    score = np.full(rows.num_rows, np.nan)
    if len(img):
        fit = img
        if "uid" in rows.column_names:
            uids = rows.column("uid").filter(pa.array(mask)).to_pylist()
            fit = img[np.argsort(np.array(uids), kind="stable")]
        centroids = spherical_kmeans(fit, k, seed)
        wanted = set(nearest(target, centroids).tolist())
        clusters = nearest(img, centroids)
        score[mask] = clusters
        for i, c in zip(np.flatnonzero(mask), clusters, strict=True):
            if int(c) not in wanted:
                reasons[i] = "cluster_not_near_target"
        return StepResult.from_reasons(
            reasons, score=score, metrics={"image_based_clusters_kept": len(wanted)}
        )
    return StepResult.from_reasons(reasons, score=score)
