"""The LanceDB `pool` table: one row per crawled sample, enriched in place by later stages.

Crawl creates rows; curate, recaption and evaluate ADD columns (scores, flags, reasons) and never
delete rows, so every decision stays inspectable and re-runnable.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from tasks.settings import get_settings

POOL_TABLE = "pool"

# Columns written by the crawl stage; later stages add their own (prefixed by stage name).
POOL_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),  # sha224(url)[:24], MetaCLIP's id
        pa.field("url", pa.string()),  # absolute image URL
        pa.field("text", pa.string()),  # the caption used by default (alt, else title)
        pa.field(
            "texts", pa.list_(pa.string())
        ),  # every candidate text: alt, title, data-image-title
        pa.field("page_url", pa.string()),  # page the image was found on
        pa.field("language", pa.string()),  # ISO 639-1 code from the language-ID model
        pa.field("sha256", pa.string()),  # of the original downloaded bytes
        pa.field("width", pa.int32()),  # final (resized) size
        pa.field("height", pa.int32()),
        pa.field("original_width", pa.int32()),
        pa.field("original_height", pa.int32()),
        pa.field(
            "shard", pa.string()
        ),  # shard file (relative to the crawl output) holding the image
        pa.field("status", pa.string()),  # "success" or the error class
        pa.field("error", pa.string()),  # error detail when status != success
    ]
)


def connect(uri: str | None = None) -> Any:
    """The LanceDB at `uri` (default: the settings'). An S3-compatible server on plain http
    (MinIO, moto: AWS_ENDPOINT_URL=http://...) needs `allow_http`, which LanceDB's object store
    refuses by default but boto3 and s3fs do not: set here so one endpoint variable serves all."""
    import os

    import lancedb

    uri = uri or get_settings().lance_uri
    options: dict[str, str] = {}
    if uri.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["allow_http"] = "true"
    return lancedb.connect(uri, storage_options=options or None)


def open_pool(uri: str | None = None, create: bool = False) -> Any:
    """The pool table; with create=True an empty one is made when missing."""
    db = connect(uri)
    if POOL_TABLE in db.table_names():
        return db.open_table(POOL_TABLE)
    if not create:
        raise FileNotFoundError(
            f"no '{POOL_TABLE}' table in LanceDB at {uri or get_settings().lance_uri}: run the crawl stage first"
        )
    return db.create_table(POOL_TABLE, schema=POOL_SCHEMA)


def upsert_rows(table: Any, rows: pa.Table) -> None:
    """Insert or replace rows by uid, so re-running a shard never duplicates a sample."""
    (
        table.merge_insert("uid")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute(rows)
    )
