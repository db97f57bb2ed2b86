"""What one Ray task does: download a shard and write it, or re-download a shard's failures and merge."""

from __future__ import annotations

import time
from typing import Any

from tasks.crawl.downloader import ProgressFn, download_shard
from tasks.crawl.errors import SUCCESS
from tasks.crawl.localsite import _map_prefix
from tasks.crawl.params import CrawlParams
from tasks.crawl.plan import ShardRef
from tasks.crawl.writer import read_shard, write_shard

UrlMap = tuple[tuple[str, str], ...]  # (canonical prefix, fetch prefix), longest first


def _with_fetch_urls(rows: list[dict[str, Any]], url_map: UrlMap) -> list[dict[str, Any]]:
    return [{**r, "fetch_url": _map_prefix(url_map, r["url"])} for r in rows]


def download_and_write(
    index: int,
    rows: list[dict[str, Any]] | ShardRef,
    p: CrawlParams,
    allow: tuple[str, ...],
    output_dir: str,
    url_map: UrlMap,
    pool_uri: str = "",
    host_rate: Any = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Download every row of shard `index`, write its samples/parquet/stats/done marker in
    output.output_format, then (with `pool_uri`, "" = no pool) upsert its rows into the pool.

    `allow`, `output_dir` and `url_map` are the run's (tasks.crawl.context.CrawlContext);
    `host_rate` its HostSlots actor (tasks.crawl.hostrate; None = no rate or per task). The
    task may run again after its worker died (download.max_retries): the shard is rewritten
    whole and the upsert is by uid, so a rerun never duplicates a sample.
    """
    started = time.time()
    if isinstance(rows, ShardRef):  # the job carries a reference: read this shard's plan rows
        rows = rows.rows()
    fetch_rows = _with_fetch_urls(rows, url_map)
    results = download_shard(fetch_rows, p, allow, progress, host_rate=host_rate)
    fmt = p.output.output_format
    stats = write_shard(output_dir, index, results, p.resize.encode_format, started, fmt)
    return {"index": index, **stats, "pool_rows": _sync(pool_uri, index, results, stats, fmt)}


def _sync(
    pool_uri: str, index: int, rows: list[dict[str, Any]], stats: dict[str, Any], fmt: str
) -> int:
    """The shard's rows into the pool, from this task (after its done marker): rows written."""
    if not pool_uri:
        return 0
    from tasks.crawl.poolsync import sync_from_worker

    return sync_from_worker(pool_uri, index, rows, stats["parquet_sha256"], fmt)


def retry_and_merge(
    index: int,
    p: CrawlParams,
    allow: tuple[str, ...],
    output_dir: str,
    url_map: UrlMap,
    pool_uri: str = "",
    host_rate: Any = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Re-download the rows of a written shard whose status is in output.retry_error_classes;
    rewrite the shard whole and upsert it into the pool (with `pool_uri`).

    Rows that still fail keep their (possibly new) error; successes join the tar. The rewrite is
    idempotent, so a retry killed half-way is simply run again.
    """
    started = time.time()
    ext = p.resize.encode_format
    fmt = p.output.output_format
    classes = set(p.output.retry_error_classes)
    rows, members = read_shard(output_dir, index, ext, fmt)
    todo = [r for r in rows if r["status"] in classes]
    if not todo:
        return {"index": index, "retried": 0, "recovered": 0}
    got = download_shard(_with_fetch_urls(todo, url_map), p, allow, progress, host_rate=host_rate)
    fresh = {r["uid"]: r for r in got}
    merged: list[dict[str, Any]] = []
    for row in rows:
        new = fresh.get(row["uid"])
        if new is not None:
            merged.append(new)
            continue
        image = members.get(f"{row['uid']}.{ext}") if row["status"] == SUCCESS else None
        merged.append({**row, "image": image})
    stats = write_shard(output_dir, index, merged, ext, started, fmt)
    recovered = sum(1 for r in fresh.values() if r["status"] == SUCCESS)
    written = _sync(pool_uri, index, merged, stats, fmt)
    return {
        "index": index,
        "retried": len(todo),
        "recovered": recovered,
        **stats,
        "pool_rows": written,
    }
