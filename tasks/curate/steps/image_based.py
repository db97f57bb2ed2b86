"""DataComp's image-based filter: k-means the pool's image embeddings, keep the clusters that are
the nearest cluster of at least one image of the target task's training set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tasks.curate.steps.base import StepContext, StepResult, embeddings, missing_embedding_reasons


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
    return km.centroids


def nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmax(x @ centroids.T, axis=1) if len(x) else np.zeros(0, dtype=np.int64)


def image_based(rows: pa.Table, ctx: StepContext) -> StepResult:
    target = ctx.cache.get("target_image_emb")
    if target is None or len(target) == 0:
        raise ValueError("image_based: no target images were embedded (check image_target_dir)")
    img, mask = embeddings(rows, "image_emb")
    reasons = missing_embedding_reasons(mask)
    score = np.full(rows.num_rows, np.nan)
    if len(img):
        centroids = spherical_kmeans(img, ctx.params.image_kmeans_k, ctx.params.seed)
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
