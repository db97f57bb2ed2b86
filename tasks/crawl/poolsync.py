"""Upsert each finished shard's rows into the LanceDB pool (by uid, so re-runs never duplicate).

The shard task itself writes its rows (`sync_from_worker`, right after its done marker); the
driver only creates the tables before the first task starts and, at the end, syncs the shards
whose task was killed between its marker and its upsert (`PoolSink.sync_missing`).

Which shards are in the pool is recorded IN the pool's database (table `pool_crawl_shards`, one
row per shard content: the sha256 of its parquet file, which the shard's done marker carries),
not beside the crawl output. So the record goes wherever the pool goes: a fresh clone whose
`data/crawl` came from DVC, or a new `CLIPMILL_LANCEDB_URI`, finds no record and refills the
pool from the shards; a shard rewritten by retry_failed has new content, hence a new key, and
is upserted again. The driver's pass reads only the markers of shards already recorded, never
their rows.

Concurrency (several shard tasks committing at once): LanceDB retries a merge_insert whose
commit conflicts with another, and concurrent merge_inserts of DISJOINT uids are safe (checked
with 4 processes updating rows of one fragment: every row once, every update kept). Two
concurrent merge_inserts inserting the SAME new uid both insert it (measured: a duplicate), so
safety rests on the plan: its uids are unique, hence the shards' uid sets are disjoint, and one
shard is written by one task at a time (a rerun starts only once its worker is dead).
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

from tasks.crawl.writer import PARQUET_COLUMNS, read_marker, shard_name, shard_path, shard_uri

SYNC_TABLE = "pool_crawl_shards"  # the pool's own record of the shard contents it holds
_POOL_INPUT_COLUMNS = [c for c in PARQUET_COLUMNS if c not in ("seconds", "fetch_url", "bytes")]


def pool_rows(rows: list[dict[str, Any]], index: int, fmt: str = "webdataset") -> Any:
    """Shard rows -> a pyarrow table with the pool schema (`shard`: where its samples are)."""
    import pyarrow as pa

    from tasks.pool import POOL_SCHEMA

    shard = shard_path(index, fmt)
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


def _record_key(parquet_sha256: str) -> str:
    return parquet_sha256[:32]


def _recorded(record: Any, key: str) -> bool:
    return bool(record.count_rows(f"key = '{key}'"))


def sync_from_worker(
    uri: str, index: int, rows: list[dict[str, Any]], parquet_sha256: str, fmt: str
) -> int:
    """In the shard task, after its done marker: upsert its rows unless the pool's record holds
    this content already (a task rerun after the kill of a worker that had synced); rows in,
    record last, so a kill in between only repeats an idempotent upsert. Returns rows written.
    The tables exist: the driver made them (PoolSink) before the first task started."""
    from tasks.pool import POOL_TABLE, connect, upsert_rows

    db = connect(uri)
    record = db.open_table(SYNC_TABLE)
    key = _record_key(parquet_sha256)
    if _recorded(record, key):
        return 0
    if rows:
        upsert_rows(db.open_table(POOL_TABLE), pool_rows(rows, index, fmt))
    record.add([{"key": key, "shard": shard_name(index), "rows": len(rows)}])
    return len(rows)


class PoolSink:
    """The pool table plus its record of synced shard contents, opened (made) once per run."""

    def __init__(self, uri: str | None) -> None:
        from tasks.pool import connect, open_pool

        self.table = open_pool(uri, create=True)
        db = connect(uri)
        if SYNC_TABLE in db.table_names():
            self.synced = db.open_table(SYNC_TABLE)
        else:
            self.synced = db.create_table(SYNC_TABLE, schema=_sync_schema())
        self.keys = self._read_keys()

    def _read_keys(self) -> set[str]:
        return set(self.synced.to_arrow().column("key").to_pylist())

    def sync_missing(self, output_dir: str, indices: list[int], fmt: str = "webdataset") -> int:
        """Sync the done shards of `indices` the pool's record lacks (the workers' writes
        re-read first); a shard whose marker names a recorded content is skipped unread.
        Returns how many shard parquet files were read (0 after a run whose tasks all synced).

        Both handles move to the tables' latest versions first: a LanceDB handle keeps the
        version it opened, and a merge_insert from a handle that predates the workers' commits
        does not see their uids and inserts them again (measured: duplicates).
        """
        self.table.checkout_latest()
        self.synced.checkout_latest()
        self.keys = self._read_keys()
        read = 0
        for index in indices:
            key = read_marker(output_dir, index).get("parquet_sha256")
            if key and _record_key(key) in self.keys:
                continue
            self.sync_shard(output_dir, index, fmt)
            read += 1
        return read

    def sync_shard(self, output_dir: str, index: int, fmt: str = "webdataset") -> int:
        """Upsert one shard unless the pool already holds this content; return rows written.

        The rows go in first and the record last, so a kill in between only repeats an
        idempotent upsert.
        """
        import fsspec
        import pyarrow.parquet as pq

        with fsspec.open(f"{shard_uri(output_dir, index)}.parquet", "rb") as fh:
            data = fh.read()
        key = _record_key(hashlib.sha256(data).hexdigest())
        if key in self.keys:
            return 0
        columns = [c for c in _POOL_INPUT_COLUMNS if c in pq.read_schema(io.BytesIO(data)).names]
        rows = pq.read_table(io.BytesIO(data), columns=columns).to_pylist()
        if rows:
            from tasks.pool import upsert_rows

            upsert_rows(self.table, pool_rows(rows, index, fmt))
        self.synced.add([{"key": key, "shard": shard_name(index), "rows": len(rows)}])
        self.keys.add(key)
        return len(rows)
