"""SemDeDup on curate's streamed path (issue 17): the in-memory step's decisions
(tasks/curate/steps/semdedup.py), with only the k-means centroids in the driver.

- map (per block): the rows reaching the step that have an image embedding go to a scratch
  file (uid, block, row, embedding), in pool order;
- reduce: one Ray task fits the spherical k-means on a seeded sample of them (every row while
  the pool holds at most `semantic_dedup.stream_fit_rows`; then the very array, in the very
  order, uid order, the in-memory step fits on, so the same centroids); one Ray task per block file assigns each
  row its nearest centroid into per-cluster files; one Ray task per cluster orders its members
  as the in-memory step does (similarity to the centroid, then uid) and runs the same exact or
  ANN duplicate search, writing (block, row, reason, ref, score) for every member;
- decide (per block): reads its rows' results.
Above `stream_fit_rows` the sample is the rows whose sha256("<seed>:<uid>") falls in the lowest
`stream_fit_rows / pool rows` share: the clusters then differ from an in-memory fit on every
row (the in-memory path cannot hold such a pool anyway).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.steps.base import Step, StepContext, StepResult, embeddings
from tasks.curate.streambase import Streamed

FOLDER = "semantic_dedup"


def _keys(uids: list[str], seed: int) -> np.ndarray:
    """64-bit prefixes of sha256("<seed>:<uid>"): a seeded, order-free sample key."""
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(f"{seed}:{u}".encode()).digest()[:8], "big") for u in uids),
        dtype=np.uint64,
        count=len(uids),
    )


class SemanticDedupStreamed(Streamed):
    """SemDeDup: k-means on a sample in a Ray task, then one Ray task per cluster."""

    global_decision = True

    def __init__(self, step: Step[Any]) -> None:
        super().__init__(step)
        self.total_rows = 0
        self.embedded = 0  # rows reaching the step with an embedding (k's cap, as in memory)
        self.ann_clusters: int | None = None

    def plan(self, total_rows: int) -> None:
        self.total_rows = total_rows

    def collect(self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext) -> Any:
        return write_embedding_rows(rows, block, scratch / FOLDER / "rows")

    def absorb(self, part: Any, total_rows: int) -> None:
        self.embedded += int(part)

    def reduce(self, scratch: Path, ctx: StepContext) -> None:
        import ray

        p, seed = self.step.params, ctx.params.seed
        cpus = ctx.params.compute.cpus_per_worker
        base = scratch / FOLDER
        if self.embedded < 2:  # the in-memory step decides nothing either
            return
        k = min(p.clusters, max(1, self.embedded // 4))
        share = min(1.0, p.stream_fit_rows / max(1, self.total_rows))
        fit = ray.remote(fit_in_uid_order).options(num_cpus=cpus)
        centroids = ray.get(fit.remote(str(base / "rows"), k, seed, share))
        assign = ray.remote(_assign).options(num_cpus=cpus)
        files = sorted((base / "rows").glob("*.parquet"))
        ray.get([assign.remote(str(f), str(base / "clusters"), centroids) for f in files])
        task = ray.remote(_cluster).options(num_cpus=cpus)
        clusters = sorted((base / "clusters").glob("c*"))
        params = (p.eps, p.ann_min_rows, p.ann_k, seed)
        used = ray.get(
            [task.remote(str(c), str(base / f"{c.name}.out"), centroids, params) for c in clusters]
        )
        self.ann_clusters = int(sum(used))

    def decide(
        self, rows: pa.Table, block: int, scratch: Path, ctx: StepContext
    ) -> tuple[StepResult, Any]:
        import pyarrow.dataset as ds

        from tasks.curate.steps.base import missing_embedding_reasons

        _, mask = embeddings(rows, "image_emb")
        reasons = missing_embedding_reasons(mask)
        refs: list[str | None] = [None] * rows.num_rows
        score = np.full(rows.num_rows, np.nan)
        files = sorted(str(f) for f in (scratch / FOLDER).glob("*.out"))
        if files:
            got = ds.dataset(files, format="parquet").to_table(filter=ds.field("block") == block)
            for row, dup, ref, s in zip(
                *(got.column(c).to_pylist() for c in ("row", "dup", "ref", "score")), strict=True
            ):
                score[row] = np.nan if s is None else s
                if dup:
                    reasons[row], refs[row] = "semantic_duplicate", ref
        return StepResult.from_reasons(reasons, ref=refs, score=score), {}

    def finish(self) -> dict[str, Any]:
        return {} if self.ann_clusters is None else {"semdedup_ann_clusters": self.ann_clusters}


def write_embedding_rows(rows: pa.Table, block: int, folder: Path) -> int:
    """Map: the block's rows that have an image embedding as (uid, row, emb) in
    `folder/b<block>.parquet`, in pool order; returns how many (also image_based's map)."""
    x, mask = embeddings(rows, "image_emb")
    idx = np.flatnonzero(mask)
    folder.mkdir(parents=True, exist_ok=True)
    dim = x.shape[1] if x.size else 0
    table = pa.table(
        {
            "uid": rows.column("uid").take(pa.array(idx, pa.int64())),
            "row": pa.array(idx.astype(np.int32)),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float32()), max(dim, 1))
            if dim
            else pa.array([], pa.list_(pa.float32(), 1)),
        }
    )
    pq.write_table(table, folder / f"b{block:07d}.parquet")
    return int(idx.size)


def _block_of(path: Path) -> int:
    return int(path.stem.removeprefix("b"))


def fit_in_uid_order(folder: str, k: int, seed: int, share: float) -> np.ndarray:
    """Spherical k-means (the in-memory step's) on the sampled rows, in pool order."""
    from tasks.curate.steps.image_based import spherical_kmeans

    limit = np.uint64(min(2**64 - 1, int(share * 2**64)))
    import pyarrow.compute as pc

    parts, uids = [], []
    for f in sorted(Path(folder).glob("*.parquet")):
        table = pq.read_table(f)
        if share < 1.0:
            keys = _keys(table.column("uid").to_pylist(), seed)
            table = table.filter(pa.array(keys < limit))
        if table.num_rows:
            parts.append(_matrix(table))
            uids.append(table.column("uid").combine_chunks())
    if not parts:  # the sample missed every row (a tiny pool): fit on all of them
        return (
            fit_in_uid_order(folder, k, seed, 1.0) if share < 1.0 else np.zeros((k, 1), np.float32)
        )
    order = np.asarray(pc.sort_indices(pa.concat_arrays(uids)))  # uid order, as in memory
    return spherical_kmeans(np.concatenate(parts)[order], k, seed)


def _matrix(table: pa.Table) -> np.ndarray:
    emb = table.column("emb").combine_chunks()
    dim = emb.type.list_size
    return np.asarray(emb.flatten().to_numpy(), dtype=np.float32).reshape(-1, dim)


def _assign(path: str, out: str, centroids: np.ndarray) -> int:
    """Each row of one block file to its nearest centroid's folder."""
    from tasks.curate.steps.image_based import nearest

    table = pq.read_table(path)
    if table.num_rows == 0:
        return 0
    cluster = nearest(_matrix(table), centroids)
    block = _block_of(Path(path))
    table = table.append_column("block", pa.array(np.full(table.num_rows, block, np.int32)))
    for c in np.unique(cluster).tolist():
        folder = Path(out) / f"c{c:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.filter(pa.array(cluster == c)), folder / f"b{block:07d}.parquet")
    return table.num_rows


def _cluster(folder: str, out: str, centroids: np.ndarray, params: tuple[Any, ...]) -> int:
    """One cluster: members in the in-memory order, duplicates found the same way; writes every
    member's (block, row, dup, ref, score). Returns 1 when the ANN path ran."""
    from tasks.curate.steps.semdedup import ann_cluster_dups, exact_cluster_dups

    eps, ann_min_rows, ann_k, seed = params
    table = pa.concat_tables(
        [pq.read_table(f) for f in sorted(Path(folder).glob("*.parquet"))]
    )  # block order: pool order, as the in-memory step's rows
    x = _matrix(table)
    c = int(Path(folder).name.removeprefix("c"))
    uids = table.column("uid").to_pylist()
    order = np.lexsort((np.array(uids), x @ centroids[c]))
    x, ann = x[order], len(order) >= ann_min_rows
    if ann:
        dup, arg, best = ann_cluster_dups(x, eps, ann_k, Path(folder + ".ann"), seed)
    else:
        dup, arg, best = exact_cluster_dups(x, eps)
    ordered = [uids[i] for i in order]
    refs = [ordered[a] if d else None for d, a in zip(dup.tolist(), arg.tolist(), strict=True)]
    pq.write_table(
        pa.table(
            {
                "block": table.column("block").take(pa.array(order)),
                "row": table.column("row").take(pa.array(order)),
                "dup": pa.array(dup, pa.bool_()),
                "ref": pa.array(refs, pa.string()),
                "score": pa.array(np.where(np.isfinite(best), best, np.nan), pa.float64()),
            }
        ),
        out,
    )
    return int(ann)
