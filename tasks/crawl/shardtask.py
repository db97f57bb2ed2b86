"""What one Ray task does: download a shard and write it, or re-download a shard's failures and merge."""

from __future__ import annotations

import time
from typing import Any

from tasks.crawl.downloader import ProgressFn, download_shard
from tasks.crawl.errors import SUCCESS
from tasks.crawl.localsite import _map_prefix
from tasks.crawl.params import CrawlParams
from tasks.crawl.writer import read_shard, write_shard

UrlMap = tuple[tuple[str, str], ...]  # (canonical prefix, fetch prefix), longest first


def _with_fetch_urls(rows: list[dict[str, Any]], url_map: UrlMap) -> list[dict[str, Any]]:
    return [{**r, "fetch_url": _map_prefix(url_map, r["url"])} for r in rows]


def download_and_write(
    index: int,
    rows: list[dict[str, Any]],
    p: CrawlParams,
    allow: tuple[str, ...],
    output_dir: str,
    url_map: UrlMap,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Download every row of shard `index` and write its tar/parquet/stats/done marker.

    `allow`, `output_dir` and `url_map` are the run's (tasks.crawl.context.CrawlContext).
    """
    started = time.time()
    results = download_shard(_with_fetch_urls(rows, url_map), p, allow, progress)
    stats = write_shard(output_dir, index, results, p.resize.encode_format, started)
    return {"index": index, **stats}


def retry_and_merge(
    index: int,
    p: CrawlParams,
    allow: tuple[str, ...],
    output_dir: str,
    url_map: UrlMap,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Re-download the rows of a written shard whose status is in output.retry_error_classes;
    rewrite the shard whole.

    Rows that still fail keep their (possibly new) error; successes join the tar. The rewrite is
    idempotent, so a retry killed half-way is simply run again.
    """
    started = time.time()
    ext = p.resize.encode_format
    classes = set(p.output.retry_error_classes)
    rows, members = read_shard(output_dir, index)
    todo = [r for r in rows if r["status"] in classes]
    if not todo:
        return {"index": index, "retried": 0, "recovered": 0}
    fresh = {
        r["uid"]: r for r in download_shard(_with_fetch_urls(todo, url_map), p, allow, progress)
    }
    merged: list[dict[str, Any]] = []
    for row in rows:
        new = fresh.get(row["uid"])
        if new is not None:
            merged.append(new)
            continue
        image = members.get(f"{row['uid']}.{ext}") if row["status"] == SUCCESS else None
        merged.append({**row, "image": image})
    stats = write_shard(output_dir, index, merged, ext, started)
    recovered = sum(1 for r in fresh.values() if r["status"] == SUCCESS)
    return {"index": index, "retried": len(todo), "recovered": recovered, **stats}
