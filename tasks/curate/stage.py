"""The curate stage: pool -> prepared inputs (Ray) -> ordered steps -> held-out part -> subset,
shards (training and held-out), report. In memory here; in blocks over the pool with
`execution.mode: stream` (or auto on a big pool): tasks/curate/streamrun.py.

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
    from tasks.curate.steps.clip_score import CaptionChoice


def model_ref(p: CurateParams) -> str | None:
    """The model reference actors load: folders resolved, URIs and `random:` specs as they are."""
    clip_model = p.paths.clip_model
    if clip_model is None or clip_model.startswith("random:") or "://" in clip_model:
        return clip_model
    return str(resolve_path(clip_model))


def _decide(
    pool: Any, rows: pa.Table, steps: list[Step[Any]], ctx: StepContext
) -> tuple[Outcome, np.ndarray]:
    """Set up every step once, apply them in order, hold out part of what they kept, rewrite the
    decision columns of the pool. Returns the outcome and the held-out mask."""
    from tasks.curate.apply import apply_steps
    from tasks.curate.holdout import holdout_mask
    from tasks.curate.poolio import clear_columns, write_columns

    for step in steps:
        step.setup(ctx)
    outcome = apply_steps(rows, steps, ctx)
    held = holdout_mask(rows.column("uid").to_pylist(), outcome.keep, ctx.params.holdout)
    outcome.columns["curate_holdout"] = pa.array(held, pa.bool_())
    outcome.funnel.append(
        {
            "step": "holdout",
            "left": int((outcome.keep & ~held).sum()),
            "dropped": {"held_out": int(held.sum())} if held.any() else {},
        }
    )
    decision_cols = [
        c
        for c in pool.schema.names
        if c.startswith("curate_") and (c.endswith(("_keep", "_reason", "_score", "_dup_of")))
    ]
    clear_columns(
        pool, [c for c in decision_cols if c not in ("curate_text_reason", "curate_image_reason")]
    )
    write_columns(pool, pa.table({"uid": rows.column("uid"), **outcome.columns}))
    return outcome, held


def _subset(rows: pa.Table, keep: np.ndarray, path: Path) -> list[str]:
    """The uids of `keep` as a sorted parquet list at `path`."""
    from tasks.curate.holdout import write_uids

    return write_uids(path, rows.column("uid").filter(pa.array(keep)).to_pylist())


def _field_formats(
    uids: list[str], outcome: Outcome, p: CurateParams, out_dir: Path
) -> dict[str, Any]:
    """The subset as DataComp's uid file, and MetaCLIP's entry-count table after balancing.

    A pool whose uids are not hex (hand-made test pools; the crawl always writes MetaCLIP's
    24-hex uids) has no DataComp form: the file is not written and the metrics and log say so.
    """
    from tasks.curate.formats import is_hex_uid, write_datacomp_uids, write_metaclip_counts
    from tasks.curate.metadata import load_entries

    out: dict[str, Any] = {}
    target = out_dir / "subset_uids.npy"
    target.unlink(missing_ok=True)  # never leave a previous run's subset in DataComp form
    if p.outputs.datacomp_uids:
        bad = next((u for u in uids if not is_hex_uid(u)), None)
        if bad is None:
            out["datacomp_uids_written"] = write_datacomp_uids(uids, target)
        else:
            print(f"curate: subset_uids.npy not written: uid {bad!r} is not a hex uid", flush=True)
            out["datacomp_uids_written"] = -1
    counts = outcome.artifacts.get("balance", {}).get("entry_counts")
    if p.outputs.metaclip_counts and counts is not None:
        entries = load_entries(out_dir / "metadata.parquet")
        write_metaclip_counts(entries, counts.before, out_dir / "balance")
    return out


# The recaption stage's pool columns -> their fixed names in the curated shards' JSON side file
# (docs/CONTRACTS.md): HQ-CLIP's four fields, which backend and model made each, and both scores.
RECAPTION_FIELDS = {
    "recaption_long_positive": "long_positive",
    "recaption_long_negative": "long_negative",
    "recaption_short_positive": "short_positive",
    "recaption_short_negative": "short_negative",
    "recaption_sources": "recaption_sources",
    "recaption_score_alt": "clip_score_raw",
    "recaption_score_long_positive": "clip_score_synthetic",
}


def _recaption_row(row: dict[str, Any], choice: CaptionChoice | None) -> dict[str, Any]:
    """One kept row's caption fields: `text` (the shard's txt) is the caption it was kept by,
    `alt_text` the raw one, `caption_choice` which; `recaption` (the train stage's synthetic
    caption field) is the long positive where the mode lets the sample train on it too."""
    import json

    uid, raw, synthetic = row["uid"], row["text"], row.get("recaption_long_positive")
    out = {k: v for k, v in row.items() if k not in RECAPTION_FIELDS}
    out.update({RECAPTION_FIELDS[k]: v for k, v in row.items() if k in RECAPTION_FIELDS})
    if isinstance(out.get("recaption_sources"), str):
        out["recaption_sources"] = json.loads(out["recaption_sources"])
    rescued = choice is not None and uid in choice.synthetic_uids and bool(synthetic)
    out.update(alt_text=raw, text=synthetic if rescued else raw)
    out["caption_choice"] = "synthetic" if rescued else "raw"
    if synthetic and not rescued:
        passing = choice is None or (
            choice.mode != "raw_else_synthetic" and uid in choice.synthetic_passing
        )
        if passing:
            out["recaption"] = synthetic
    return out


def _caption_fields(
    rows: pa.Table, pool: Any, keep: np.ndarray, choice: CaptionChoice | None
) -> dict[str, dict[str, Any]]:
    """uid -> every caption field: text, texts and the recaption stage's fields (fixed names)."""
    from tasks.curate.poolio import read_columns

    extra = [c for c in RECAPTION_FIELDS if c in pool.schema.names]
    table = read_columns(pool, ["uid", "text", "texts", "url", *extra])
    wanted = set(rows.column("uid").filter(pa.array(keep)).to_pylist())
    return {r["uid"]: _recaption_row(r, choice) for r in table.to_pylist() if r["uid"] in wanted}


def _materialise(
    rows: pa.Table,
    pool: Any,
    keep: np.ndarray,
    p: CurateParams,
    dest: Path,
    choice: CaptionChoice | None = None,
) -> tuple[int, int]:
    """Write the `keep` rows as shuffled shards under `dest`: (shards written, kept without image)."""
    from tasks.curate.features import existing_shard
    from tasks.curate.materialise import materialise

    fields = _caption_fields(rows, pool, keep, choice)
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
        {u: fields[u] for u in shard_of}, shard_of, dest, p.outputs.shard_size, p.seed
    )
    return len(written), missing


def _grids(
    rows: pa.Table, reasons: list[str], p: CurateParams
) -> dict[str, list[tuple[bytes, str]]]:
    from tasks.curate.features import existing_shard
    from tasks.curate.report import example_groups
    from tasks.io.crawlshards import read_images  # any crawl layout

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


def _synthetic_grid(
    rows: pa.Table, pool: Any, outcome: Outcome, p: CurateParams
) -> dict[str, list[tuple[bytes, str]]]:
    """Rows kept by their synthetic caption, captioned "old -> new" (report grid)."""
    from tasks.curate.features import existing_shard
    from tasks.curate.poolio import read_columns
    from tasks.io.crawlshards import read_images  # any crawl layout

    choice = outcome.artifacts.get("clip_score", {}).get("caption_choice")
    if choice is None or not choice.synthetic_uids or p.outputs.report_examples == 0:
        return {}
    wanted = set(sorted(choice.synthetic_uids)[: p.outputs.report_examples])
    table = read_columns(pool, ["uid", "text", "shard", "recaption_long_positive"]).to_pylist()
    info = {r["uid"]: r for r in table if r["uid"] in wanted}
    found: dict[str, bytes] = {}
    for shard in {r["shard"] for r in info.values()}:
        path = existing_shard(resolve_path(p.paths.crawl_dir), shard)
        if path is not None:
            found.update({u: data for u, data, _ in read_images(path, wanted)})
    items = [
        (found[u], f"{info[u]['text'] or ''} -> {info[u]['recaption_long_positive'] or ''}")
        for u in sorted(found)
    ]
    return {"kept_by_synthetic_caption": items}


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
    from tasks.curate.inputs import DECONTAMINATE_MATCH_SECTION, decontaminate_params_file
    from tasks.decontam.views import CRAWL_RESIZE_SECTION, crawl_params_file

    recorded: dict[str, Any] = {}
    if ctx.crawl_resize is not None:
        recorded["crawl"] = {
            "file": str(crawl_params_file()),
            CRAWL_RESIZE_SECTION: ctx.crawl_resize.model_dump(mode="json"),
        }
    if ctx.hash_match is not None:
        recorded["decontaminate"] = {
            "file": str(decontaminate_params_file()),
            DECONTAMINATE_MATCH_SECTION: ctx.hash_match.model_dump(mode="json"),
        }
    return recorded


def run(params: CurateParams) -> dict[str, Any]:
    """Curate the pool; every decision lands in pool columns; returns the stage metrics."""
    from tasks.curate.inputs import prepare
    from tasks.curate.poolio import open_pool_table
    from tasks.curate.report import write_report
    from tasks.curate.steps.registry import build_reports, build_steps, needed_inputs
    from tasks.curate.streamrun import run_stream, use_stream
    from tasks.io.atomic import sweep_temp

    out_dir = resolve_path(params.paths.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep_temp(out_dir, ("*.tmp", ".*.tmp_*", ".bucket-*"))  # what a killed run left half-written
    pool = open_pool_table(params.paths.pool_uri)
    steps, reports = build_steps(params), build_reports(params)
    if use_stream(params, pool):  # the pool in blocks, small arrays in the driver
        return run_stream(params, pool, out_dir, steps, reports)
    rows, ctx, metrics = prepare(pool, params, out_dir, needed_inputs([*steps, *reports]))
    outcome, held = _decide(pool, rows, steps, ctx)
    train = outcome.keep & ~held  # the training set: kept by every step and not held out
    uids = _subset(rows, train, out_dir / "subset_uids.parquet")
    held_uids = _subset(rows, held, out_dir / "holdout_uids.parquet")
    metrics.update(_field_formats(uids, outcome, params, out_dir))
    metrics.update(pool_rows=rows.num_rows, subset_size=len(uids), **outcome.metrics)
    metrics.update(curated_size=int(outcome.keep.sum()), holdout_size=len(held_uids))
    metrics.update({f"funnel_{f['step']}": f["left"] for f in outcome.funnel})
    if params.outputs.materialise:
        choice = outcome.artifacts.get("clip_score", {}).get("caption_choice")
        shards, missing = _materialise(rows, pool, train, params, out_dir / "shards", choice)
        metrics.update(shards_written=shards, kept_without_image=missing)
        shards, missing = _materialise(rows, pool, held, params, out_dir / "holdout", choice)
        metrics.update(holdout_shards_written=shards, holdout_without_image=missing)
    metrics.update(_reports(rows, reports, steps, ctx))
    write_report(
        out_dir / "report",
        outcome.funnel,
        outcome.artifacts,
        {**_grids(rows, outcome.reason, params), **_synthetic_grid(rows, pool, outcome, params)},
        _recorded_inputs(ctx),
    )
    return metrics
