"""Read shard samples as rows and hash them on Ray Data, without a model.

The rows are read where they are processed (one Ray task per block of keys); images never
travel through the driver. Curate's feature pipeline (tasks/curate/features.py) reads with the
same `read_shard` and adds its embeddings on top.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

Reader = Callable[[dict[str, Any]], list[dict[str, Any]]]
View = Callable[[dict[str, Any]], list[dict[str, Any]]]


def read_shard(item: dict[str, Any]) -> list[dict[str, Any]]:
    """uid, image bytes and text of the listed keys of one shard (`item`: shard, uids, texts,
    prefix); a key with no image in the shard comes back with empty bytes (hash_batch then says
    `image_missing`), so no listed row is lost."""
    from tasks.io.wds import read_images

    texts = dict(zip(item["uids"], item["texts"], strict=True))
    prefix = item.get("prefix", "")
    rows = [
        {"uid": prefix + uid, "image": data, "text": texts.get(uid) or ""}
        for uid, data, _ in read_images(item["shard"], set(item["uids"]))
    ]
    missing = set(item["uids"]) - {r["uid"].removeprefix(prefix) for r in rows}
    rows.extend(
        {"uid": prefix + uid, "image": b"", "text": texts.get(uid) or ""} for uid in sorted(missing)
    )
    return rows


def shard_items(
    shard_rows: dict[str, list[tuple[str, str]]],
    prefixes: dict[str, str] | None = None,
    chunk: int = 1000,
) -> list[dict[str, Any]]:
    """At most `chunk` (uid, text) rows per item, so one big shard (an eval set) spreads over CPUs."""
    return [
        {
            "shard": str(shard),
            "uids": [u for u, _ in rows[i : i + chunk]],
            "texts": [t for _, t in rows[i : i + chunk]],
            "prefix": (prefixes or {}).get(str(shard), ""),
        }
        for shard, rows in sorted(shard_rows.items())
        for i in range(0, len(rows), chunk)
    ]


def _drop_image(batch: pa.Table) -> pa.Table:
    return batch.drop_columns(["image"])


def hash_items(
    items: list[dict[str, Any]], reader: Reader = read_shard, view: View | None = None
) -> pa.Table:
    """uid, image_sha256, phash, dhash, image_reason (plus whatever the reader and view add) of
    every row the reader yields for the items, on the current Ray; `view` maps a read row to the
    rows to hash instead (views.EvalView: the crawl's resize + encode, crops)."""
    import ray

    from tasks.decontam.hashing import hash_batch

    if not items:
        return pa.table({"uid": pa.array([], pa.string())})
    ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(reader)
    if view is not None:
        ds = ds.flat_map(view)
    ds = ds.map_batches(hash_batch, batch_format="pyarrow", batch_size=256)
    ds = ds.map_batches(_drop_image, batch_format="pyarrow")
    parts = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    return pa.concat_tables(parts, promote_options="permissive")
