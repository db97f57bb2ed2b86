"""Curate's image features (hashes, embeddings) on the streamed path as ONE Ray Data pipeline
over every pool block, so the embedding actors (one model each) are started once per run, not
once per block; the same rows, columns and values as the in-memory path's
tasks/curate/prepare.py ensure_features.

- read tasks (one per pool block) list the block's rows to featurise (model changed, not yet
  featurised, downloaded) as per-shard items, read their images and hash them (the fused
  ReadAndHash of tasks/decontam/reading.py); a row whose crawl shard is gone comes out with
  `image_shard_missing`, as in memory;
- the embedding actors (tasks/curate/features.py Embedder, `compute.embed_workers` of them for
  the whole run) add image and text embeddings;
- the driver merges the results into the pool WRITE_ROWS at a time. Every task reads a pinned
  table version, so those merges never move a block under a read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.curate.params import CurateParams
from tasks.curate.stream import PoolBlocks
from tasks.curate.streamwrite import read_pool_block

WRITE_ROWS = 50_000  # featurised rows gathered before one merge into the pool
CHUNK = 1000  # rows per read item, as compute_features


class BlockItems:
    """Ray Data flat_map: one pool block -> its rows to featurise, read and hashed (each row
    once: uid, text, image, image_sha256, phash, dhash, image_reason)."""

    def __init__(
        self, src: PoolBlocks, crawl_dir: str, want: str, known: dict[str, tuple[str, str]]
    ) -> None:
        from tasks.decontam.reading import ReadAndHash, read_shard

        self.src, self.crawl_dir, self.want = src, Path(crawl_dir), want
        self.read = ReadAndHash(read_shard, None, known or None, keep_images=True)

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        from tasks.curate.features import existing_shard
        from tasks.decontam.reading import shard_items

        cols = ["uid", "text", "shard", "status", "curate_features_model"]
        rows = read_pool_block(self.src, int(item["block"]), cols)
        uids, texts, shards, status = (
            rows.column(c).to_pylist() for c in ("uid", "text", "shard", "status")
        )
        stored = (
            rows.column(cols[-1]).to_pylist()
            if cols[-1] in rows.column_names
            else [None] * rows.num_rows
        )
        by_shard: dict[str, list[tuple[str, str]]] = {}
        out: list[dict[str, Any]] = []
        for i in range(rows.num_rows):
            if stored[i] == self.want or status[i] not in (None, "success"):
                continue
            path = existing_shard(self.crawl_dir, shards[i])
            if path is None:  # as ensure_features: listed with its reason, never dropped
                out.append(_missing(uids[i], texts[i] or ""))
            else:
                by_shard.setdefault(str(path), []).append((uids[i], texts[i] or ""))
        for part in shard_items(by_shard, None, CHUNK):
            out += self.read(part)
        return out


def _missing(uid: str, text: str) -> dict[str, Any]:
    return {
        "uid": uid,
        "image": b"",
        "text": text,
        "image_sha256": None,
        "phash": None,
        "dhash": None,
        "image_reason": "image_shard_missing",
    }


def stream_features(
    pool: Any, src: PoolBlocks, crawl_dir: Path, model_ref: str | None, p: CurateParams
) -> int:
    """Hashes (+ embeddings with a model) of every pool row not yet featurised with this
    model, over all blocks in one pipeline; returns how many rows were featurised."""
    import ray

    from tasks.curate.features import Embedder
    from tasks.curate.prepare import feature_store_root, stored_crawl_hashes
    from tasks.progress import Progress

    if src.count == 0:
        return 0
    cpus = p.compute.cpus_per_worker
    ds: Any = ray.data.from_items(
        [{"block": b} for b in range(src.count)], override_num_blocks=src.count
    )
    ds = ds.flat_map(
        BlockItems(src, str(crawl_dir), model_ref or "", stored_crawl_hashes(p)), num_cpus=cpus
    )
    if model_ref is not None:
        store = feature_store_root(p)
        ds = ds.map_batches(
            Embedder,
            fn_constructor_args=(
                model_ref,
                max(1, int(cpus)),
                None if store is None else str(store),
                p.compute.embed_batch_size,
            ),
            compute=ray.data.ActorPoolStrategy(size=p.compute.embed_workers),
            batch_size=p.compute.embed_batch_size,
            batch_format="pyarrow",
            num_cpus=cpus,
        )
    pending: list[pa.Table] = []
    done = 0
    with Progress("curate: featurising pool images", unit="images") as progress:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            if batch.num_rows:
                pending.append(batch)
                done += batch.num_rows
                progress.update(batch.num_rows)
                if sum(t.num_rows for t in pending) >= WRITE_ROWS:
                    _write(pool, pending, model_ref or "")
        if pending:
            _write(pool, pending, model_ref or "")
    return done


def _write(pool: Any, pending: list[pa.Table], want: str) -> None:
    """One merge of featurised rows into the pool, as ensure_features writes them."""
    from tasks.curate.features import fix_vectors
    from tasks.curate.prepare import write_features

    feats = fix_vectors(pa.concat_tables(pending, promote_options="permissive"))
    pending.clear()
    write_features(pool, feats, want)
