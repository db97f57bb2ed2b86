"""Which pool rows are recaptioned, cut into blocks; where each block's output and completion
marker live; a block is done exactly when its marker exists (written after its parquet part).

A block's name is a digest of its uids, and the parts folder is named by a fingerprint of
everything that changes the output (backends, their sections, limits, seed, the teacher's files),
so a rerun with the same params skips every finished block (exact resume after SIGKILL) while
a run with other params starts a fresh folder instead of reusing stale rows.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.recaption.params import RecaptionParams

# Parquet schema of one block part (= the pool columns without their `recaption_` prefix).
PART_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string()),
        pa.field("long_positive", pa.string()),
        pa.field("long_negative", pa.string()),
        pa.field("short_positive", pa.list_(pa.string())),
        pa.field("short_negative", pa.list_(pa.string())),
        pa.field("sources", pa.string()),  # JSON: field -> "backend:model_version"
        pa.field("error", pa.string()),  # the row's reason(s); null = every backend succeeded
        pa.field("score_alt", pa.float32()),  # teacher CLIP score of the alt text
        pa.field("score_long_positive", pa.float32()),  # ... of the long positive
        pa.field("score_long_negative", pa.float32()),  # ... of the long negative
    ]
)


def select_rows(pool: Any, p: RecaptionParams) -> pa.Table:
    """uid, text, shard of the downloaded rows to recaption (`select` section), sorted by crawl
    shard then uid: a block then reads one or two shards instead of scanning every shard. Rows of
    `select.exclude_uids` are left out: decontaminate flagged them, and no model trains on them."""
    from tasks.io.uidlist import read_uid_list

    cols = ["uid", "text", "shard", "status", "width", "height"]
    t = pool.search().select(cols).limit(None).to_arrow()
    keep = pc.and_(pc.equal(t["status"], "success"), pc.is_valid(t["shard"]))
    if p.select.only_passing:
        side = pc.min_element_wise(t["width"], t["height"])
        words = pc.list_value_length(pc.utf8_split_whitespace(pc.fill_null(t["text"], "")))
        keep = pc.and_(keep, pc.greater_equal(pc.fill_null(side, 0), p.select.min_side))
        keep = pc.and_(keep, pc.greater_equal(words, p.select.min_words))
    excluded = read_uid_list(
        p.select.exclude_uids, "select.exclude_uids", "run the decontaminate stage first"
    )
    if excluded:
        keep = pc.and_(keep, pc.invert(pc.is_in(t["uid"], value_set=pa.array(sorted(excluded)))))
    rows = t.filter(pc.fill_null(keep, False)).select(["uid", "text", "shard"])
    rows = rows.sort_by([("shard", "ascending"), ("uid", "ascending")])
    if p.select.max_rows is not None:
        rows = rows.slice(0, p.select.max_rows)
    return rows


def plan_blocks(rows: pa.Table, rows_per_block: int) -> list[dict[str, Any]]:
    """Consecutive uid ranges of `rows_per_block` rows; `name` = digest of the block's uids."""
    blocks = []
    for start in range(0, rows.num_rows, rows_per_block):
        part = rows.slice(start, rows_per_block)
        uids = part["uid"].to_pylist()
        name = hashlib.sha256("\n".join(uids).encode()).hexdigest()[:16]
        blocks.append(
            {
                "name": f"block-{start // rows_per_block:06d}-{name}",
                "uid": uids,
                "text": [t or "" for t in part["text"].to_pylist()],
                "shard": part["shard"].to_pylist(),
            }
        )
    return blocks


def _teacher_files(ref: str | None) -> list[Any]:
    from tasks.io.paths import resolve_path

    if ref is None or ref.startswith("random:") or "://" in ref or ref.startswith("models:/"):
        return [ref]
    folder = resolve_path(ref)
    if not folder.is_dir():
        return [ref]
    return [
        (f.name, f.stat().st_size, f.stat().st_mtime_ns)
        for f in sorted(folder.iterdir())
        if f.is_file()
    ]


def fingerprint(p: RecaptionParams) -> str:
    """Digest of what changes a block's output; names the parts folder."""
    sections = {
        name: getattr(p, name).model_dump(mode="json") for name in p.backends if hasattr(p, name)
    }
    what = {
        "version": 1,
        "backends": p.backends,
        "sections": sections,
        "limits": p.limits.model_dump(mode="json"),
        "seed": p.seed,
        "wordnet": p.paths.wordnet,
        "teacher": _teacher_files(p.paths.teacher),
        "batch_size": p.compute.batch_size,  # batched generation may differ in the last bits
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def part_path(parts_dir: Path, block: str) -> Path:
    return parts_dir / f"{block}.parquet"
