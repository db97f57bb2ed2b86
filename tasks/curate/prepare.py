"""Per-row work on Ray before the decisions: matching (text checks) and image features, stored
in the pool so reruns (another t, another threshold) reuse them instead of recomputing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.curate.features import compute_features, existing_shard, fix_vectors
from tasks.curate.params import CurateParams
from tasks.curate.poolio import write_columns
from tasks.io.paths import resolve_path

MATCH_COLUMNS = {
    "curate_entry_ids": "entry_ids",
    "curate_text_reason": "text_reason",
    "curate_match_digest": "match_digest",
}
FEATURE_COLUMNS = {
    "curate_image_sha256": "image_sha256",
    "curate_phash": "phash",
    "curate_dhash": "dhash",
    "curate_image_reason": "image_reason",
    "curate_image_emb": "image_emb",
    "curate_text_emb": "text_emb",
    "curate_features_model": "features_model",
}


def match_rows(
    rows: pa.Table, metadata_path: str | None, max_chars: int, workers: int, cpus: float, block: int
) -> pa.Table:
    """uid, entry_ids, text_reason for the given rows, on a pool of matcher actors."""
    import ray

    from tasks.curate.matching import MatchBatch, TextCheckBatch

    if rows.num_rows == 0:
        return pa.table(
            {
                "uid": pa.array([], pa.string()),
                "entry_ids": pa.array([], pa.list_(pa.int32())),
                "text_reason": pa.array([], pa.string()),
            }
        )
    blocks = [rows.select(["uid", "text"]).slice(i, block) for i in range(0, rows.num_rows, block)]
    ds: Any = ray.data.from_arrow(blocks)
    if metadata_path is None:
        ds = ds.map_batches(
            TextCheckBatch,
            fn_constructor_args=(max_chars,),
            batch_format="pyarrow",
            batch_size=block,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
        )
    else:
        ds = ds.map_batches(
            MatchBatch,
            # the file's bytes go with the actors: a node without the driver's disk needs them
            fn_constructor_args=(metadata_path, max_chars, Path(metadata_path).read_bytes()),
            batch_format="pyarrow",
            batch_size=block,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=cpus,
        )
    return pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))


def ensure_matches(
    pool: Any, rows: pa.Table, metadata_path: str | None, digest: str, p: CurateParams
) -> int:
    """Match the rows whose stored matches are missing or from other metadata; returns how many."""
    stored = rows.column("match_digest").to_pylist()
    todo = np.flatnonzero([d != digest for d in stored])
    if len(todo) == 0:
        return 0
    got = match_rows(
        rows.take(pa.array(todo)),
        metadata_path,
        p.text_checks.max_chars,
        p.compute.match_workers,
        p.compute.cpus_per_worker,
        p.compute.rows_per_block,
    )
    got = got.append_column("match_digest", pa.array([digest] * got.num_rows, pa.string()))
    write_columns(
        pool,
        got.rename_columns(
            [
                {"uid": "uid", **{v: k for k, v in MATCH_COLUMNS.items()}}[c]
                for c in got.column_names
            ]
        ),
    )
    return len(todo)


def feature_store_root(p: CurateParams) -> Path | None:
    """Where the locked towers' features are stored (settings: `CLIPMILL_FEATURE_STORE`, else
    `<root>/data/features`), resolved here so every actor uses the same; None when
    `compute.feature_store` is off."""
    from tasks.clip.featurestore import default_store_root

    return default_store_root() if p.compute.feature_store else None


def stored_crawl_hashes(p: CurateParams) -> dict[str, tuple[str, str]]:
    """sha256 -> (pHash, dHash) the decontaminate stage computed for the crawl's images ({}
    without `paths.decontaminate_dir` or its crawl_hashes.parquet): reused by content."""
    from tasks.decontam.stored import CRAWL_HASHES_FILE, known_hashes

    folder = resolve_path(p.paths.decontaminate_dir)
    return known_hashes(folder / CRAWL_HASHES_FILE if folder is not None else None)


def ensure_features(
    pool: Any, rows: pa.Table, crawl_dir: Path, model_ref: str | None, p: CurateParams
) -> int:
    """Hashes (+ embeddings with a model) for rows not yet featurised with this model."""
    want = model_ref or ""
    stored = rows.column("features_model").to_pylist()
    status = rows.column("status").to_pylist()
    todo = [i for i in range(rows.num_rows) if stored[i] != want and status[i] in (None, "success")]
    if not todo:
        return 0
    uids, texts, shards = (rows.column(c).to_pylist() for c in ("uid", "text", "shard"))
    by_shard: dict[str, list[tuple[str, str]]] = {}
    missing: list[str] = []
    for i in todo:
        path = existing_shard(crawl_dir, shards[i])
        if path is None:
            missing.append(uids[i])
        else:
            by_shard.setdefault(str(path), []).append((uids[i], texts[i] or ""))
    feats = compute_features(
        by_shard,
        model_ref,
        p.compute.embed_workers,
        p.compute.embed_batch_size,
        p.compute.cpus_per_worker,
        what="pool images",
        store_root=feature_store_root(p) if model_ref is not None else None,
        known=stored_crawl_hashes(p),
    )
    if missing:
        feats = pa.concat_tables(
            [
                feats,
                pa.table({"uid": missing, "image_reason": ["image_shard_missing"] * len(missing)}),
            ],
            promote_options="permissive",
        )
        feats = fix_vectors(feats)
    write_features(pool, feats, want)
    return len(todo)


def write_features(pool: Any, feats: pa.Table, want: str) -> None:
    """Merge featurised rows (compute_features' columns) into the pool under the curate column
    names, tagged with the model that made them; shared by the in-memory and streamed paths so
    both write the same columns and values."""
    feats = feats.drop_columns([c for c in ("text", "image") if c in feats.column_names])
    feats = feats.append_column("features_model", pa.array([want] * feats.num_rows, pa.string()))
    rename = {v: k for k, v in FEATURE_COLUMNS.items()}
    feats = feats.rename_columns([rename.get(c, c) for c in feats.column_names])
    stale = [
        c
        for c in ("curate_image_emb", "curate_text_emb")
        if c in pool.schema.names
        and c in feats.column_names
        and pool.schema.field(c).type != feats.schema.field(c).type
        and pa.types.is_fixed_size_list(feats.schema.field(c).type)
    ]
    if stale:  # another model with another width: old vectors cannot be mixed with new ones
        pool.drop_columns(stale)
    write_columns(pool, feats)
