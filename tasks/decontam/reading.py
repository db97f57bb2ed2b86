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
    processes: int | None = None,
) -> pa.Table:
    """uid, image_sha256, phash, dhash, image_reason (plus whatever the reader and view add) of
    every row the reader yields for the items, on the current Ray, one task per item
    (ReadAndHash); `view` maps a read row to the rows to hash instead (views.EvalView: the
    crawl's resize + encode, crops). `label` names the progress lines ("decontaminate: hashing
    eval images 1,000/11,695 ..."), counted in images read (a view's crops are not counted);
    `known`: sha256 -> hashes not computed again (hashing.hash_batch). `processes`: run the
    same tasks on that many local processes instead of Ray (hash_local)."""
    if not items:
        return pa.table({"uid": pa.array([], pa.string())})
    if processes is not None:
        return hash_local(items, ReadAndHash(reader, view, known), processes, label)
    import ray

    from tasks.progress import Progress

    ds: Any = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.flat_map(ReadAndHash(reader, view, known))
    total = sum(len(item["uids"]) for item in items)
    parts: list[pa.Table] = []
    with Progress(label or "hashing images", total=total, unit="images") as progress:
        for part in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            parts.append(part)
            progress.update(whole_images(part))
    return pa.concat_tables(parts, promote_options="permissive")


def hash_local(
    items: list[dict[str, Any]], task: ReadAndHash, processes: int, label: str | None = None
) -> pa.Table:
    """hash_items' tasks on a pool of local processes (or in this one for `processes` 1): one
    task per item, as on Ray, without a Ray to boot (the decontaminate stage on one machine).

    Rows come back in item order (Ray's come in the order tasks end); callers sort or regroup
    them, so their outputs do not depend on it. Spawned workers: the runner's process holds
    threads (MLflow), which forking would copy in whatever state they are."""
    from tasks.progress import Progress

    total = sum(len(item["uids"]) for item in items)
    parts: list[pa.Table] = []
    with Progress(label or "hashing images", total=total, unit="images") as progress:

        def collect(rows: list[dict[str, Any]]) -> None:
            part = pa.Table.from_pylist(rows) if rows else pa.table({})
            parts.append(part)
            progress.update(whole_images(part) if rows else 0)

        if processes <= 1 or len(items) == 1:
            for item in items:
                collect(task(item))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            workers = min(processes, len(items))
            with ProcessPoolExecutor(
                workers, mp_context=mp.get_context("spawn"), initializer=one_blas_thread
            ) as pool:
                for rows in pool.map(task, items):
                    collect(rows)
    parts = [p for p in parts if p.num_columns]
    if not parts:
        return pa.table({"uid": pa.array([], pa.string())})
    return pa.concat_tables(parts, promote_options="permissive")


def one_blas_thread() -> None:
    """A local worker's BLAS on one thread, as Ray gives its one-CPU tasks (OMP_NUM_THREADS=1):
    the pool already has a process per CPU, and idle BLAS threads spin on the others' cores
    (tasks/decontam/fasthash.py multiplies small matrices)."""
    import numpy  # noqa: F401  (its BLAS loaded first: threadpoolctl limits loaded libraries only)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
