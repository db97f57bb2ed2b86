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
    from tasks.io.crawlshards import read_images  # a tar, or a crawl shard in any layout

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


class ReadAndHash:
    """One Ray task's whole job for a block of keys: read the images, make the views, hash them,
    and hand back only the hashes. Fused on purpose: the views (the crawl's resize + JPEG of every
    eval image and of its crops) never travel through Ray's object store, only ~100 bytes of
    hashes per view do. `keep_images` hands the image bytes on too, for an embedding actor
    after it (the hashing then stays in the read tasks, not in that actor's CPU)."""

    def __init__(
        self,
        reader: Reader = read_shard,
        view: View | None = None,
        known: dict[str, tuple[str, str]] | None = None,
        keep_images: bool = False,
    ) -> None:
        self.reader, self.view, self.known = reader, view, known
        self.keep_images = keep_images

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        from tasks.decontam.hashing import hash_batch

        out: list[dict[str, Any]] = []
        rows = self.reader(item)
        step = 1 if self.view is not None else 256  # one image's views at a time in memory
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            if self.view is not None:
                chunk = [v for row in chunk for v in self.view(row)]
            hashed = hash_batch(pa.Table.from_pylist(chunk), self.known)
            out += (hashed if self.keep_images else hashed.drop_columns(["image"])).to_pylist()
        return out


def whole_images(batch: pa.Table) -> int:
    """Rows of a batch that stand for one read image each (a view's crops stand for none)."""
    if "variant" not in batch.column_names:
        return batch.num_rows
    return sum(v in (None, "full") for v in batch.column("variant").to_pylist())


def hash_items(
    items: list[dict[str, Any]],
    reader: Reader = read_shard,
    view: View | None = None,
    label: str | None = None,
    known: dict[str, tuple[str, str]] | None = None,
) -> pa.Table:
    """uid, image_sha256, phash, dhash, image_reason (plus whatever the reader and view add) of
    every row the reader yields for the items, on the current Ray, one task per item
    (ReadAndHash); `view` maps a read row to the rows to hash instead (views.EvalView: the
    crawl's resize + encode, crops). `label` names the progress lines ("decontaminate: hashing
    eval images 1,000/11,695 ..."), counted in images read (a view's crops are not counted);
    `known`: sha256 -> hashes not computed again (hashing.hash_batch)."""
    import ray

    from tasks.progress import Progress

    if not items:
        return pa.table({"uid": pa.array([], pa.string())})
    ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(ReadAndHash(reader, view, known))
    total = sum(len(item["uids"]) for item in items)
    parts: list[pa.Table] = []
    with Progress(label or "hashing images", total=total, unit="images") as progress:
        for part in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(part)
            progress.update(whole_images(part))
    return pa.concat_tables(parts, promote_options="permissive")
