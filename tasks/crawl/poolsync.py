"""Upsert each finished shard's rows into the LanceDB pool (by uid, so re-runs never duplicate)."""

from __future__ import annotations

from typing import Any

from tasks.crawl.writer import shard_name, shard_uri
from tasks.io import is_done, mark_done


def pool_rows(rows: list[dict[str, Any]], index: int) -> Any:
    """Shard parquet rows -> a pyarrow table with the pool schema."""
    import pyarrow as pa

    from tasks.pool import POOL_SCHEMA

    shard = f"shards/{shard_name(index)}.tar"
    out = [
        {
            "uid": r["uid"],
            "url": r["url"],
            "text": r.get("caption") or "",
            "texts": r.get("texts") or [],
            "page_url": r.get("page_url") or "",
            "language": r.get("language") or "",
            "sha256": r.get("sha256") or "",
            "width": r.get("width"),
            "height": r.get("height"),
            "original_width": r.get("original_width"),
            "original_height": r.get("original_height"),
            "shard": shard,
            "status": r["status"],
            "error": r.get("error_message") or "",
        }
        for r in rows
    ]
    return pa.Table.from_pylist(out, schema=POOL_SCHEMA)


def sync_shard(table: Any, output_dir: str, index: int, force: bool = False) -> int:
    """Upsert one shard unless its pool marker says it is already in; return rows written."""
    import fsspec
    import pyarrow.parquet as pq

    marker = f"{shard_uri(output_dir, index)}.pool"
    if not force and is_done(marker):
        return 0
    with fsspec.open(f"{shard_uri(output_dir, index)}.parquet", "rb") as fh:
        rows = pq.read_table(fh).to_pylist()
    if rows:
        from tasks.pool import upsert_rows

        upsert_rows(table, pool_rows(rows, index))
    mark_done(marker, {"rows": len(rows)})
    return len(rows)
