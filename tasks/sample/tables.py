"""Parquet tables the stage writes, with fixed schemas (stable bytes, typed empty columns)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.sample.heldout import EvalRecord
from tasks.sample.planted import Planted


def _schema(**fields: pa.DataType) -> pa.Schema:
    return pa.schema(list(fields.items()))


STR, STRS = pa.string(), pa.list_(pa.string())
SITE_IMAGES = _schema(
    page=STR, src=STR, path=STR, alt=STR, title=STR, source=STR, item_id=STR, lang=STR, kind=STR
)
PLANTED = _schema(
    site_path=STR,
    eval_set=STR,
    eval_key=STR,
    transformation=STR,
    source=STR,
    item_id=STR,
    other_eval_keys=STRS,
    alt=STR,
    sha256=STR,
)
EVAL_ITEMS = _schema(
    eval_set=STR,
    key=STR,
    source=STR,
    item_id=STR,
    label=pa.int64(),
    classname=STR,
    captions=STRS,
    image_sha256=STR,
)


def _write(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def write_site_images(rows: list[dict], path: Path) -> list[dict]:
    """metadata/site_images.parquet: one row per <img> on the site (ground truth for the crawl)."""
    rows = sorted(rows, key=lambda r: (r["page"], r["src"], r["kind"], r["alt"] or ""))
    _write(rows, SITE_IMAGES, path)
    return rows


def write_planted(planted: list[Planted], path: Path) -> None:
    """eval/planted_near_duplicates.parquet: which eval image went where, transformed how."""
    _write(
        sorted((p.row() for p in planted), key=lambda r: (r["eval_set"], r["eval_key"])),
        PLANTED,
        path,
    )


def write_eval_items(sets: dict[str, list[EvalRecord]], path: Path) -> None:
    """eval/items.parquet: every eval sample with its origin and image hash."""
    _write([r.row() for name in sorted(sets) for r in sets[name]], EVAL_ITEMS, path)
