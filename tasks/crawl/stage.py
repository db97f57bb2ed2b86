"""The crawl stage: sources -> plan -> Ray shard downloads -> img2dataset layout + LanceDB pool."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from tasks.crawl.context import CrawlContext, build_context
from tasks.crawl.errors import ERROR_CLASSES
from tasks.crawl.params import CrawlParams
from tasks.settings import join_uri

log = logging.getLogger(__name__)


def _open_pool(p: CrawlParams) -> tuple[Any, str]:
    """(PoolSink, its LanceDB URI) with the tables made, or (None, "") without output.write_pool.

    Made by the driver before the first shard task starts: the tasks upsert their own rows
    (tasks/crawl/poolsync.py) and must not race to create the tables.
    """
    if not p.output.write_pool:
        return None, ""
    from tasks.crawl.poolsync import PoolSink
    from tasks.settings import get_settings

    uri = p.output.lancedb_uri or get_settings().lance_uri
    return PoolSink(uri), uri


def _run_by_dvc() -> bool:
    """Whether `dvc repro` / `dvc exp run` (hence the Prefect flow) runs this crawl.

    dvc.yaml marks data/crawl `persist: true` so that a killed crawl resumes under DVC too; the
    price is that DVC no longer deletes an output made from other params before the run. When
    DVC runs the stage it has already judged the old output stale (and keeps its committed
    version in the cache), so a plan mismatch replaces it, as DVC itself would have done.
    """
    return os.environ.get("DVC_STAGE", "").rsplit(":", 1)[-1] == "crawl"


def _existing_shards(output_dir: str) -> list[str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(join_uri(output_dir, "shards"))
    if not fs.exists(path):
        return []
    return sorted(p for p in fs.glob(f"{path}/*.done") if p.rsplit("/", 1)[-1][:-5].isdigit())


def _clear(output_dir: str) -> None:
    import fsspec

    for part in ("shards", "_plan", "refused.parquet"):
        fs, path = fsspec.core.url_to_fs(join_uri(output_dir, part))
        if fs.exists(path):
            fs.rm(path, recursive=True)


def _sweep_temp(output_dir: str) -> int:
    """Remove the temporary files of atomic writes a killed run left (`.NAME.*.tmp` locally,
    `NAME.<uuid>.tmp` on object stores): DVC would otherwise version them with the output.
    One crawl writes a folder at a time, so any temporary file found at start is stale."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(output_dir)
    if not fs.exists(path):
        return 0
    # (fsspec's glob matches dot files too: `.00001.tar.x.tmp` is found by `*.tmp`)
    stale = [f for part in ("", "shards/", "_plan/") for f in fs.glob(f"{path}/{part}*.tmp")]
    for f in stale:
        fs.rm(f)
    if stale:
        log.info("removed %d temporary files a killed run left in %s", len(stale), output_dir)
    return len(stale)


def ensure_plan(p: CrawlParams, ctx: CrawlContext) -> tuple[Any, dict[str, Any]]:
    """Load the saved plan of these inputs, or gather the sources and save a new one.

    Returns (tasks.crawl.plan.Plan, metrics). Planning never holds the rows in the driver:
    extraction tasks write refs to uid partitions, reduce tasks merge and sort them, and the
    driver writes plan.json (the commit point) from their counts. A killed planning run leaves
    no plan.json; its partial `_plan/` is removed and planning starts over.
    """
    from tasks.crawl.inputs import gather_to_parts
    from tasks.crawl.plan import (
        PLAN_FORMAT,
        PlanMismatchError,
        build_plan,
        commit_plan,
        fingerprint,
        load_plan,
        plan_uri,
        save_refused,
    )
    from tasks.crawl.urlscreen import strip_userinfo
    from tasks.crawl.writer import writing

    _sweep_temp(ctx.output_dir)
    inputs = p.plan_inputs()
    fp = fingerprint(inputs)
    found = load_plan(ctx.output_dir)
    if found and found.meta.get("fingerprint") == fp and found.meta.get("format") == PLAN_FORMAT:
        return found, {**found.meta.get("gather", {}), "plan_reused": 1}
    if found or _existing_shards(ctx.output_dir):
        if not (p.output.overwrite or _run_by_dvc()):
            old = found.meta.get("inputs") if found else "unknown (no plan)"
            raise PlanMismatchError(
                f"{ctx.output_dir} holds a crawl of other inputs ({old}); set "
                "output.overwrite=true to replace it or choose another output.output_dir"
            )
        _clear(ctx.output_dir)
    _clear_uncommitted_plan(ctx.output_dir)
    work_dir = plan_uri(ctx.output_dir, "work")
    # input errors (a file that cannot be read, named) pass as they are; the plan's own writes
    # below turn a full disk into one line naming the folder
    gathered = gather_to_parts(p, ctx, work_dir)
    for detail in gathered.details[:20]:
        log.warning("input problem: %s", strip_userinfo(detail))
    with writing(join_uri(ctx.output_dir, "_plan")):
        parts, rows, pairs = build_plan(
            ctx.output_dir,
            work_dir,
            p.inputs.plan_partitions,
            p.inputs.shard_size,
            p.inputs.max_images,
        )
        unique = sum(e["rows"] for e in parts)
        refused = save_refused(ctx.output_dir, work_dir)
        if refused:
            log.warning(
                "%d inputs refused before fetching (reasons in %s/refused.parquet)",
                refused,
                ctx.output_dir,
            )
        gather = {
            **gathered.metrics,
            **{f"input_error_{k}": v for k, v in gathered.errors.items()},
            "unique_pairs": pairs,
            "unique_images": unique,
            **_refused_counts(ctx.output_dir),
        }
        meta = {
            "fingerprint": fp,
            "inputs": inputs,
            "rows": rows,
            "shard_size": p.inputs.shard_size,
            "partitions": parts,
            "gather": gather,
        }
        _remove(work_dir)  # the part files are merged into the partitions
        commit_plan(ctx.output_dir, meta)
    plan = load_plan(ctx.output_dir)
    assert plan is not None
    return plan, {**gather, "plan_reused": 0}


def _remove(uri: str) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _clear_uncommitted_plan(output_dir: str) -> None:
    """What a planning run killed before its commit point left (part files, partitions)."""
    _remove(join_uri(output_dir, "_plan"))


def _refused_counts(output_dir: str) -> dict[str, int]:
    """refused_<status> counts of refused.parquet (read by its one small column)."""
    import fsspec
    import pyarrow.parquet as pq

    with fsspec.open(join_uri(output_dir, "refused.parquet"), "rb") as fh:
        pf = pq.ParquetFile(fh)
        counts: dict[str, int] = {}
        for batch in pf.iter_batches(columns=["status"]):
            for status in batch.column(0).to_pylist():
                counts[f"refused_{status}"] = counts.get(f"refused_{status}", 0) + 1
    return {"refused": sum(counts.values()), **counts}


@contextlib.contextmanager
def _host_slots(p: CrawlParams, needed: bool) -> Iterator[Any]:
    """The run's HostSlots actor while its shard tasks run (None without a rate or shards):
    http.max_requests_per_second_per_host holds for the whole crawl (tasks/crawl/hostrate.py)."""
    from tasks.crawl.hostrate import start_host_slots, stop_host_slots

    handle = start_host_slots(p.http.max_requests_per_second_per_host) if needed else None
    try:
        yield handle
    finally:
        stop_host_slots(handle)


def _crawl(p: CrawlParams, ctx: CrawlContext) -> dict[str, Any]:
    from tasks.crawl.distributor import run_shard_jobs
    from tasks.crawl.plan import ShardRef
    from tasks.crawl.shardtask import download_and_write
    from tasks.crawl.writer import shard_uri
    from tasks.io import is_done

    plan, metrics = ensure_plan(p, ctx)
    shards = range(plan.shards)
    todo = [i for i in shards if not is_done(shard_uri(ctx.output_dir, i))]
    sink, pool_uri = _open_pool(p)  # the tasks write their rows into it themselves
    ran: list[dict[str, Any]] = []

    def on_done(stats: dict[str, Any]) -> None:  # the driver only aggregates counts
        ran.append(stats)

    with _host_slots(p, bool(todo)) as slots:
        args = (p, ctx.allow_addresses, ctx.output_dir, ctx.url_map, pool_uri, slots)
        # a job carries a reference to its rows (plan folder + shard index), read by the task
        jobs = [(i, download_and_write, (ShardRef(ctx.output_dir, i), *args)) for i in todo]
        seconds = run_shard_jobs(
            jobs,
            p.download.shards_in_flight,
            p.download.cpus_per_shard,
            sum(plan.shard_count(i) for i in todo),
            on_done,
            p.output.progress,
            max_retries=p.download.max_retries,
        )
    # Shards a killed run finished before their upsert, and every shard when the pool is new
    # (a fresh clone, another CLIPMILL_LANCEDB_URI): the pool's own record says which (the
    # done markers name each shard's content; the rows of recorded shards are not read).
    if sink is not None:
        done = [i for i in shards if is_done(shard_uri(ctx.output_dir, i))]
        metrics["pool_shards_synced_by_driver"] = sink.sync_missing(
            ctx.output_dir, done, p.output.output_format
        )
    done_now = sum(s["count"] for s in ran)
    ok_now = sum(s["successes"] for s in ran)
    metrics.update(
        {
            "shards_planned": len(shards),
            "shards_run": len(ran),
            "shards_skipped": len(shards) - len(todo),
            "download_seconds": round(seconds, 3),
            "urls_per_s": round(done_now / seconds, 2) if seconds and done_now else 0.0,
            "images_per_s": round(ok_now / seconds, 2) if seconds and ok_now else 0.0,
        }
    )
    return metrics


def _retry(p: CrawlParams, ctx: CrawlContext) -> dict[str, Any]:
    """Re-download only the failures of the chosen classes and merge them into their shards."""
    import fsspec
    import pyarrow.parquet as pq

    from tasks.crawl.distributor import run_shard_jobs
    from tasks.crawl.plan import load_plan
    from tasks.crawl.shardtask import retry_and_merge
    from tasks.crawl.writer import shard_uri

    classes = tuple(p.output.retry_error_classes)
    unknown = sorted(set(classes) - set(ERROR_CLASSES))
    if unknown:
        raise ValueError(
            f"output.retry_error_classes: unknown {unknown}; known: {', '.join(ERROR_CLASSES)}"
        )
    if load_plan(ctx.output_dir) is None:
        raise FileNotFoundError(
            f"output.retry_failed=true but {ctx.output_dir} holds no crawl (no _plan/plan.json)"
        )
    sink, pool_uri = _open_pool(p)  # made before the tasks, which upsert their shards
    todo, total = [], 0
    for marker in _existing_shards(ctx.output_dir):
        index = int(marker.rsplit("/", 1)[-1].split(".")[0])
        with fsspec.open(f"{shard_uri(ctx.output_dir, index)}.parquet", "rb") as fh:
            status = pq.read_table(fh, columns=["status"]).column("status").to_pylist()
        n = sum(s in classes for s in status)
        if n:
            total += n
            todo.append(index)
    ran: list[dict[str, Any]] = []

    def on_done(stats: dict[str, Any]) -> None:  # each task upserts its rewritten shard itself
        ran.append(stats)

    with _host_slots(p, bool(todo)) as slots:
        args = (p, ctx.allow_addresses, ctx.output_dir, ctx.url_map, pool_uri, slots)
        jobs = [(index, retry_and_merge, args) for index in todo]
        seconds = run_shard_jobs(
            jobs,
            p.download.shards_in_flight,
            p.download.cpus_per_shard,
            total,
            on_done,
            p.output.progress,
            "crawl: retrying",
            max_retries=p.download.max_retries,
        )
    if sink is not None:  # a shard a killed retry rewrote before its upsert
        indices = [
            int(m.rsplit("/", 1)[-1].split(".")[0]) for m in _existing_shards(ctx.output_dir)
        ]
        sink.sync_missing(ctx.output_dir, indices, p.output.output_format)
    return {
        "retry_shards": len(jobs),
        "retried": sum(s.get("retried", 0) for s in ran),
        "recovered": sum(s.get("recovered", 0) for s in ran),
        "retry_seconds": round(seconds, 3),
    }


def run(params: CrawlParams) -> dict[str, Any]:
    """Crawl (or retry the failures of) the configured inputs; return metrics for MLflow / DVC."""
    from tasks.crawl.stats import error_histogram, read_all_stats, summarize
    from tasks.tracking import log_figure

    with contextlib.ExitStack() as stack:
        ctx = build_context(params, stack)
        metrics = _retry(params, ctx) if params.output.retry_failed else _crawl(params, ctx)
    summary = summarize(read_all_stats(ctx.output_dir))
    metrics.update(summary)
    fig = error_histogram(summary)
    log_figure(fig, "crawl_error_classes.png")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return metrics
