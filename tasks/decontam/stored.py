"""Hashes the decontaminate stage stores so that curate need not compute them again.

Two files under the stage's output folder (docs/CONTRACTS.md):
- `eval_hashes.parquet`: every eval view (whole + crops) hashed. Making the views (the crawl's
  resize + JPEG encode of every eval image and of 18 crops each) is the expensive part, so the
  file carries a fingerprint of what the views depend on (`views_fingerprint`: the view's mode,
  resize settings and crops, and the bytes of every eval tar) in its parquet metadata; a reader
  gets the table only when the fingerprint is the one it would compute, else None (stale or
  absent: it hashes the views itself).
- `crawl_hashes.parquet`: sha256, pHash and dHash of every crawl image checked. Reuse is by
  content: a reader hashes an image's bytes with sha256 (cheap) and takes the stored pHash / dHash
  of that digest (`known_hashes`), so a stale file can only miss, never give a wrong hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

if TYPE_CHECKING:
    from tasks.decontam.views import EvalView

EVAL_HASHES_FILE = "eval_hashes.parquet"
CRAWL_HASHES_FILE = "crawl_hashes.parquet"
FINGERPRINT_KEY = b"clipmill.views_fingerprint"  # parquet metadata key of eval_hashes.parquet
EVAL_COLUMNS = ["id", "variant", "image_sha256", "phash", "dhash", "image_reason"]
CRAWL_COLUMNS = ["uid", "image_sha256", "phash", "dhash", "image_reason"]


def views_fingerprint(eval_dir: Path, view: EvalView) -> str:
    """sha256 over what the hashed eval views depend on: the view (mode, the resize settings a
    crawl view uses, crops) and, per eval tar of a `test` split, its path under `eval_dir` and
    the sha256 of its bytes (the eval sets are tens of MB: a fraction of a second)."""
    from tasks.decontam.views import eval_shards

    digest = hashlib.sha256()
    described = {
        "mode": view.mode,
        "resize": view.resize.model_dump(mode="json") if view.mode == "crawl" else None,
        "crops": list(view.crops),
    }
    digest.update(json.dumps(described, sort_keys=True).encode())
    for tar in sorted(eval_shards(eval_dir)):
        digest.update(str(tar.relative_to(eval_dir)).encode() + b"\0")
        with open(tar, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def write_table(table: pa.Table, path: Path, fingerprint: str | None = None) -> None:
    """Parquet written whole or not at all (a temporary file, then a rename); `fingerprint`
    goes into the schema metadata."""
    import pyarrow.parquet as pq

    if fingerprint is not None:
        meta = dict(table.schema.metadata or {})
        meta[FINGERPRINT_KEY] = fingerprint.encode()
        table = table.replace_schema_metadata(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_eval_hashes(path: Path, fingerprint: str) -> tuple[pa.Table | None, str]:
    """(the stored eval view hashes, why) when `path` was written for `fingerprint`; (None, why
    not) when it is missing, unreadable, lacks a column or was made from other views."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None, f"{path} does not exist"
    try:
        table = pq.read_table(path)
    except Exception as exc:
        return None, f"{path} is unreadable ({exc})"
    stored = (table.schema.metadata or {}).get(FINGERPRINT_KEY, b"").decode()
    if stored != fingerprint:
        return None, f"{path} was hashed from other eval sets or another view"
    missing = [c for c in EVAL_COLUMNS if c not in table.column_names]
    if missing:
        return None, f"{path} lacks the columns {missing}"
    return table.select(EVAL_COLUMNS).replace_schema_metadata(None), f"reused {path}"


def known_hashes(path: Path | None) -> dict[str, tuple[str, str]]:
    """image sha256 -> (pHash, dHash) of every image `path` (a crawl_hashes.parquet) hashed
    cleanly; {} when there is no such file (nothing to reuse is no error: hashing costs time)."""
    import pyarrow.parquet as pq

    if path is None or not path.is_file():
        return {}
    try:
        table = pq.read_table(path, columns=["image_sha256", "phash", "dhash", "image_reason"])
    except Exception:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for sha, ph, dh, why in zip(
        *(table.column(c).to_pylist() for c in ("image_sha256", "phash", "dhash", "image_reason")),
        strict=True,
    ):
        if sha and ph and dh and why is None:
            out[sha] = (ph, dh)
    return out
