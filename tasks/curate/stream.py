"""Curate's decisions streamed over the pool in blocks (issue 17): the driver never holds rows.

Ray tasks each read one block of pool rows themselves (a fixed table version, `offset`/`limit`
scans of `compute.rows_per_block` rows), apply the steps to it and keep the block's decision
ledger in a scratch parquet file. A step whose decision is global (tasks/curate/streamsteps.py)
splits the work into passes: the blocks collect a small part (float32 scores, int64 entry
counts, or partition files), the driver reduces, and the next pass decides. The held-out part
reduces to the 64-bit prefixes of holdout's rank keys, at most `round(kept * fraction)` of them.
A Ray task merges the ledgers into the pool (the same columns as the in-memory path,
tasks/curate/apply.py) and writes the sorted uid lists.

The driver holds at most a float32 per pool row (clip_score with `fraction`, DataComp's rank
over the whole pool), an int64 per metadata entry, a uint64 per held-out row, and per-block
counts; no Python object per row.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.streamsteps import Streamed, holdout_keys, streamed

KEEP, REASON, HOLDOUT = "curate_keep", "curate_reason", "curate_holdout"
MERGE_ROWS = 1_000_000  # ledger rows per merge into the pool (the merge's memory grows with it)


@dataclass(frozen=True)
class PoolBlocks:
    """The pool as blocks: a table version pinned for the whole run, so every pass reads the
    same rows in the same order."""

    uri: str | None
    version: int
    rows: int
    block_rows: int

    @property
    def count(self) -> int:
        return math.ceil(self.rows / self.block_rows)


def read_block(src: PoolBlocks, block: int) -> pa.Table:
    """Block `block` of the pool with the columns (and names) the in-memory path's rows have
    (tasks/curate/inputs.py read_rows); columns the pool lacks are null strings."""
    from tasks.curate.inputs import BASE_COLUMNS, RECAPTION_COLUMNS
    from tasks.curate.prepare import FEATURE_COLUMNS, MATCH_COLUMNS
    from tasks.pool import open_pool

    table = open_pool(src.uri)
    table.checkout(src.version)
    cols = {**{c: c for c in BASE_COLUMNS}, **MATCH_COLUMNS, **FEATURE_COLUMNS, **RECAPTION_COLUMNS}
    have = set(table.schema.names)
    present = [c for c in cols if c in have]
    data = (
        table.search()
        .select(present)
        .offset(block * src.block_rows)
        .limit(src.block_rows)
        .to_arrow()
    )
    n = data.num_rows
    return pa.table(
        {cols[c]: data.column(c) if c in have else pa.nulls(n, pa.string()) for c in cols}
    )


def _state_path(scratch: Path, block: int) -> Path:
    return scratch / "state" / f"b{block:07d}.parquet"


def _scatter(n: int, idx: np.ndarray, values: Any, typ: pa.DataType) -> pa.Array:
    """As tasks/curate/apply.py: values at `idx`, null elsewhere (NaN scores are null)."""
    full: list[Any] = [None] * n
    vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
    for i, v in zip(idx.tolist(), vals, strict=True):
        full[i] = None if isinstance(v, float) and np.isnan(v) else v
    return pa.array(full, typ)


def run_pass(
    src: PoolBlocks,
    block: int,
    scratch: Path,
    adapters: list[Streamed],
    start: int,
    stop: int,
    collect_at: int | None,
    ctx: Any,
    first: bool,
) -> dict[str, Any]:
    """One block, one pass: decide steps [start, stop), then collect for step `collect_at`
    (over the rows reaching it); the `first` pass also sets the input reasons and collects for
    every whole-pool step. Returns small parts only (counts, arrays of a block's size)."""
    from tasks.curate.apply import input_reasons

    rows = read_block(src, block)
    n = rows.num_rows
    out: dict[str, Any] = {"collect": {}, "steps": {}}
    cols: dict[str, pa.Array]
    if first:
        given = input_reasons(rows)
        keep = np.array([r is None for r in given], dtype=bool)
        reason: list[str] = ["kept" if r is None else f"input:{r}" for r in given]
        cols = {"uid": rows.column("uid").combine_chunks()}
        cols["curate_input_reason"] = pa.array(given, pa.string())
        out["input"] = (int(keep.sum()), dict(Counter(r for r in given if r)))
        for j, a in enumerate(adapters):
            if a.whole_pool and a.global_decision and j >= stop:
                out["collect"][a.name] = a.collect(rows, block, scratch, ctx)
    else:
        state = pq.read_table(_state_path(scratch, block))
        keep = np.asarray(state.column(KEEP).to_numpy(zero_copy_only=False), dtype=bool)
        reason = state.column(REASON).to_pylist()
        cols = {c: state.column(c).combine_chunks() for c in state.column_names}
        cols.pop(KEEP), cols.pop(REASON)
    for a in adapters[start:stop]:
        idx = np.flatnonzero(keep)
        result, part = a.decide(rows.take(pa.array(idx, pa.int64())), block, scratch, ctx)
        if len(result.keep) != len(idx):
            raise RuntimeError(
                f"step {a.name} returned {len(result.keep)} decisions for {len(idx)} rows"
            )
        cols[f"curate_{a.name}_keep"] = _scatter(n, idx, result.keep, pa.bool_())
        cols[f"curate_{a.name}_reason"] = _scatter(n, idx, result.reason, pa.string())
        if result.score is not None:
            cols[f"curate_{a.name}_score"] = _scatter(
                n, idx, result.score.astype(float), pa.float64()
            )
        if result.ref is not None:
            cols[f"curate_{a.name}_dup_of"] = _scatter(n, idx, result.ref, pa.string())
        for local in np.flatnonzero(~result.keep):
            keep[idx[local]] = False
            reason[idx[local]] = f"{a.name}:{result.reason[local]}"
        dropped = Counter(r for r, k in zip(result.reason, result.keep, strict=True) if not k)
        out["steps"][a.name] = (int(keep.sum()), dict(dropped), part)
    if collect_at is not None:
        a = adapters[collect_at]
        idx = np.flatnonzero(keep)
        out["collect"][a.name] = a.collect(
            rows.take(pa.array(idx, pa.int64())), block, scratch, ctx
        )
    cols[KEEP] = pa.array(keep, pa.bool_())
    cols[REASON] = pa.array(reason, pa.string())
    path = _state_path(scratch, block)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return out


def holdout_candidates(block: int, scratch: Path, seed: int, k: int) -> np.ndarray:
    """The block's `k` smallest holdout key prefixes among its kept rows (uint64)."""
    state = pq.read_table(_state_path(scratch, block), columns=["uid", KEEP])
    kept = state.column("uid").filter(state.column(KEEP)).to_pylist()
    keys = holdout_keys(kept, seed)
    if keys.size > k:
        keys = np.partition(keys, k - 1)[:k] if k > 0 else keys[:0]
    return keys


def holdout_apply(block: int, scratch: Path, seed: int, limit: int | None) -> int:
    """Mark the kept rows whose key prefix is <= `limit` (None: no row) as held out; write the
    block's sorted training and held-out uid lists. Returns the rows held out."""
    path = _state_path(scratch, block)
    state = pq.read_table(path)
    keep = np.asarray(state.column(KEEP).to_numpy(zero_copy_only=False), dtype=bool)
    held = np.zeros(state.num_rows, dtype=bool)
    if limit is not None and keep.any():
        idx = np.flatnonzero(keep)
        keys = holdout_keys(state.column("uid").take(pa.array(idx)).to_pylist(), seed)
        held[idx[keys <= np.uint64(limit)]] = True
    state = state.append_column(HOLDOUT, pa.array(held, pa.bool_()))
    pq.write_table(state, path)
    uids = state.column("uid")
    for name, mask in (("train", keep & ~held), ("held", held)):
        folder = scratch / name
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"uid": uids.filter(pa.array(mask))}), folder / path.name)
    return int(held.sum())


def write_sorted_uids(folder: str, target: str) -> int:
    """One sorted uid list from the blocks' lists (a Ray task): the same file as
    tasks/curate/holdout.py write_uids (code-point order = UTF-8 byte order)."""
    import pyarrow.compute as pc

    from tasks.io import atomic_write_bytes

    files = sorted(Path(folder).glob("*.parquet"))
    uids = (
        pa.concat_arrays([pq.read_table(f).column("uid").combine_chunks() for f in files])
        if files
        else pa.array([], pa.string())
    )
    ordered = uids.take(pc.sort_indices(uids))
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"uid": pa.array(ordered, pa.string())}), sink)
    atomic_write_bytes(Path(target), sink.getvalue().to_pybytes())
    return len(ordered)


def write_ledger(uri: str | None, folder: str, batch_rows: int) -> int:
    """Replace the pool's decision columns with the blocks' ledgers (a Ray task), streamed in
    batches through merges on uid of about MERGE_ROWS rows each, as tasks/curate/stage.py's
    in-memory path writes them (one merge there)."""
    import pyarrow.dataset as ds

    from tasks.curate.poolio import clear_columns
    from tasks.pool import open_pool

    pool = open_pool(uri)
    files = sorted(str(f) for f in Path(folder).glob("*.parquet"))
    if not files:
        return 0
    schema = pq.read_schema(files[0])
    decision = [
        c
        for c in pool.schema.names
        if c.startswith("curate_") and c.endswith(("_keep", "_reason", "_score", "_dup_of"))
    ]
    clear_columns(
        pool, [c for c in decision if c not in ("curate_text_reason", "curate_image_reason")]
    )
    have = set(pool.schema.names)
    new = [f for f in schema if f.name != "uid" and f.name not in have]
    if new:
        pool.add_columns(new)
    target = pa.schema(
        [
            pool.schema.field(c) if c in set(pool.schema.names) else schema.field(c)
            for c in schema.names
        ]
    )
    written = 0
    per_merge = max(1, MERGE_ROWS // batch_rows)  # one merge holds its keys: bounded groups
    for start in range(0, len(files), per_merge):
        dataset = ds.dataset(files[start : start + per_merge], format="parquet", schema=schema)
        batches = (b.cast(target) for b in dataset.to_batches(batch_size=batch_rows))
        reader = pa.RecordBatchReader.from_batches(target, batches)
        pool.merge_insert("uid").when_matched_update_all().execute(reader, on_bad_vectors="null")
        written += int(dataset.count_rows())
    return written


@dataclass
class StreamOutcome:
    """What the streamed decisions leave on the driver: the funnel, metrics, the balance step's
    entry counts, and sizes; the rows' decisions are in the pool and the uid files."""

    funnel: list[dict[str, Any]]
    metrics: dict[str, Any]
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    curated_size: int = 0
    holdout_size: int = 0
    source: PoolBlocks | None = None  # the pinned pool the decisions read (block order)


def _blocks(
    fn: Callable[..., Any], count: int, common: tuple[Any, ...], cpus: float
) -> Iterator[Any]:
    """Results of `fn(b, *common)` for every block b, as Ray tasks with a bounded number in flight
    (twice the cluster's CPUs), yielded as they finish: results are folded, never kept."""
    import ray

    task = ray.remote(fn).options(num_cpus=cpus)
    window = max(2, int(ray.cluster_resources().get("CPU", 1)) * 2)
    pending: list[Any] = []
    next_block = 0
    while next_block < count or pending:
        while next_block < count and len(pending) < window:
            pending.append(task.remote(next_block, *common))
            next_block += 1
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


def stream_decide(
    pool: Any, uri: str | None, steps: list[Any], ctx: Any, scratch: Path
) -> StreamOutcome:
    """Apply `steps` (already set up) to the pool in blocks; writes the decision columns into
    the pool and `subset_uids.parquet` / `holdout_uids.parquet` into `ctx.out_dir`."""
    import ray

    from tasks.curate.holdout import holdout_count

    p = ctx.params
    cpus = p.compute.cpus_per_worker
    adapters = [streamed(s) for s in steps]
    ctx = replace(ctx, pool_rows=None)  # the streamed path never ships every row to every task
    src = PoolBlocks(uri, int(pool.version), int(pool.count_rows()), p.compute.rows_per_block)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for a in adapters:
        a.plan(src.rows)
    reduced = [not a.global_decision for a in adapters]
    funnel: dict[str, list[Any]] = {}
    start, first = 0, True
    while True:
        stop = next((j for j in range(start, len(adapters)) if not reduced[j]), len(adapters))
        collect_at = stop if stop < len(adapters) and not adapters[stop].whole_pool else None
        gathered = {a.name for j, a in enumerate(adapters) if j >= stop and a.global_decision}
        shared = ray.put((adapters, ctx))
        common = (src, scratch, shared, start, stop, collect_at, first)
        for out in _blocks(_pass_task, src.count, common, cpus):
            if "input" in out:
                left, dropped = out["input"]
                entry = funnel.setdefault("input", [0, Counter()])
                entry[0] += left
                entry[1].update(dropped)
            for name, (left, dropped, part) in out["steps"].items():
                entry = funnel.setdefault(name, [0, Counter()])
                entry[0] += left
                entry[1].update(dropped)
                next(a for a in adapters if a.name == name).fold(part)
            for name, part in out["collect"].items():
                if name in gathered:
                    next(a for a in adapters if a.name == name).absorb(part, src.rows)
        del shared
        for j, a in enumerate(adapters):
            collected = j == collect_at or (first and a.whole_pool and j >= stop)
            if not reduced[j] and collected:
                a.reduce(scratch, ctx)
                reduced[j] = True
        if stop == len(adapters):
            break
        start, first = stop, False
    return _finish(src, adapters, funnel, ctx, scratch, holdout_count)


def _pass_task(
    block: int,
    src: PoolBlocks,
    scratch: Path,
    shared: Any,
    start: int,
    stop: int,
    collect_at: int | None,
    first: bool,
) -> dict[str, Any]:
    """A Ray task: one block of one pass (the adapters and context come from the object store)."""
    adapters, ctx = shared
    return run_pass(src, block, scratch, adapters, start, stop, collect_at, ctx, first)


def _finish(
    src: PoolBlocks,
    adapters: list[Streamed],
    funnel_parts: dict[str, list[Any]],
    ctx: Any,
    scratch: Path,
    holdout_count: Callable[[int, float], int],
) -> StreamOutcome:
    """Holdout (two passes over the ledgers), the pool's columns and the uid lists."""
    import ray

    p = ctx.params
    cpus = p.compute.cpus_per_worker
    names = ["input", *[a.name for a in adapters]]
    funnel = [
        {
            "step": n,
            "left": funnel_parts.get(n, [0, Counter()])[0],
            "dropped": dict(funnel_parts.get(n, [0, Counter()])[1]),
        }
        for n in names
    ]
    kept = funnel[-1]["left"]
    k = holdout_count(kept, p.holdout.fraction)
    best = np.zeros(0, dtype=np.uint64)
    if k > 0:
        for keys in _blocks(holdout_candidates, src.count, (scratch, p.holdout.seed, k), cpus):
            best = np.concatenate([best, keys])
            if best.size > k:
                best = np.partition(best, k - 1)[:k]
    limit = int(best.max()) if k > 0 else None
    held = sum(_blocks(holdout_apply, src.count, (scratch, p.holdout.seed, limit), cpus))
    if held != k:
        raise RuntimeError(
            f"holdout: {held} rows share the {k} lowest 64-bit key prefixes (a prefix tie); "
            "run curate in memory for this pool"
        )
    funnel.append(
        {"step": "holdout", "left": kept - held, "dropped": {"held_out": held} if held else {}}
    )
    metrics: dict[str, Any] = {}
    artifacts: dict[str, dict[str, Any]] = {}
    for a in adapters:
        metrics.update(a.finish())
        if a.artifact is not None:
            artifacts[a.name] = {"entry_counts": a.artifact}
    out = ctx.out_dir
    write = ray.remote(write_sorted_uids).options(num_cpus=cpus)
    ledger = ray.remote(write_ledger).options(num_cpus=cpus)
    ray.get(
        [
            write.remote(str(scratch / "train"), str(out / "subset_uids.parquet")),
            write.remote(str(scratch / "held"), str(out / "holdout_uids.parquet")),
            ledger.remote(src.uri, str(scratch / "state"), src.block_rows),
        ]
    )
    return StreamOutcome(
        funnel, metrics, artifacts, curated_size=kept, holdout_size=held, source=src
    )
