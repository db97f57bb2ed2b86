"""Upsert each finished shard's rows into the LanceDB pool (by uid, so re-runs never duplicate).

Which shards are in the pool is recorded IN the pool's database (table `pool_crawl_shards`, one
row per shard content: the sha256 of its parquet file), not beside the crawl output. So the
record goes wherever the pool goes: a fresh clone whose `data/crawl` came from DVC, or a new
`CLIPMILL_LANCEDB_URI`, finds no record and refills the pool from the shards; a shard rewritten
by retry_failed has new content, hence a new key, and is upserted again.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from tasks.crawl.writer import shard_name, shard_uri

SYNC_TABLE = "pool_crawl_shards"  # the pool's own record of the shard contents it holds


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


def _sync_schema() -> Any:
    import pyarrow as pa

    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("rows", pa.int64())])


class PoolSink:
    """The pool table plus its record of synced shard contents, opened once per run."""

    def __init__(self, uri: str | None) -> None:
        from tasks.pool import connect, open_pool

        self.table = open_pool(uri, create=True)
        db = connect(uri)
        if SYNC_TABLE in db.table_names():
            self.synced = db.open_table(SYNC_TABLE)
        else:
            self.synced = db.create_table(SYNC_TABLE, schema=_sync_schema())
        self.keys = set(self.synced.to_arrow().column("key").to_pylist())

    def sync_shard(self, output_dir: str, index: int) -> int:
        """Upsert one shard unless the pool already holds this content; return rows written.

        The rows go in first and the record last, so a kill in between only repeats an
        idempotent upsert.
        """
        import fsspec
        import pyarrow.parquet as pq

        with fsspec.open(f"{shard_uri(output_dir, index)}.parquet", "rb") as fh:
            data = fh.read()
        key = hashlib.sha256(data).hexdigest()[:32]
        if key in self.keys:
            return 0
        rows = pq.read_table(io.BytesIO(data)).to_pylist()
        if rows:
            from tasks.pool import upsert_rows

            upsert_rows(self.table, pool_rows(rows, index))
        self.synced.add([{"key": key, "shard": shard_name(index), "rows": len(rows)}])
        self.keys.add(key)
        return len(rows)
