"""The curate stage: pool -> matches/features (Ray) -> ordered steps -> subset, shards, report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tasks import PROJECT_ROOT
from tasks.curate.params import CurateParams

BASE_COLUMNS = [
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


def resolve(path: str | None) -> Path | None:
    """Relative paths resolve against the project root (docs/CONTRACTS.md)."""
    if path is None:
        return None
    p = Path(path)
    return p if p.is_absolute() else PROJECT_ROOT / p


def model_ref(p: CurateParams) -> str | None:
    if p.clip_model is None or p.clip_model.startswith("random:") or "://" in p.clip_model:
        return p.clip_model
    return str(resolve(p.clip_model))


def _read_rows(pool: Any) -> pa.Table:
    from tasks.curate.poolio import read_columns
    from tasks.curate.prepare import FEATURE_COLUMNS, MATCH_COLUMNS

    cols = {**{c: c for c in BASE_COLUMNS}, **MATCH_COLUMNS, **FEATURE_COLUMNS}
    table = read_columns(pool, list(cols))
    return table.rename_columns([cols[c] for c in table.column_names])


def _prepare(pool: Any, p: CurateParams, out_dir: Path) -> tuple[pa.Table, int, dict[str, Any]]:
    """Metadata, matches and features stored in the pool; returns the rows to decide on."""
    from tasks.curate.metadata import build_metadata, save_metadata
    from tasks.curate.prepare import ensure_features, ensure_matches
    from tasks.curate.steps.registry import NEEDS_HASHES

    metrics: dict[str, Any] = {}
    rows = _read_rows(pool)
    meta_path, digest, n_entries = None, "textcheck", 0
    if "balance" in p.steps:
        meta = build_metadata(
            resolve(p.wordnet_metadata), [resolve(x) for x in p.extra_metadata], p.include_numbers
        )
        meta_path = out_dir / "metadata.parquet"
        save_metadata(meta, meta_path)
        digest, n_entries = meta.digest(), len(meta)
        metrics.update(
            metadata_entries=len(meta),
            **{f"metadata_dropped_{k}": v for k, v in meta.dropped.items()},
        )
    metrics["rows_matched"] = ensure_matches(
        pool, rows, str(meta_path) if meta_path else None, digest, p
    )
    needs_images = bool(NEEDS_HASHES & set(p.steps)) or p.needs_model()
    if needs_images:
        ref = model_ref(p) if p.needs_model() else None
        metrics["rows_featurised"] = ensure_features(
            pool, _read_rows(pool), resolve(p.crawl_dir), ref, p
        )
    return _read_rows(pool), n_entries, metrics


def _eval_features(p: CurateParams) -> pa.Table | None:
    """Hashes (and embeddings) of every eval image in the pool's form: evalsets.EvalView."""
    from tasks.curate.evalsets import eval_prefixes, eval_shards, eval_view, with_eval_ids
    from tasks.curate.features import compute_features

    eval_dir = resolve(p.eval_dir)
    shards = eval_shards(eval_dir) if eval_dir and eval_dir.exists() else {}
    if not shards:
        raise FileNotFoundError(
            f"decontaminate: no eval tars under {eval_dir} (run the sample stage first)"
        )
    ref = model_ref(p) if p.decontam_uses_embeddings() else None
    feats = compute_features(
        {str(k): v for k, v in shards.items()},
        ref,
        p.embed_workers,
        p.embed_batch_size,
        p.cpus_per_worker,
        prefixes=eval_prefixes(shards, eval_dir),
        view=eval_view(p),
    )
    return with_eval_ids(feats)


def _target_embeddings(p: CurateParams) -> np.ndarray:
    from tasks.curate.evalsets import image_shards
    from tasks.curate.features import compute_features
    from tasks.curate.steps.base import embeddings

    folder = resolve(p.image_target_dir)
    shards = image_shards(folder) if folder and folder.exists() else {}
    if not shards:
        raise FileNotFoundError(f"image_based: no .tar shards of target images under {folder}")
    feats = compute_features(
        {str(k): v for k, v in shards.items()},
        model_ref(p),
        p.embed_workers,
        p.embed_batch_size,
        p.cpus_per_worker,
    )
    return embeddings(feats, "image_emb")[0]


def _decide(
    pool: Any, rows: pa.Table, p: CurateParams, out_dir: Path, n_entries: int
) -> tuple[Any, Any]:
    from tasks.curate.apply import apply_steps
    from tasks.curate.poolio import clear_columns, write_columns
    from tasks.curate.steps.base import StepContext
    from tasks.curate.steps.registry import STEPS

    ctx = StepContext(params=p, out_dir=out_dir, n_entries=n_entries)
    if "decontaminate" in p.steps:
        ctx.eval_features = _eval_features(p)
    if "image_based" in p.steps:
        ctx.cache["target_image_emb"] = _target_embeddings(p)
    outcome = apply_steps(rows, list(p.steps), STEPS, ctx)
    decision_cols = [
        c
        for c in pool.schema.names
        if c.startswith("curate_") and (c.endswith(("_keep", "_reason", "_score", "_dup_of")))
    ]
    clear_columns(
        pool, [c for c in decision_cols if c not in ("curate_text_reason", "curate_image_reason")]
    )
    write_columns(pool, pa.table({"uid": rows.column("uid"), **outcome.columns}))
    return outcome, ctx


def _subset(rows: pa.Table, keep: np.ndarray, out_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    from tasks.io import atomic_write_bytes

    uids = sorted(rows.column("uid").filter(pa.array(keep)).to_pylist())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"uid": pa.array(uids, pa.string())}), sink)
    atomic_write_bytes(out_dir / "subset_uids.parquet", sink.getvalue().to_pybytes())
    return uids


def _caption_fields(rows: pa.Table, pool: Any, keep: np.ndarray) -> dict[str, dict[str, Any]]:
    """uid -> every caption field: text, texts and any recaption_* column present in the pool."""
    from tasks.curate.poolio import read_columns

    extra = [c for c in pool.schema.names if c.startswith("recaption_")]
    table = read_columns(pool, ["uid", "text", "texts", "url", *extra])
    wanted = set(rows.column("uid").filter(pa.array(keep)).to_pylist())
    return {r["uid"]: r for r in table.to_pylist() if r["uid"] in wanted}


def _materialise(
    rows: pa.Table, pool: Any, keep: np.ndarray, p: CurateParams, out_dir: Path
) -> dict[str, Any]:
    from tasks.curate.features import existing_shard
    from tasks.curate.materialise import materialise

    fields = _caption_fields(rows, pool, keep)
    crawl = resolve(p.crawl_dir)
    shard_of = {}
    for uid, shard in zip(
        rows.column("uid").to_pylist(), rows.column("shard").to_pylist(), strict=True
    ):
        if uid in fields:
            path = existing_shard(crawl, shard)
            if path is not None:
                shard_of[uid] = path
    missing = len(fields) - len(shard_of)
    written = materialise(
        {u: fields[u] for u in shard_of}, shard_of, out_dir / "shards", p.shard_size, p.seed
    )
    return {"shards_written": len(written), "kept_without_image": missing}


def _grids(
    rows: pa.Table, reasons: list[str], p: CurateParams
) -> dict[str, list[tuple[bytes, str]]]:
    from tasks.curate.features import existing_shard
    from tasks.curate.images import read_samples
    from tasks.curate.report import example_groups

    if p.report_examples == 0:
        return {}
    uids = rows.column("uid").to_pylist()
    groups = example_groups(reasons, uids, p.report_examples, p.seed)
    wanted = {u for g in groups.values() for u in g}
    where = dict(zip(uids, rows.column("shard").to_pylist(), strict=True))
    text = dict(zip(uids, rows.column("text").to_pylist(), strict=True))
    found: dict[str, bytes] = {}
    for shard in {where[u] for u in wanted}:
        path = existing_shard(resolve(p.crawl_dir), shard)
        if path is not None:
            found.update({u: data for u, data, _ in read_samples(path, wanted)})
    return {g: [(found[u], text[u] or "") for u in us if u in found] for g, us in groups.items()}


def _planted(rows: pa.Table, p: CurateParams, ctx: Any) -> dict[str, Any]:
    """Decontamination quality on the sample's planted copies, over EVERY pool image (not only the
    rows that reached the step), so earlier filters do not hide misses."""
    from tasks.curate.apply import input_reasons
    from tasks.curate.evalsets import planted_recall
    from tasks.curate.steps.decontam import decontaminate

    path = resolve(p.planted_path)
    if path is None or not path.exists() or ctx.eval_features is None:
        return {}
    ok = np.flatnonzero([r is None for r in input_reasons(rows)])
    sub = rows.take(pa.array(ok, pa.int64()))
    res = decontaminate(sub, ctx)
    refs = res.ref or [None] * sub.num_rows
    return planted_recall(
        path,
        sub.column("url").to_pylist(),
        res.reason,
        refs,
        distances=_flagged_distances(sub, res.reason, refs, p),
        lookalike_mad=p.decontam_lookalike_mad,
    )


def _flagged_distances(
    rows: pa.Table, reasons: list[str | None], refs: list[str | None], p: CurateParams
) -> list[float | None]:
    """Pixel distance of each flagged row's image to the eval image it was matched to (None for
    rows not flagged): what tells look-alikes from false positives in the planted metrics."""
    from tasks.curate.evalsets import eval_view, pixel_distances, read_eval_images
    from tasks.curate.features import existing_shard
    from tasks.curate.images import read_samples

    flagged = [i for i, r in enumerate(reasons) if r and r.startswith("eval_") and refs[i]]
    uids, shards = rows.column("uid").to_pylist(), rows.column("shard").to_pylist()
    by_shard: dict[Path, set[str]] = {}
    for i in flagged:
        path = existing_shard(resolve(p.crawl_dir), shards[i])
        if path is not None:
            by_shard.setdefault(path, set()).add(uids[i])
    pool_imgs: dict[str, bytes] = {}
    for path, wanted in by_shard.items():
        pool_imgs.update({u: data for u, data, _ in read_samples(path, wanted)})
    eval_imgs = read_eval_images(resolve(p.eval_dir), {str(refs[i]) for i in flagged})
    dist = pixel_distances(
        [(pool_imgs.get(uids[i]), eval_imgs.get(str(refs[i]))) for i in flagged], eval_view(p)
    )
    out: list[float | None] = [None] * rows.num_rows
    for i, d in zip(flagged, dist, strict=True):
        out[i] = d
    return out


def run(params: CurateParams) -> dict[str, Any]:
    """Curate the pool; every decision lands in pool columns; returns the stage metrics."""
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.report import write_report

    out_dir = resolve(params.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = open_pool_table(params.pool_uri)
    rows, n_entries, metrics = _prepare(pool, params, out_dir)
    outcome, ctx = _decide(pool, rows, params, out_dir, n_entries)
    uids = _subset(rows, outcome.keep, out_dir)
    metrics.update(pool_rows=rows.num_rows, subset_size=len(uids), **outcome.metrics)
    metrics.update({f"funnel_{f['step']}": f["left"] for f in outcome.funnel})
    if params.materialise:
        metrics.update(_materialise(rows, pool, outcome.keep, params, out_dir))
    if "decontaminate" in params.steps:
        metrics.update(_planted(rows, params, ctx))
    counts = ctx.cache.get("entry_counts")
    write_report(
        out_dir / "report",
        outcome.funnel,
        counts,
        metrics.get("balance_t"),
        _grids(rows, outcome.reason, params),
    )
    return metrics
