"""Prepare the data the steps of a run declare (`Input`), the union of their needs and no more.

Pool inputs (matches, hashes, embeddings) are stored in pool columns so reruns reuse them;
side inputs (eval features, target embeddings) are built per run into the StepContext, from a
lookup table. The text checks always run: they are the implicit first step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from tasks.curate.params import CurateParams
from tasks.curate.stage import model_ref
from tasks.curate.steps.base import Input, StepContext
from tasks.decontam.params import HashMatchParams
from tasks.decontam.views import crawl_resize
from tasks.io.paths import resolve_path

# The recaption stage's pool columns curate reads (null when it has not run): the teacher's
# CLIP score of the synthetic caption, for clip_score's raw-or-synthetic choice.
RECAPTION_COLUMNS = {"recaption_score_long_positive": "synthetic_score"}
DECONTAMINATE_MATCH_SECTION = "match"  # the section of params/decontaminate.yaml: hash matching
BASE_COLUMNS = [  # the pool columns (tasks/pool.py) every run reads
    "uid",
    "url",
    "text",
    "texts",
    "language",
    "sha256",
    "width",
    "height",
    "original_width",
    "original_height",
    "shard",
    "status",
]


def decontaminate_params_file() -> Path:
    """params/decontaminate.yaml under the settings' root: the decontaminate stage's file."""
    from tasks.settings import get_settings

    return get_settings().root / "params" / "decontaminate.yaml"


def decontaminate_match() -> HashMatchParams:
    """The eval view, hash thresholds and eval crops of the decontaminate stage (its `match`
    section), read from its params file (never re-declared here); a fault there is a ParamsError
    naming that file and field."""
    from tasks.paramsfiles import read_section

    return read_section(decontaminate_params_file(), DECONTAMINATE_MATCH_SECTION, HashMatchParams)


def read_rows(pool: Any) -> pa.Table:
    """Every pool row with the base columns and whatever stored work the pool holds."""
    from tasks.curate.poolio import read_columns
    from tasks.curate.prepare import FEATURE_COLUMNS, MATCH_COLUMNS

    cols = {**{c: c for c in BASE_COLUMNS}, **MATCH_COLUMNS, **FEATURE_COLUMNS, **RECAPTION_COLUMNS}
    table = read_columns(pool, list(cols))
    return table.rename_columns([cols[c] for c in table.column_names])


def _metadata(p: CurateParams, out_dir: Path, metrics: dict[str, Any]) -> tuple[str, str, int]:
    """Build and save the entry list: (its path, its digest, its number of entries)."""
    from tasks.curate.metadata import build_metadata, save_metadata

    m = p.metadata
    meta = build_metadata(
        resolve_path(m.wordnet), [resolve_path(x) for x in m.extra], m.include_numbers
    )
    meta_path = out_dir / "metadata.parquet"
    save_metadata(meta, meta_path)
    metrics.update(
        metadata_entries=len(meta),
        **{f"metadata_dropped_{k}": v for k, v in meta.dropped.items()},
    )
    return str(meta_path), meta.digest(), len(meta)


class RowBlocks(Protocol):
    """The pool's rows one block at a time (the streamed path, tasks/curate/streamprep.py)."""

    def blocks(self) -> Iterator[pa.Table]: ...


def _eval_features(ctx: StepContext, rows: pa.Table | RowBlocks) -> None:
    """The eval images in the pool's form (evalsets.EvalView): hashes of every view, and image
    embeddings of the whole views the decontaminate step compares.

    The hashes are the decontaminate stage's `eval_hashes.parquet` when it was made from the
    same eval tars and view (tasks/decontam/stored.py), else hashed here. Embeddings: every eval
    image when `decontaminate.embed_threshold` is set (any eval image may flag a row on its own);
    else only those some pool row hash-matches (whole view or crop), the only ones the embedding
    gates look at; `rows` are every pool row, so the planted report's pass over all of them finds
    its eval images embedded too."""
    from tasks.curate.evalsets import eval_view
    from tasks.decontam.views import eval_shards

    p = ctx.params
    eval_dir = resolve_path(p.paths.eval_dir)
    shards = eval_shards(eval_dir) if eval_dir and eval_dir.exists() else {}
    if not shards:
        raise FileNotFoundError(
            f"decontaminate: no eval tars under {eval_dir} (run the sample stage first)"
        )
    ctx.hash_match = match = decontaminate_match()
    if match.eval_view == "crawl":
        ctx.crawl_resize = crawl_resize()
    view = eval_view(match, ctx.crawl_resize)
    hashes = _eval_hashes(p, eval_dir, shards, view)
    if p.decontaminate.uses_embeddings(bool(match.crops)):
        wanted = (
            None
            if p.decontaminate.embed_threshold is not None
            else _matched_ids(rows, hashes, match)
        )
        hashes = _with_embeddings(hashes, p, eval_dir, shards, view, wanted)
    ctx.eval_features = hashes


def _eval_hashes(
    p: CurateParams, eval_dir: Path, shards: dict[Path, list[tuple[str, str]]], view: Any
) -> pa.Table:
    """Hashes of every eval view (id, variant, image_sha256, phash, dhash, image_reason): the
    decontaminate stage's when they fit, else computed on Ray (progress: "hashing eval images")."""
    from tasks.curate.features import compute_features
    from tasks.decontam.stored import (
        EVAL_COLUMNS,
        EVAL_HASHES_FILE,
        read_eval_hashes,
        views_fingerprint,
    )
    from tasks.decontam.views import eval_prefixes, with_eval_ids

    folder = resolve_path(p.paths.decontaminate_dir)
    if folder is not None:
        stored, why = read_eval_hashes(folder / EVAL_HASHES_FILE, views_fingerprint(eval_dir, view))
        print(f"[curate] eval view hashes: {why}", flush=True)
        if stored is not None:
            return stored
    feats = compute_features(
        {str(k): v for k, v in shards.items()},
        None,
        p.compute.embed_workers,
        p.compute.embed_batch_size,
        p.compute.cpus_per_worker,
        prefixes=eval_prefixes(shards, eval_dir),
        view=view,
        what="eval images",
    )
    return with_eval_ids(feats).select(EVAL_COLUMNS)


def _matched_ids(rows: pa.Table | RowBlocks, ev: pa.Table, match: HashMatchParams) -> set[str]:
    """matched_eval_ids of a table, or the union over the blocks of the streamed path."""
    if isinstance(rows, pa.Table):
        return matched_eval_ids(rows, ev, match)
    out: set[str] = set()
    for block in rows.blocks():
        out |= matched_eval_ids(block, ev, match)
    return out


def matched_eval_ids(rows: pa.Table, ev: pa.Table, match: HashMatchParams) -> set[str]:
    """Eval ids some row's hashes match: pHash AND dHash within the whole-view thresholds of a
    whole view, or within the crop thresholds of a crop (the pairs the step's gates judge)."""
    from tasks.decontam.matching import hash_pairs, split_variants

    ids = ev.column("id").to_pylist()
    whole, crops = split_variants(ev)
    found = hash_pairs(rows, ev, whole, match.hash_max_distance, match.dhash_max_distance)[1]
    out = {ids[j] for j in found.tolist()}
    if match.crops and len(crops):
        pairs = hash_pairs(
            rows, ev, crops, match.crop_hash_max_distance, match.crop_dhash_max_distance
        )
        out |= {ids[j] for j in pairs[1].tolist()}
    return out


def _with_embeddings(
    ev: pa.Table,
    p: CurateParams,
    eval_dir: Path,
    shards: dict[Path, list[tuple[str, str]]],
    view: Any,
    wanted: set[str] | None,
) -> pa.Table:
    """`ev` plus `image_emb` on the whole views of the `wanted` eval ids (None = all), embedded
    through the same view without its crops (crops are never embedded); null elsewhere."""
    from dataclasses import replace

    from tasks.curate.features import compute_features, fix_vectors
    from tasks.curate.prepare import feature_store_root
    from tasks.decontam.views import eval_prefixes

    prefixes = eval_prefixes(shards, eval_dir)
    chosen = {
        str(tar): [(k, t) for k, t in keys if wanted is None or prefixes[str(tar)] + k in wanted]
        for tar, keys in shards.items()
    }
    chosen = {tar: keys for tar, keys in chosen.items() if keys}
    vectors: dict[str, Any] = {}
    if chosen:
        feats = compute_features(
            chosen,
            model_ref(p),
            p.compute.embed_workers,
            p.compute.embed_batch_size,
            p.compute.cpus_per_worker,
            prefixes=prefixes,
            view=replace(view, crops=()),
            what="eval images",
            store_root=feature_store_root(p),
        )
        if "image_emb" in feats.column_names:
            vectors = dict(
                zip(
                    feats.column("uid").to_pylist(),
                    feats.column("image_emb").to_pylist(),
                    strict=True,
                )
            )
    full = [v == "full" for v in ev.column("variant").to_pylist()]
    emb = [
        vectors.get(i) if f else None
        for i, f in zip(ev.column("id").to_pylist(), full, strict=True)
    ]
    return fix_vectors(ev.append_column("image_emb", pa.array(emb, pa.list_(pa.float32()))))


def _target_embeddings(ctx: StepContext, rows: pa.Table) -> None:
    """Image embeddings of the target task's training images (image_based.target_dir)."""
    from tasks.curate.evalsets import image_shards
    from tasks.curate.features import compute_features
    from tasks.curate.prepare import feature_store_root
    from tasks.curate.steps.base import embeddings

    p = ctx.params
    folder = resolve_path(p.image_based.target_dir)
    shards = image_shards(folder) if folder and folder.exists() else {}
    if not shards:
        raise FileNotFoundError(f"image_based: no .tar shards of target images under {folder}")
    feats = compute_features(
        {str(k): v for k, v in shards.items()},
        model_ref(p),
        p.compute.embed_workers,
        p.compute.embed_batch_size,
        p.compute.cpus_per_worker,
        what="target images",
        store_root=feature_store_root(p),
    )
    ctx.target_embeddings = np.asarray(embeddings(feats, "image_emb")[0])


SIDE_INPUTS: dict[Input, Callable[[StepContext, Any], None]] = {
    "eval_features": _eval_features,
    "target_embeddings": _target_embeddings,
}


def prepare(
    pool: Any, p: CurateParams, out_dir: Path, needed: frozenset[Input]
) -> tuple[pa.Table, StepContext, dict[str, Any]]:
    """Compute what `needed` names (stored work is reused); returns the rows, the context the
    steps read, and the preparation metrics (rows_matched, rows_featurised, metadata_*)."""
    from tasks.curate.prepare import ensure_features, ensure_matches

    metrics: dict[str, Any] = {}
    ctx = StepContext(params=p, out_dir=out_dir)
    meta_path, digest = None, "textcheck"
    if "matches" in needed:
        meta_path, digest, ctx.n_entries = _metadata(p, out_dir, metrics)
    metrics["rows_matched"] = ensure_matches(pool, read_rows(pool), meta_path, digest, p)
    if needed & {"hashes", "embeddings"}:
        ref = model_ref(p) if "embeddings" in needed else None
        metrics["rows_featurised"] = ensure_features(
            pool, read_rows(pool), resolve_path(p.paths.crawl_dir), ref, p
        )
    rows = read_rows(pool)
    for name, build in SIDE_INPUTS.items():
        if name in needed:
            build(ctx, rows)
    if "pool_rows" in needed:  # the same table: steps see every row, not only their survivors
        ctx.pool_rows = rows
    return rows, ctx, metrics
