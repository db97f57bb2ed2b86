"""Curate's preparation streamed over the pool in blocks (issue 17): matching, hashes and
embeddings stored in pool columns one block at a time, and the side inputs built from per-block
parts, so the driver holds one block of rows at a time, never the pool.

Matching is one Ray Data pipeline over every block (read tasks list the rows to match, the
matcher actors build their automaton once); features too (tasks/curate/streamfeatures.py: read
tasks list, read and hash each block's rows, one pool of embedding actors reading the teacher's
stored tower features serves the whole run), writing the columns the in-memory path's
ensure_features writes; stored work is reused the same way (rows whose digest or model already
fit are skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.curate.params import CurateParams
from tasks.curate.steps.base import Input, StepContext
from tasks.curate.stream import PoolBlocks, read_block
from tasks.io.paths import resolve_path


def pinned(pool: Any, uri: str | None, block_rows: int) -> PoolBlocks:
    """The pool's latest version as blocks (reopened: another handle may have written)."""
    from tasks.pool import open_pool

    latest = open_pool(uri)
    return PoolBlocks(uri, int(latest.version), int(latest.count_rows()), block_rows)


def iter_blocks(src: PoolBlocks) -> Iterator[pa.Table]:
    """Every block of the pinned version, one at a time."""
    for block in range(src.count):
        yield read_block(src, block)


def stream_prepare(
    pool: Any, uri: str | None, p: CurateParams, out_dir: Path, needed: frozenset[Input]
) -> tuple[StepContext, dict[str, Any]]:
    """As tasks/curate/inputs.py prepare, block by block: returns the context (never
    `pool_rows`: the streamed steps reduce over the pool themselves) and the metrics."""
    from tasks.curate.inputs import SIDE_INPUTS, _metadata
    from tasks.curate.stage import model_ref
    from tasks.curate.streamfeatures import stream_features

    streamable = {"matches", "hashes", "embeddings", "eval_features", "target_embeddings"}
    if needed - streamable - {"pool_rows"}:
        raise NotImplementedError(
            f"curate inputs {sorted(needed - streamable)} are not streamed; "
            "set execution.mode: memory"
        )
    metrics: dict[str, Any] = {}
    ctx = StepContext(params=p, out_dir=out_dir)
    meta_path, digest = None, "textcheck"
    if "matches" in needed:
        meta_path, digest, ctx.n_entries = _metadata(p, out_dir, metrics)
    block_rows = p.compute.rows_per_block
    metrics["rows_matched"] = stream_matches(
        pool, pinned(pool, uri, block_rows), meta_path, digest, p
    )
    if needed & {"hashes", "embeddings"}:
        ref = model_ref(p) if "embeddings" in needed else None
        crawl = resolve_path(p.paths.crawl_dir)
        metrics["rows_featurised"] = stream_features(
            pool, pinned(pool, uri, block_rows), crawl, ref, p
        )
    if "eval_features" in needed:
        SIDE_INPUTS["eval_features"](ctx, _BlockRows(pinned(pool, uri, block_rows)))
    if "target_embeddings" in needed:  # the target task's images only: no pool rows read
        SIDE_INPUTS["target_embeddings"](ctx, None)
    return ctx, metrics


WRITE_ROWS = 100_000  # matched rows gathered before one merge into the pool


def _todo_rows(batch: pa.Table, src: PoolBlocks, digest: str) -> pa.Table:
    """Ray Data map (a task per pool block): the block's rows whose stored matches are missing
    or from other metadata, as (uid, text)."""
    import pyarrow.compute as pc

    parts = []
    for block in batch.column("block").to_pylist():
        rows = read_block(src, block)
        stale = pc.fill_null(pc.not_equal(rows.column("match_digest"), digest), True)
        parts.append(rows.select(["uid", "text"]).filter(stale))
    empty = pa.table({"uid": pa.array([], pa.string()), "text": pa.array([], pa.string())})
    return pa.concat_tables([empty, *[t.cast(empty.schema) for t in parts]])


def stream_matches(
    pool: Any, src: PoolBlocks, meta_path: str | None, digest: str, p: CurateParams
) -> int:
    """As tasks/curate/prepare.py ensure_matches over every block, as one Ray Data pipeline:
    read tasks list each block's rows to match, the matcher actors (one automaton each, built
    once) match them, the driver merges the results into the pool WRITE_ROWS at a time."""
    import ray

    from tasks.curate.matching import MatchBatch, TextCheckBatch
    from tasks.curate.poolio import write_columns
    from tasks.curate.prepare import MATCH_COLUMNS

    if src.count == 0:
        return 0
    cpus, block = p.compute.cpus_per_worker, p.compute.rows_per_block
    ds: Any = ray.data.from_items(
        [{"block": b} for b in range(src.count)], override_num_blocks=src.count
    )
    ds = ds.map_batches(
        _todo_rows, fn_args=(src, digest), batch_size=1, batch_format="pyarrow", num_cpus=cpus
    )
    cls, args = (
        (TextCheckBatch, (p.text_checks.max_chars,))
        if meta_path is None
        else (MatchBatch, (meta_path, p.text_checks.max_chars, Path(meta_path).read_bytes()))
    )
    ds = ds.map_batches(
        cls,
        fn_constructor_args=args,
        batch_format="pyarrow",
        batch_size=block,
        compute=ray.data.ActorPoolStrategy(size=p.compute.match_workers),
        num_cpus=cpus,
    )
    rename = {"uid": "uid", **{v: k for k, v in MATCH_COLUMNS.items()}}
    pending: list[pa.Table] = []
    done = 0

    def flush() -> None:
        got = pa.concat_tables(pending)
        got = got.append_column("match_digest", pa.array([digest] * got.num_rows, pa.string()))
        write_columns(pool, got.rename_columns([rename[c] for c in got.column_names]))
        pending.clear()

    for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
        if batch.num_rows:
            pending.append(batch)
            done += batch.num_rows
            if sum(t.num_rows for t in pending) >= WRITE_ROWS:
                flush()
    if pending:
        flush()
    return done


class _BlockRows:
    """The pool's rows as blocks where the in-memory side-input builders take one table: they
    only ask `matched_eval_ids` of it (tasks/curate/inputs.py), answered block by block."""

    def __init__(self, src: PoolBlocks) -> None:
        self.src = src

    def blocks(self) -> Iterator[pa.Table]:
        return iter_blocks(self.src)
