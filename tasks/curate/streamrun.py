"""The curate stage's streamed run (`execution.mode: stream`, or `auto` on a big pool): the same
outputs as the in-memory run of tasks/curate/stage.py (ledger columns, uid lists, DataComp's
uid file, MetaCLIP's count table, shards, report), with the pool read in blocks by Ray tasks
and only small arrays and counts in the driver (tasks/curate/stream.py).

Every step and param streams; a report step without a streamed form, or an fsspec URI as
`execution.scratch_dir`, refuses before any work with a NotImplementedError naming it.

The scratch folder (per-block ledgers, partitions, manifests) is written and read by Ray tasks
on every node: `<out_dir>/.stream` on one machine, `execution.scratch_dir` (a shared mount such
as NFS) on a cluster, where the run uses `<scratch_dir>/curate-<12 hex of sha256(out_dir)>`, so
a rerun into the same output clears what a killed run left and two outputs never share one.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tasks.curate.params import CurateParams
from tasks.io.paths import is_uri, resolve_path

SCRATCH = ".stream"  # under out_dir: per-block ledgers and partitions, removed at the end


def use_stream(params: CurateParams, pool: Any) -> bool:
    """memory / stream as set; auto streams a pool of `stream_min_rows` rows or more."""
    mode = params.execution.mode
    if mode == "auto":
        return int(pool.count_rows()) >= params.execution.stream_min_rows
    return mode == "stream"


def scratch_folder(params: CurateParams, out_dir: Path) -> Path:
    """The run's scratch folder: `<out_dir>/.stream`, or its own folder under
    `execution.scratch_dir` (a path every Ray node sees; an fsspec URI is refused by name)."""
    import hashlib

    folder = params.execution.scratch_dir
    if folder is None:
        return out_dir / SCRATCH
    if is_uri(folder):
        raise NotImplementedError(
            f"execution.scratch_dir={folder!r}: the streamed scratch is read and written with "
            "local file APIs; give a folder every Ray node mounts (NFS, a shared disk), not an "
            "fsspec URI"
        )
    tag = hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:12]
    return resolve_path(folder) / f"curate-{tag}"


def check_streamable(steps: list[Any], reports: list[Any]) -> None:
    """Refuse, naming it, a step, param or report the streamed path cannot run (before work)."""
    from tasks.curate.streamreport import STREAMED_REPORTS
    from tasks.curate.streamsteps import streamed

    for step in steps:
        streamed(step)
    for report in reports:
        if report.name not in STREAMED_REPORTS:
            raise NotImplementedError(
                f"curate report {report.name!r} is not streamed; set execution.mode: memory"
            )


def run_stream(
    params: CurateParams, pool: Any, out_dir: Path, steps: list[Any], reports: list[Any]
) -> dict[str, Any]:
    """Prepare, decide, hold out, write and report in blocks; returns the stage metrics."""
    from tasks.curate.steps.registry import needed_inputs
    from tasks.curate.stream import stream_decide
    from tasks.curate.streamprep import stream_prepare

    check_streamable(steps, reports)
    scratch = scratch_folder(params, out_dir)
    print(f"[curate] streamed: blocks of {params.compute.rows_per_block:,} rows", flush=True)
    uri = params.paths.pool_uri
    ctx, metrics = stream_prepare(pool, uri, params, out_dir, needed_inputs([*steps, *reports]))
    for step in steps:
        step.setup(ctx)
    try:
        outcome = stream_decide(pool, uri, steps, ctx, scratch)
        metrics.update(_outputs(params, outcome, out_dir, scratch))
        metrics.update(_report(params, outcome, steps, reports, ctx, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return metrics


def _outputs(params: CurateParams, outcome: Any, out_dir: Path, scratch: Path) -> dict[str, Any]:
    """Sizes, DataComp's and MetaCLIP's files, the training and held-out shards."""
    import ray

    from tasks.curate.formats import write_metaclip_counts
    from tasks.curate.metadata import load_entries
    from tasks.curate.streamwrite import datacomp_file, stream_materialise

    src = outcome.source
    metrics: dict[str, Any] = {"pool_rows": src.rows, **outcome.metrics}
    metrics.update(subset_size=outcome.curated_size - outcome.holdout_size)
    metrics.update(curated_size=outcome.curated_size, holdout_size=outcome.holdout_size)
    metrics.update({f"funnel_{f['step']}": f["left"] for f in outcome.funnel})
    target = out_dir / "subset_uids.npy"
    target.unlink(missing_ok=True)  # never leave a previous run's subset in DataComp form
    if params.outputs.datacomp_uids:
        task = ray.remote(datacomp_file).options(num_cpus=params.compute.cpus_per_worker)
        metrics["datacomp_uids_written"] = ray.get(
            task.remote(str(out_dir / "subset_uids.parquet"), str(target))
        )
    counts = outcome.artifacts.get("balance", {}).get("entry_counts")
    if params.outputs.metaclip_counts and counts is not None:
        entries = load_entries(out_dir / "metadata.parquet")
        write_metaclip_counts(entries, counts.before, out_dir / "balance")
    if params.outputs.materialise:
        threshold = outcome.metrics.get("clip_score_threshold")
        caption = None if threshold is None else (params.clip_score.caption, float(threshold))
        for dest, folder, names in (
            ("train", "shards", ("shards_written", "kept_without_image")),
            ("held", "holdout", ("holdout_shards_written", "holdout_without_image")),
        ):
            got = stream_materialise(src, scratch, dest, out_dir / folder, params, caption)
            metrics.update(zip(names, got, strict=True))
    return metrics


def _report(
    params: CurateParams,
    outcome: Any,
    steps: list[Any],
    reports: list[Any],
    ctx: Any,
    scratch: Path,
) -> dict[str, Any]:
    """Report steps, example grids and the report folder (funnel, entry counts, inputs)."""
    from tasks.curate.report import write_report
    from tasks.curate.stage import _recorded_inputs
    from tasks.curate.streamreport import stream_grids, stream_reports, stream_synthetic_grid

    metrics = stream_reports(outcome.source, reports, steps, ctx)
    threshold = outcome.metrics.get("clip_score_threshold")
    write_report(
        ctx.out_dir / "report",
        outcome.funnel,
        outcome.artifacts,
        {
            **stream_grids(outcome.source, scratch, params),
            **stream_synthetic_grid(outcome.source, scratch, params, threshold),
        },
        _recorded_inputs(ctx),
    )
    return metrics
