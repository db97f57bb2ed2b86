"""Read pool columns and add curate columns to the LanceDB pool: columns are added, rows never deleted."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

PREFIX = "curate_"


def open_pool_table(uri: str | None) -> Any:
    """The crawl stage's pool table (tasks.pool); a clear error when crawl has not run."""
    from tasks.pool import open_pool

    return open_pool(uri)


def read_columns(table: Any, columns: list[str]) -> pa.Table:
    """Selected columns of every row; columns the pool lacks come back as nulls (typed string)."""
    have = set(table.schema.names)
    present = [c for c in columns if c in have]
    data = table.search().select(present).limit(None).to_arrow() if present else None
    n = table.count_rows()
    out = {}
    for c in columns:
        out[c] = data.column(c) if data is not None and c in have else pa.nulls(n, pa.string())
    return pa.table(out)


def write_columns(table: Any, data: pa.Table, key: str = "uid") -> None:
    """Add any new columns (null everywhere), then fill them for the given rows by `uid`.

    A merge on the key updates only the columns present in `data`, so other stages' columns
    and rows not listed stay as they are.
    """
    if data.num_rows == 0:
        return
    have = set(table.schema.names)
    new = [f for f in data.schema if f.name != key and f.name not in have]
    if new:
        table.add_columns(new)
    existing = table.schema
    cast_fields = [
        existing.field(n) if n in existing.names else data.schema.field(n)
        for n in data.schema.names
    ]
    data = data.cast(pa.schema(cast_fields))
    # Rows without an embedding keep a null vector (LanceDB would otherwise call it a bad vector).
    table.merge_insert(key).when_matched_update_all().execute(data, on_bad_vectors="null")


def clear_columns(table: Any, names: list[str]) -> None:
    """Reset this stage's decision columns to null before a rerun, so no stale decision survives."""
    have = set(table.schema.names)
    stale = [n for n in names if n in have]
    if stale:
        table.drop_columns(stale)
