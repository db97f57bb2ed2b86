"""The curate stage: pool -> prepared inputs (Ray) -> ordered steps -> subset, shards, report.

What is prepared is the union of the inputs the run's steps declare (tasks/curate/inputs.py);
steps and report steps come from lookup tables (tasks/curate/steps/registry.py): nothing here
depends on which steps a run has.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from tasks.curate.params import CurateParams
from tasks.io.paths import resolve_path

if TYPE_CHECKING:
    from tasks.curate.apply import Outcome
    from tasks.curate.steps.base import ReportStep, Step, StepContext


def model_ref(p: CurateParams) -> str | None:
    """The model reference actors load: folders resolved, URIs and `random:` specs as they are."""
    clip_model = p.paths.clip_model
    if clip_model is None or clip_model.startswith("random:") or "://" in clip_model:
        return clip_model
    return str(resolve_path(clip_model))


def _decide(pool: Any, rows: pa.Table, steps: list[Step[Any]], ctx: StepContext) -> Outcome:
    """Set up every step once, apply them in order, rewrite the decision columns of the pool."""
    from tasks.curate.apply import apply_steps
    from tasks.curate.poolio import clear_columns, write_columns

    for step in steps:
        step.setup(ctx)
    outcome = apply_steps(rows, steps, ctx)
    decision_cols = [
        c
        for c in pool.schema.names
        if c.startswith("curate_") and (c.endswith(("_keep", "_reason", "_score", "_dup_of")))
    ]
    clear_columns(
        pool, [c for c in decision_cols if c not in ("curate_text_reason", "curate_image_reason")]
    )
    write_columns(pool, pa.table({"uid": rows.column("uid"), **outcome.columns}))
    return outcome


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
    crawl = resolve_path(p.paths.crawl_dir)
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
        {u: fields[u] for u in shard_of}, shard_of, out_dir / "shards", p.outputs.shard_size, p.seed
    )
    return {"shards_written": len(written), "kept_without_image": missing}


def _grids(
    rows: pa.Table, reasons: list[str], p: CurateParams
) -> dict[str, list[tuple[bytes, str]]]:
    from tasks.curate.features import existing_shard
    from tasks.curate.report import example_groups
    from tasks.io.wds import read_images

    if p.outputs.report_examples == 0:
        return {}
    uids = rows.column("uid").to_pylist()
    groups = example_groups(reasons, uids, p.outputs.report_examples, p.seed)
    wanted = {u for g in groups.values() for u in g}
    where = dict(zip(uids, rows.column("shard").to_pylist(), strict=True))
    text = dict(zip(uids, rows.column("text").to_pylist(), strict=True))
    found: dict[str, bytes] = {}
    for shard in {where[u] for u in wanted}:
        path = existing_shard(resolve_path(p.paths.crawl_dir), shard)
        if path is not None:
            found.update({u: data for u, data, _ in read_images(path, wanted)})
    return {g: [(found[u], text[u] or "") for u in us if u in found] for g, us in groups.items()}


def _reports(
    rows: pa.Table, reports: list[ReportStep], steps: list[Step[Any]], ctx: StepContext
) -> dict[str, Any]:
    """Report steps, after every decision: metrics only, no keep mask changes."""
    by_name = {s.name: s for s in steps}
    metrics: dict[str, Any] = {}
    for report in reports:
        report.setup(ctx)
        metrics.update(report(rows, by_name[report.follows], ctx))
    return metrics


def _recorded_inputs(ctx: StepContext) -> dict[str, Any]:
    """Values read from other stages' params files, recorded with the run (report/inputs.json,
    MLflow params `curate.inputs.*`): what this run used, since they are not curate's params."""
    from tasks.curate.inputs import CRAWL_RESIZE_SECTION, crawl_params_file

    if ctx.crawl_resize is None:
        return {}
    return {
        "crawl": {
            "file": str(crawl_params_file()),
            CRAWL_RESIZE_SECTION: ctx.crawl_resize.model_dump(mode="json"),
        }
    }


def run(params: CurateParams) -> dict[str, Any]:
    """Curate the pool; every decision lands in pool columns; returns the stage metrics."""
    from tasks.curate.inputs import prepare
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.report import write_report
    from tasks.curate.steps.registry import build_reports, build_steps, needed_inputs

    out_dir = resolve_path(params.paths.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = open_pool_table(params.paths.pool_uri)
    steps, reports = build_steps(params), build_reports(params)
    rows, ctx, metrics = prepare(pool, params, out_dir, needed_inputs([*steps, *reports]))
    outcome = _decide(pool, rows, steps, ctx)
    uids = _subset(rows, outcome.keep, out_dir)
    metrics.update(pool_rows=rows.num_rows, subset_size=len(uids), **outcome.metrics)
    metrics.update({f"funnel_{f['step']}": f["left"] for f in outcome.funnel})
    if params.outputs.materialise:
        metrics.update(_materialise(rows, pool, outcome.keep, params, out_dir))
    metrics.update(_reports(rows, reports, steps, ctx))
    write_report(
        out_dir / "report",
        outcome.funnel,
        outcome.artifacts,
        _grids(rows, outcome.reason, params),
        _recorded_inputs(ctx),
    )
    return metrics
