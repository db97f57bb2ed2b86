"""Prepare the data the steps of a run declare (`Input`), the union of their needs and no more.

Pool inputs (matches, hashes, embeddings) are stored in pool columns so reruns reuse them;
side inputs (eval features, target embeddings) are built per run into the StepContext, from a
lookup table. The text checks always run: they are the implicit first step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks.curate.params import CurateParams
from tasks.curate.stage import model_ref
from tasks.curate.steps.base import Input, StepContext
from tasks.decontam.params import HashMatchParams
from tasks.decontam.views import crawl_resize
from tasks.io.paths import resolve_path

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

    cols = {**{c: c for c in BASE_COLUMNS}, **MATCH_COLUMNS, **FEATURE_COLUMNS}
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


def _eval_features(ctx: StepContext) -> None:
    """Hashes (and embeddings) of every eval image in the pool's form: evalsets.EvalView."""
    from tasks.curate.evalsets import eval_view
    from tasks.curate.features import compute_features
    from tasks.decontam.views import eval_prefixes, eval_shards, with_eval_ids

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
    ref = model_ref(p) if p.decontaminate.uses_embeddings(bool(match.crops)) else None
    feats = compute_features(
        {str(k): v for k, v in shards.items()},
        ref,
        p.compute.embed_workers,
        p.compute.embed_batch_size,
        p.compute.cpus_per_worker,
        prefixes=eval_prefixes(shards, eval_dir),
        view=eval_view(match, ctx.crawl_resize),
        what="eval images",
    )
    ctx.eval_features = with_eval_ids(feats)


def _target_embeddings(ctx: StepContext) -> None:
    """Image embeddings of the target task's training images (image_based.target_dir)."""
    from tasks.curate.evalsets import image_shards
    from tasks.curate.features import compute_features
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
    )
    ctx.target_embeddings = np.asarray(embeddings(feats, "image_emb")[0])


SIDE_INPUTS: dict[Input, Callable[[StepContext], None]] = {
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
    for name, build in SIDE_INPUTS.items():
        if name in needed:
            build(ctx)
    rows = read_rows(pool)
    if "pool_rows" in needed:  # the same table: steps see every row, not only their survivors
        ctx.pool_rows = rows
    return rows, ctx, metrics
