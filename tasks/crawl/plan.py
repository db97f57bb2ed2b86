"""The input plan: every image to download, sorted by uid and cut into shards, saved once.

Saving the plan is what makes resume exact: a restarted crawl downloads the same shards with the
same rows instead of re-crawling a site whose discovery order may differ.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

from tasks.base import StageError
from tasks.crawl.records import ImageRef
from tasks.io import put_atomic
from tasks.settings import join_uri

PLAN_COLUMNS = ("uid", "key", "url", "caption", "texts", "page_url", "language", "source", "shard")


class PlanMismatchError(StageError):
    """The output folder holds a crawl of other inputs; refuse rather than mix two crawls."""


def plan_rows(refs: list[ImageRef], shard_size: int, max_images: int = 0) -> list[dict[str, Any]]:
    """Rows sorted by uid (deterministic, and spreads hosts across shards), with shard indices."""
    refs = sorted(refs, key=lambda r: r.uid)
    if max_images:
        refs = refs[:max_images]
    return [
        {
            "uid": r.uid,
            "key": r.uid,
            "url": r.url,
            "caption": r.text,
            "texts": list(r.texts),
            "page_url": r.page_url,
            "language": r.language,
            "source": r.source,
            "shard": i // shard_size,
        }
        for i, r in enumerate(refs)
    ]


def fingerprint(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_uri(output_dir: str, name: str) -> str:
    return join_uri(output_dir, "_plan", name)


def save_plan(output_dir: str, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """plan.parquet first, plan.json (the commit point) last."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows, schema=_schema()) if rows else _schema().empty_table()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put_atomic(plan_uri(output_dir, "plan.parquet"), buf.getvalue())
    put_atomic(plan_uri(output_dir, "plan.json"), json.dumps(meta, indent=2, default=str).encode())


REFUSED_COLUMNS = ("source", "input", "row", "url", "status", "error_message")


def save_refused(output_dir: str, rows: list[dict[str, Any]]) -> None:
    """`refused.parquet`: every input refused before fetching, with its reason (URLs redacted).

    Written with the plan, before its commit point; always present (possibly empty) so a reader
    never has to guess whether nothing was refused or nothing was written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(c, pa.int64() if c == "row" else pa.string()) for c in REFUSED_COLUMNS])
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    buf = io.BytesIO()
    pq.write_table(table, buf)
    put_atomic(join_uri(output_dir, "refused.parquet"), buf.getvalue())


def load_plan(output_dir: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(meta, rows) of a committed plan, None when there is none."""
    import fsspec
    import pyarrow.parquet as pq

    fs, path = fsspec.core.url_to_fs(plan_uri(output_dir, "plan.json"))
    if not fs.exists(path):
        return None
    meta = json.loads(fs.cat_file(path))
    with fsspec.open(plan_uri(output_dir, "plan.parquet"), "rb") as fh:
        rows = pq.read_table(fh).to_pylist()
    return meta, rows


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            (
                c,
                pa.list_(pa.string())
                if c == "texts"
                else pa.int64()
                if c == "shard"
                else pa.string(),
            )
            for c in PLAN_COLUMNS
        ]
    )


def by_shard(rows: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    shards: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        shards.setdefault(int(row["shard"]), []).append(row)
    return shards
