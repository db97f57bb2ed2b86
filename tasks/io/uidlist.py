"""Lists of pool uids that stages must leave out, read the one way every stage reads them.

The decontaminate stage writes `flagged_uids.parquet` (a `uid` column); every model's training
(`exclude_uids`) and the recaption stage's row selection (`select.exclude_uids`) read it. A list
named in the params but missing or unreadable is an error naming the params field and the file:
going on without it would train on (or spend captioning time on) the eval copies it names.
"""

from __future__ import annotations


class UidListError(ValueError):
    """A uid list named in the params cannot be read."""


def read_uid_list(spec: str | None, field: str, missing_hint: str = "") -> frozenset[str]:
    """The `uid` column of the parquet file `spec` (relative paths under the settings' root);
    empty for None. `field` names the params field in errors, `missing_hint` says what makes
    the file when it is missing."""
    if spec is None:
        return frozenset()
    import pyarrow.parquet as pq

    from tasks.io.nodefetch import ensure_local
    from tasks.io.paths import resolve_path

    path = resolve_path(spec)
    ensure_local(path)  # a bucket data root: fetched where this node lacks it
    if not path.is_file():
        hint = f"; {missing_hint}" if missing_hint else ""
        raise UidListError(f"{field} {spec!r}: file not found ({path}){hint}")
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise UidListError(f"{field} {spec!r}: not a parquet file ({exc})") from None
    if "uid" not in schema.names:
        raise UidListError(f"{field} {spec!r}: no `uid` column (columns: {schema.names})")
    uids = pq.read_table(path, columns=["uid"]).column("uid").to_pylist()
    return frozenset(str(u) for u in uids if u is not None)
