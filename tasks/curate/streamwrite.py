"""Curate's outputs on the streamed path (issue 17): the curated shards and DataComp's uid file
written by Ray tasks from the per-block ledgers, never from a table in the driver.

Shards, in three steps that give the in-memory path's shards byte for byte
(tasks/curate/materialise.py):
1. one task per pool block lists its kept rows whose crawl tar exists, with every caption
   field (`manifest_block`);
2. one task reads the uids of every list, gives each its output shard by the same seeded
   permutation of the sorted uids (`bucket_of_sorted`: an int64 per uid, in that task), and
   splits the lists into groups of consecutive output shards (`group_manifest`);
3. one task per group routes its samples from the crawl tars and writes its shards
   (`write_group`, materialise's own `write_buckets`).
The driver holds file paths and counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.stream import HOLDOUT, KEEP, PoolBlocks, _blocks, _state_path

ROWS_PER_GROUP = 50_000  # samples one writer task holds (uid -> caption fields) at most


def read_pool_block(src: PoolBlocks, block: int, columns: list[str]) -> pa.Table:
    """Block `block` of the pinned pool with `columns` (those it has), in the decisions' order."""
    from tasks.pool import open_pool

    table = open_pool(src.uri)
    table.checkout(src.version)
    have = [c for c in columns if c in set(table.schema.names)]
    return (
        table.search().select(have).offset(block * src.block_rows).limit(src.block_rows).to_arrow()
    )


def _block_choice(rows: pa.Table, state: pa.Table, caption: tuple[str, float] | None) -> Any:
    """clip_score's caption choice restricted to one block, as the in-memory step makes it
    (tasks/curate/steps/clip_score.py); None without the step, as in memory. `caption`: (mode,
    threshold). Rescued rows are read back from the block's ledger: kept by clip_score with a
    raw score below the threshold (only a passing synthetic caption keeps such a row); a
    synthetic caption passes at or above the threshold."""
    from tasks.curate.steps.clip_score import CaptionChoice

    if caption is None:
        return None
    mode, threshold = caption
    uids = rows.column("uid").to_pylist()
    col = "recaption_score_long_positive"
    scores = rows.column(col).to_pylist() if col in rows.column_names else [None] * len(uids)
    passing = frozenset(
        u for u, s in zip(uids, scores, strict=True) if s is not None and s >= threshold
    )
    rescued: frozenset[str] = frozenset()
    if mode != "raw" and "curate_clip_score_keep" in state.column_names:
        kept = state.column("curate_clip_score_keep").to_pylist()
        raw = state.column("curate_clip_score_score").to_pylist()
        rescued = frozenset(
            u
            for u, k, r in zip(uids, kept, raw, strict=True)
            if k and r is not None and r < threshold
        )
    return CaptionChoice(mode, threshold, rescued, passing)


def manifest_block(
    block: int,
    src: PoolBlocks,
    scratch: Path,
    dest: str,
    crawl_dir: str,
    caption: tuple[str, float] | None,
) -> tuple[int, int]:
    """Block `block`'s rows of `dest` (train: kept and not held out; held: held out) whose crawl
    tar exists, as (uid, path, fields JSON) in scratch/mat/<dest>/parts. Returns (listed,
    kept without image). `caption`: clip_score's (caption mode, threshold), None when the run
    has no clip_score."""
    from tasks.curate.features import existing_shard
    from tasks.curate.stage import RECAPTION_FIELDS, _recaption_row

    ledger = _state_path(scratch, block)
    clip = ["curate_clip_score_keep", "curate_clip_score_score"]
    have = set(pq.read_schema(ledger).names)
    state = pq.read_table(ledger, columns=["uid", KEEP, HOLDOUT, *[c for c in clip if c in have]])
    keep = np.asarray(state.column(KEEP).to_numpy(zero_copy_only=False), dtype=bool)
    held = np.asarray(state.column(HOLDOUT).to_numpy(zero_copy_only=False), dtype=bool)
    mask = held if dest == "held" else keep & ~held
    rows = read_pool_block(src, block, ["uid", "text", "texts", "url", "shard", *RECAPTION_FIELDS])
    if rows.column("uid").to_pylist() != state.column("uid").to_pylist():
        raise RuntimeError(f"curate: pool block {block} changed under the streamed run")
    choice = _block_choice(rows, state, caption)
    uids, paths, fields = [], [], []
    for i in np.flatnonzero(mask).tolist():
        row = rows.slice(i, 1).to_pylist()[0]
        path = existing_shard(Path(crawl_dir), row.pop("shard"))
        if path is not None:
            uids.append(row["uid"])
            paths.append(str(path))
            fields.append(json.dumps(_recaption_row(row, choice), default=str))
    out = scratch / "mat" / dest / "parts" / f"b{block:07d}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": uids, "path": paths, "fields": fields}, _SCHEMA), out)
    return len(uids), int(mask.sum()) - len(uids)


_SCHEMA = pa.schema([("uid", pa.string()), ("path", pa.string()), ("fields", pa.string())])


def group_manifest(folder: str, shard_size: int, seed: int) -> tuple[int, list[str]]:
    """Each listed uid's output shard (the in-memory path's seeded permutation of the sorted
    uids); the lists regrouped into files of consecutive output shards. Returns (output
    shards, group files)."""
    import pyarrow.compute as pc

    from tasks.curate.materialise import bucket_of_sorted

    parts = sorted(Path(folder, "parts").glob("*.parquet"))
    uids = pa.concat_arrays(
        [pq.read_table(f, columns=["uid"]).column("uid").combine_chunks() for f in parts]
    )
    n = len(uids)
    if n == 0:
        return 1, []
    bucket = np.empty(n, dtype=np.int64)
    bucket[np.asarray(pc.sort_indices(uids))] = bucket_of_sorted(n, shard_size, seed)
    per_group = max(1, ROWS_PER_GROUP // shard_size)
    writers: dict[int, pq.ParquetWriter] = {}
    schema = _SCHEMA.append(pa.field("bucket", pa.int64()))
    start = 0
    try:
        for f in parts:
            table = pq.read_table(f)
            mine = bucket[start : start + table.num_rows]
            start += table.num_rows
            table = table.append_column("bucket", pa.array(mine))
            for g in np.unique(mine // per_group).tolist():
                if g not in writers:
                    writers[g] = pq.ParquetWriter(str(Path(folder, f"g{g:06d}.parquet")), schema)
                writers[g].write_table(table.filter(pa.array(mine // per_group == g)))
    finally:
        for w in writers.values():
            w.close()
    return -(-n // shard_size), [str(Path(folder, f"g{g:06d}.parquet")) for g in sorted(writers)]


def write_group(group: str, dest_dir: str, seed: int) -> int:
    """Write the output shards of one group file (materialise's write_buckets); returns them."""
    from tasks.curate.materialise import write_buckets

    table = pq.read_table(group)
    uids = table.column("uid").to_pylist()
    kept = {u: json.loads(f) for u, f in zip(uids, table.column("fields").to_pylist(), strict=True)}
    shard_of = {u: Path(p) for u, p in zip(uids, table.column("path").to_pylist(), strict=True)}
    bucket = dict(zip(uids, table.column("bucket").to_pylist(), strict=True))
    ids = sorted(set(bucket.values()))
    return len(write_buckets(kept, shard_of, Path(dest_dir), bucket, ids, seed))


def stream_materialise(
    src: PoolBlocks,
    scratch: Path,
    dest: str,
    dest_dir: Path,
    p: Any,
    caption: tuple[str, float] | None,
) -> tuple[int, int]:
    """The `dest` rows (train | held) as shuffled shards in `dest_dir`: (shards, no image).
    `caption`: clip_score's (caption mode, threshold), None without the step."""
    import ray

    from tasks.curate.materialise import clear_shards, write_buckets
    from tasks.io.paths import resolve_path

    cpus = p.compute.cpus_per_worker
    clear_shards(dest_dir)
    missing = 0
    args = (src, scratch, dest, str(resolve_path(p.paths.crawl_dir)), caption)
    for _, lost in _blocks(manifest_block, src.count, args, cpus):
        missing += lost
    folder = str(scratch / "mat" / dest)
    plan = ray.remote(group_manifest).options(num_cpus=cpus)
    n_out, groups = ray.get(plan.remote(folder, p.outputs.shard_size, p.seed))
    if not groups:  # nothing to write: one empty shard, as the in-memory path
        write_buckets({}, {}, dest_dir, {}, [0], p.seed)
        return 1, missing
    task = ray.remote(write_group).options(num_cpus=cpus)
    written = sum(ray.get([task.remote(g, str(dest_dir), p.seed) for g in groups]))
    if written != n_out:
        raise RuntimeError(f"curate: {written} shards written for {n_out} planned in {dest_dir}")
    return written, missing


def datacomp_file(subset: str, target: str) -> int:
    """DataComp's `.npy` of the sorted uid list (a Ray task); -1 when a uid is not hex (the
    in-memory path's rule, tasks/curate/stage.py _field_formats)."""
    from tasks.curate.formats import is_hex_uid, write_datacomp_uids

    uids = pq.read_table(subset).column("uid").to_pylist()
    bad = next((u for u in uids if not is_hex_uid(u)), None)
    if bad is not None:
        print(f"curate: subset_uids.npy not written: uid {bad!r} is not a hex uid", flush=True)
        return -1
    return write_datacomp_uids(uids, Path(target))
