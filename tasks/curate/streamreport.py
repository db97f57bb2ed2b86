"""Curate's report parts on the streamed path (issue 17): report steps and example grids from
per-block Ray tasks that return only the few rows a report looks at.

- planted_qa: each block runs the decontaminate step over its rows that passed the input
  checks (every such row, as the in-memory report does) and returns only the rows the planted
  recall reads: the flagged ones and the planted copies; `planted_recall` over those gives the
  in-memory numbers (its counts only look at flagged and planted rows).
- grids: per block and group (kept, dropped_<step>) the `report_examples` uids with the lowest
  sha256("<seed>:<uid>"), reduced to the lowest over the pool. A seeded sample like the
  in-memory one (random.sample over the group), not the same images: documented choice.
- kept_by_synthetic_caption (clip_score.caption other than raw): the in-memory grid's rows, the
  `report_examples` smallest uids kept only by their synthetic caption, reduced over blocks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.curate.stream import REASON, PoolBlocks, _blocks, _state_path, read_block


def planted_block(block: int, src: PoolBlocks, shared: Any) -> pa.Table:
    """One block's flagged and planted rows: url, reason, ref, distance."""
    from tasks.curate.apply import input_reasons
    from tasks.decontam.planted import site_path

    report, step, ctx, planted = shared
    rows = read_block(src, block)
    ok = np.flatnonzero([r is None for r in input_reasons(rows)])
    sub = rows.take(pa.array(ok, pa.int64()))
    res = step(sub, ctx)
    refs = res.ref or [None] * sub.num_rows
    urls = sub.column("url").to_pylist()
    wanted = [
        i
        for i, (u, r) in enumerate(zip(urls, res.reason, strict=True))
        if (r and r.startswith("eval_")) or site_path(u) in planted
    ]
    sub = sub.take(pa.array(wanted, pa.int64()))
    reasons = [res.reason[i] for i in wanted]
    refs = [refs[i] for i in wanted]
    dist = report._flagged_distances(sub, reasons, refs, ctx)
    return pa.table(
        {
            "url": pa.array([urls[i] for i in wanted], pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "ref": pa.array(refs, pa.string()),
            "distance": pa.array(dist, pa.float64()),
        }
    )


def stream_planted(src: PoolBlocks, report: Any, step: Any, ctx: Any) -> dict[str, Any]:
    """The planted_qa report over every block (the in-memory PlantedQA's metrics)."""
    import ray

    from tasks.decontam.planted import planted_eval_ids, planted_recall
    from tasks.io.paths import resolve_path

    path = resolve_path(report.params.planted_qa.path)
    if path is None or not path.exists() or ctx.eval_features is None:
        return {}
    shared = ray.put((report, step, ctx, frozenset(planted_eval_ids(path))))
    cpus = ctx.params.compute.cpus_per_worker
    parts = list(_blocks(planted_block, src.count, (src, shared), cpus))
    rows = pa.concat_tables(parts) if parts else pa.table({"url": pa.array([], pa.string())})
    return planted_recall(
        path,
        rows.column("url").to_pylist(),
        rows.column("reason").to_pylist() if rows.num_rows else [],
        rows.column("ref").to_pylist() if rows.num_rows else [],
        distances=rows.column("distance").to_pylist() if rows.num_rows else [],
        lookalike_mad=report.params.planted_qa.lookalike_mad,
    )


def stream_reports(src: PoolBlocks, reports: list[Any], steps: list[Any], ctx: Any) -> dict:
    """Every report step, streamed; one without a streamed form is a clear error naming it."""
    by_name = {s.name: s for s in steps}
    metrics: dict[str, Any] = {}
    for report in reports:
        if report.name not in STREAMED_REPORTS:
            raise NotImplementedError(
                f"curate report {report.name!r} is not streamed; set execution.mode: memory"
            )
        report.setup(ctx)
        metrics.update(STREAMED_REPORTS[report.name](src, report, by_name[report.follows], ctx))
    return metrics


STREAMED_REPORTS = {"planted_qa": stream_planted}


def _key(seed: int, uid: str) -> bytes:
    return hashlib.sha256(f"{seed}:{uid}".encode()).digest()


def grid_block(
    block: int, src: PoolBlocks, scratch: Path, k: int, seed: int
) -> dict[str, list[tuple[bytes, str, str | None, str]]]:
    """Per group, this block's `k` rows with the lowest keys: (key, uid, shard, text)."""
    state = pq.read_table(_state_path(scratch, block), columns=["uid", REASON])
    rows = read_block(src, block)
    out: dict[str, list[tuple[bytes, str, str | None, str]]] = {}
    for uid, r, shard, text in zip(
        state.column("uid").to_pylist(),
        state.column(REASON).to_pylist(),
        rows.column("shard").to_pylist(),
        rows.column("text").to_pylist(),
        strict=True,
    ):
        group = "kept" if r == "kept" else f"dropped_{r.split(':')[0]}"
        out.setdefault(group, []).append((_key(seed, uid), uid, shard, text or ""))
    return {g: sorted(v)[:k] for g, v in out.items()}


def stream_grids(src: PoolBlocks, scratch: Path, p: Any) -> dict[str, list[tuple[bytes, str]]]:
    """The report's example grids: per group the pool's lowest-key rows, their images read
    from their crawl tars (a few per group)."""
    from tasks.curate.features import existing_shard
    from tasks.io.crawlshards import read_images  # any crawl layout
    from tasks.io.paths import resolve_path

    k = p.outputs.report_examples
    if k == 0:
        return {}
    best: dict[str, list[tuple[bytes, str, str | None, str]]] = {}
    args = (src, scratch, k, p.seed)
    for part in _blocks(grid_block, src.count, args, p.compute.cpus_per_worker):
        for g, items in part.items():
            best[g] = sorted([*best.get(g, []), *items])[:k]
    wanted = {uid for items in best.values() for _, uid, _, _ in items}
    found: dict[str, bytes] = {}
    for shard in {s for items in best.values() for _, _, s, _ in items}:
        path = existing_shard(resolve_path(p.paths.crawl_dir), shard)
        if path is not None:
            found.update({u: data for u, data, _ in read_images(path, wanted)})
    return {
        g: [(found[u], text) for _, u, _, text in items if u in found]
        for g, items in sorted(best.items())
    }


def rescued_block(
    block: int, src: PoolBlocks, scratch: Path, k: int, threshold: float
) -> list[tuple[str, str | None, str]]:
    """The block's `k` smallest uids kept by their synthetic caption (kept by clip_score with a
    raw score below the threshold): (uid, shard, "old -> new" caption)."""
    from tasks.curate.streamwrite import read_pool_block

    path = _state_path(scratch, block)
    if "curate_clip_score_keep" not in set(pq.read_schema(path).names):
        return []
    state = pq.read_table(
        path, columns=["uid", "curate_clip_score_keep", "curate_clip_score_score"]
    )
    rescued = [
        i
        for i, (kept, raw) in enumerate(
            zip(
                state.column("curate_clip_score_keep").to_pylist(),
                state.column("curate_clip_score_score").to_pylist(),
                strict=True,
            )
        )
        if kept and raw is not None and raw < threshold
    ]
    if not rescued:
        return []
    rows = read_pool_block(src, block, ["uid", "text", "shard", "recaption_long_positive"])
    chosen = sorted(rescued, key=lambda i: state.column("uid")[i].as_py())[:k]
    out = []
    for row in rows.take(pa.array(chosen, pa.int64())).to_pylist():
        synthetic = row.get("recaption_long_positive")
        out.append((row["uid"], row["shard"], f"{row['text'] or ''} -> {synthetic or ''}"))
    return out


def stream_synthetic_grid(
    src: PoolBlocks, scratch: Path, p: Any, threshold: float | None
) -> dict[str, list[tuple[bytes, str]]]:
    """As the in-memory `_synthetic_grid` (tasks/curate/stage.py): the smallest uids kept only
    by their synthetic caption, captioned "old -> new"; {} when none or caption is raw."""
    from tasks.curate.features import existing_shard
    from tasks.io.crawlshards import read_images  # any crawl layout
    from tasks.io.paths import resolve_path

    k = p.outputs.report_examples
    if threshold is None or k == 0 or p.clip_score.caption == "raw":
        return {}
    best: list[tuple[str, str | None, str]] = []
    args = (src, scratch, k, threshold)
    for part in _blocks(rescued_block, src.count, args, p.compute.cpus_per_worker):
        best = sorted([*best, *part])[:k]
    if not best:
        return {}
    wanted = {uid for uid, _, _ in best}
    found: dict[str, bytes] = {}
    for shard in {s for _, s, _ in best}:
        path = existing_shard(resolve_path(p.paths.crawl_dir), shard)
        if path is not None:
            found.update({u: data for u, data, _ in read_images(path, wanted)})
    return {"kept_by_synthetic_caption": [(found[u], c) for u, _, c in best if u in found]}
