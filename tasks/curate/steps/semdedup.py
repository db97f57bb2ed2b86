"""SemDeDup: spherical k-means on image embeddings (fitted in uid order), then inside each cluster drop a sample whose
cosine to an earlier one exceeds 1 - eps. Members are ordered by similarity to the centroid,
least similar first (the paper keeps the least prototypical member of a duplicate group).

Small clusters use an exact similarity matrix; clusters of `semantic_dedup.ann_min_rows` or more use a
LanceDB IVF_FLAT index (k nearest neighbours per member), so memory stays linear in the cluster.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.curate.params import SemanticDedupParams
from tasks.curate.steps.base import (
    Step,
    StepContext,
    StepResult,
    embeddings,
    missing_embedding_reasons,
)
from tasks.curate.steps.image_based import nearest, spherical_kmeans


def exact_cluster_dups(
    x: np.ndarray, eps: float, block: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows of x (already in keep-priority order): (is_dup, index of its most similar earlier
    row, that cosine). Row i is a duplicate iff max_{j<i} cos(x_i, x_j) > 1 - eps."""
    n = len(x)
    best = np.full(n, -np.inf)
    arg = np.full(n, -1)
    for start in range(0, n, block):
        sims = x[start : start + block] @ x.T  # rows = queries i
        i = np.arange(start, min(start + block, n))
        sims[i[:, None] <= np.arange(n)[None, :]] = -np.inf  # only earlier rows j < i count
        arg[i] = np.argmax(sims, axis=1)
        best[i] = sims[np.arange(len(i)), arg[i]]
    return best > 1 - eps, arg, best


def ann_neighbours(
    x: np.ndarray, k: int, workdir: Path, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids n x k, cosines n x k) from a LanceDB IVF_FLAT index over x; -1 where fewer found."""
    import lancedb
    from lancedb.index import IvfFlat

    shutil.rmtree(workdir, ignore_errors=True)
    db = lancedb.connect(str(workdir))
    n, dim = x.shape
    table = db.create_table(
        "vectors",
        pa.table(
            {
                "i": np.arange(n, dtype=np.int64),
                "vector": pa.FixedSizeListArray.from_arrays(x.ravel(), dim),
            }
        ),
    )
    # IVF_FLAT: measured here on 12.5k x 256-d, it builds in 1.4 s and gives recall@10 0.99 with
    # 1/7 of the partitions probed (1/4 used here), where IVF_PQ took 36 s to train and topped out near 0.62.
    partitions = max(1, int(np.sqrt(n)))
    table.create_index("vector", config=IvfFlat(distance_type="cosine", num_partitions=partitions))
    ids = np.full((n, k), -1, dtype=np.int64)
    cos = np.full((n, k), -np.inf)
    for start in range(0, n, 2048):
        q = x[start : start + 2048]
        search: Any = table.search(q)  # a vector query (LanceDB's stubs type the base builder)
        res = (
            search.distance_type("cosine")
            .limit(k)
            .nprobes(max(1, partitions // 4))
            .select(["i", "_distance"])
            .to_arrow()
        )
        qi = (
            res.column("query_index").to_numpy()
            if len(q) > 1
            else np.zeros(res.num_rows, dtype=np.int64)
        )
        found = res.column("i").to_numpy()
        dist = res.column("_distance").to_numpy()
        order = np.lexsort((dist, qi))
        qi, found, dist = qi[order], found[order], dist[order]
        pos = np.arange(len(qi)) - np.searchsorted(qi, qi)
        ids[start + qi, pos] = found
        cos[start + qi, pos] = 1.0 - dist
    shutil.rmtree(workdir, ignore_errors=True)
    return ids, cos


def ann_cluster_dups(
    x: np.ndarray, eps: float, k: int, workdir: Path, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Same decision as exact_cluster_dups, restricted to each row's k approximate neighbours."""
    ids, cos = ann_neighbours(x, k, workdir, seed)
    n = len(x)
    earlier = (ids >= 0) & (ids < np.arange(n)[:, None])
    cos = np.where(earlier, cos, -np.inf)
    j = np.argmax(cos, axis=1)
    best = cos[np.arange(n), j]
    arg = np.where(np.isfinite(best), ids[np.arange(n), j], -1)
    return best > 1 - eps, arg, best


class SemanticDedup(Step[SemanticDedupParams]):
    """SemDeDup on the stored image embeddings (ANN workdir under the stage's out_dir)."""

    name = "semantic_dedup"
    params_model = SemanticDedupParams
    requires = frozenset({"embeddings"})

    def __call__(self, rows: pa.Table, ctx: StepContext) -> StepResult:
        return semantic_dedup(rows, self.params, ctx.params.seed, ctx.out_dir / "semdedup_ann")


def semantic_dedup(rows: pa.Table, p: SemanticDedupParams, seed: int, workdir: Path) -> StepResult:
    """Per k-means cluster, drop members too close to an earlier (less prototypical) one."""
    uids = rows.column("uid").to_pylist()
    x, mask = embeddings(rows, "image_emb")
    reasons = missing_embedding_reasons(mask)
    refs: list[str | None] = [None] * rows.num_rows
    score = np.full(rows.num_rows, np.nan)
    if len(x) < 2:
        return StepResult.from_reasons(reasons, ref=refs, score=score)
    row_of = np.flatnonzero(mask)
    # fitted in uid order: the pool's physical row order (which LanceDB's merges change) must not
    # change the clusters, and the streamed path (tasks/curate/streamsemdedup.py) fits the same
    by_uid = np.argsort(np.array([uids[r] for r in row_of]), kind="stable")
    centroids = spherical_kmeans(x[by_uid], min(p.clusters, max(1, len(x) // 4)), seed)
    cluster = nearest(x, centroids)
    ann_used = 0
    for c in np.unique(cluster):
        members = np.flatnonzero(cluster == c)
        to_centroid = x[members] @ centroids[c]
        members = members[np.lexsort((np.array([uids[row_of[m]] for m in members]), to_centroid))]
        if len(members) >= p.ann_min_rows:
            ann_used += 1
            dup, arg, best = ann_cluster_dups(x[members], p.eps, p.ann_k, workdir, seed)
        else:
            dup, arg, best = exact_cluster_dups(x[members], p.eps)
        for local in np.flatnonzero(dup):
            row = row_of[members[local]]
            reasons[row] = "semantic_duplicate"
            refs[row] = uids[row_of[members[arg[local]]]]
        score[row_of[members]] = np.where(np.isfinite(best), best, np.nan)
    return StepResult.from_reasons(
        reasons, ref=refs, score=score, metrics={"semdedup_ann_clusters": ann_used}
    )
