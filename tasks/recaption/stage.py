"""The `recaption` stage: pool rows -> blocks -> Ray Data actor pool (each actor runs the backend
chain and the teacher, writes each block's part + completion marker) -> pool columns, summary,
report.

Pool columns written (docs/CONTRACTS.md): `recaption_long_positive`, `recaption_long_negative`,
`recaption_short_positive`, `recaption_short_negative` (HQ-CLIP's four fields),
`recaption_sources` (JSON: field -> "backend:model_version"), `recaption_error` (the row's
reason, null when every backend succeeded), `recaption_score_alt`,
`recaption_score_long_positive`, `recaption_score_long_negative` (teacher CLIP scores). Rows not
selected get nulls (the columns are rewritten whole on every run).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from tasks.io.paths import resolve_path
from tasks.recaption.params import RecaptionParams

POOL_PREFIX = "recaption_"


def _pending(blocks: list[dict[str, Any]], parts_dir: Path) -> list[dict[str, Any]]:
    from tasks.io.atomic import is_done
    from tasks.recaption.blocks import part_path

    return [b for b in blocks if not is_done(str(part_path(parts_dir, b["name"])))]


def _run_pool(
    p: RecaptionParams, blocks: list[dict[str, Any]], parts_dir: Path
) -> list[dict[str, Any]]:
    """The blocks through the actor pool; one result row per block (rows, errors, seconds)."""
    import ray

    from tasks.io.nodefetch import this_node
    from tasks.recaption.actor import RecaptionActor

    c = p.compute
    ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
    out = ds.map_batches(
        RecaptionActor,
        fn_constructor_kwargs={
            "params": p,
            "parts_dir": str(parts_dir),
            "crawl_dir": str(resolve_path(p.paths.crawl_dir)),
            "driver_node": this_node(),
        },
        batch_size=1,  # one block per call: its part and marker are written before the next
        compute=ray.data.ActorPoolStrategy(min_size=c.min_actors, max_size=c.max_actors),
        num_cpus=c.cpus_per_actor,
        num_gpus=c.gpus_per_actor or None,
    )
    return [
        {
            "name": str(r["name"]),
            "rows": int(r["rows"]),
            "errors": int(r["errors"]),
            "seconds": float(r["seconds"]),
            "cpu_seconds": float(r["cpu_seconds"]),
        }
        for r in out.iter_rows()
    ]


def read_parts(blocks: list[dict[str, Any]], parts_dir: Path) -> pa.Table:
    """Every block's part, in block (= uid) order."""
    import pyarrow.parquet as pq

    from tasks.io.atomic import done_marker
    from tasks.io.nodefetch import ensure_local
    from tasks.recaption.blocks import PART_SCHEMA, part_path

    tables = []
    for b in blocks:
        path = part_path(parts_dir, b["name"])
        ensure_local(path)  # written by an actor on another node: from the bucket data root
        ensure_local(done_marker(str(path)))
        tables.append(pq.read_table(path))
    return pa.concat_tables(tables).cast(PART_SCHEMA) if tables else PART_SCHEMA.empty_table()


def write_pool(pool: Any, table: pa.Table) -> None:
    """Replace the stage's pool columns: drop the old ones, add and fill the new ones by uid."""
    stale = [n for n in pool.schema.names if n.startswith(POOL_PREFIX)]
    if stale:
        pool.drop_columns(stale)
    data = table.rename_columns(["uid", *[POOL_PREFIX + n for n in table.column_names[1:]]])
    if data.num_rows == 0:
        return
    pool.add_columns([f for f in data.schema if f.name != "uid"])
    pool.merge_insert("uid").when_matched_update_all().execute(data, on_bad_vectors="null")


def _clean_stale(parts_root: Path, keep: Path) -> None:
    """Parts folders of other fingerprints are stale: removed once this run's parts are complete."""
    import shutil

    for other in parts_root.iterdir() if parts_root.exists() else []:
        if other.is_dir() and other != keep:
            shutil.rmtree(other, ignore_errors=True)


def run(p: RecaptionParams) -> dict[str, Any]:
    from tasks.io.atomic import atomic_write_json, sweep_temp
    from tasks.pool import open_pool
    from tasks.recaption.blocks import fingerprint, plan_blocks, select_rows
    from tasks.recaption.preflight import preflight
    from tasks.recaption.report import summarise, write_report

    preflight(p)
    pool = open_pool()  # the pool named by the settings (CLIPMILL_LANCEDB_URI), as crawl wrote it
    rows = select_rows(pool, p)
    blocks = plan_blocks(rows, p.compute.rows_per_block)
    out_dir = resolve_path(p.paths.out_dir)
    parts_dir = out_dir / "parts" / fingerprint(p)
    parts_dir.mkdir(parents=True, exist_ok=True)
    sweep_temp(out_dir)  # parts a killed run left half-written (never renamed in)
    todo = _pending(blocks, parts_dir)
    start = time.perf_counter()
    done = _run_pool(p, todo, parts_dir) if todo else []
    seconds = time.perf_counter() - start
    table = read_parts(blocks, parts_dir)
    write_pool(pool, table)
    _clean_stale(out_dir / "parts", parts_dir)
    metrics = summarise(table, rows, done, seconds, len(blocks) - len(todo))
    metrics["fingerprint"] = parts_dir.name
    atomic_write_json(out_dir / "summary.json", metrics)
    write_report(table, rows, p, out_dir / "report")
    return metrics


def reasons(errors: list[str | None]) -> Counter[str]:
    """Failure counts by reason kind (the text before the first ':' of each ';'-joined reason)."""
    out: Counter[str] = Counter()
    for e in errors:
        for part in (e or "").split("; "):
            if part:
                head = part.split(":")[0].strip()
                if head in ("openai", "hf", "tagger", "composer", "coca"):
                    head = ":".join(x.strip() for x in part.split(":")[:2])
                out[head] += 1
    return out
