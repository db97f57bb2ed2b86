"""Write one shard in img2dataset's layout: NNNNN.tar (webdataset), NNNNN.parquet, NNNNN_stats.json.

Each file is written atomically and the shard's `.done` marker comes last, so a shard is either
complete or redone from scratch; rewriting a shard (retry_failed) replaces it as a whole.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from tasks.base import StageError
from tasks.crawl.errors import SUCCESS
from tasks.io import is_done, mark_done, put_atomic
from tasks.io.wds import TarWriter, iter_members
from tasks.settings import join_uri

RESIZE_FAILURES = frozenset(
    {
        "decode_error",
        "decompression_bomb",
        "not_an_image",
        "image_too_small",
        "image_too_large",
        "aspect_ratio",
    }
)
PARQUET_COLUMNS = (  # img2dataset's names first, then ours
    "key",
    "url",
    "caption",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "sha256",
    "uid",
    "texts",
    "page_url",
    "language",
    "source",
    "fetch_url",
    "bytes",
    "seconds",
)
_INT_COLUMNS = ("width", "height", "original_width", "original_height", "bytes")


def shard_name(index: int) -> str:
    return f"{index:05d}"


def shard_uri(output_dir: str, index: int) -> str:
    return join_uri(output_dir, "shards", shard_name(index))


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    """The per-sample JSON beside the image (img2dataset's keys plus our texts and page)."""
    return {k: row.get(k) for k in PARQUET_COLUMNS if k not in ("seconds", "fetch_url")}


def build_tar(rows: list[dict[str, Any]], ext: str) -> bytes:
    """webdataset tar of the successes: uid.<ext>, uid.txt, uid.json, in row order.

    Written by the shared fast writer (tasks.io.wds.TarWriter: tarfile's bytes, a third of
    TarFile's cost); tests/crawl/test_writer.py compares the bytes with tarfile's.
    """
    writer = TarWriter()
    for row in rows:
        if row["status"] != SUCCESS or row.get("image") is None:
            continue
        writer.add_sample(
            row["uid"],
            {ext: row["image"], "txt": row.get("caption") or "", "json": sample_meta(row)},
        )
    return writer.getvalue()


def build_parquet(rows: list[dict[str, Any]]) -> bytes:
    """Every input URL of the shard with its status, without image bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {c: [] for c in PARQUET_COLUMNS}
    for row in rows:
        for c in PARQUET_COLUMNS:
            value = row.get(c)
            if c in _INT_COLUMNS:
                value = int(value) if value is not None else None
            cols[c].append(value)
    types = {c: pa.int64() for c in _INT_COLUMNS} | {
        "texts": pa.list_(pa.string()),
        "seconds": pa.float64(),
    }
    table = pa.table({c: pa.array(v, type=types.get(c, pa.string())) for c, v in cols.items()})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def shard_stats(
    rows: list[dict[str, Any]], started: float, ended: float, tar_bytes: int
) -> dict[str, Any]:
    """img2dataset's _stats.json fields plus bytes and timing."""
    status = Counter(r["status"] for r in rows)
    ok = status.get(SUCCESS, 0)
    resize_failed = sum(n for s, n in status.items() if s in RESIZE_FAILURES)
    return {
        "count": len(rows),
        "successes": ok,
        "failed_to_download": len(rows) - ok - resize_failed,
        "failed_to_resize": resize_failed,
        "duration": round(ended - started, 3),
        "start_time": started,
        "end_time": ended,
        "status_dict": dict(sorted(status.items())),
        "bytes_downloaded": int(sum(r.get("bytes") or 0 for r in rows)),
        "bytes_written": tar_bytes,
        "fetch_seconds_total": round(sum(r.get("seconds") or 0.0 for r in rows), 3),
    }


class OutputWriteError(StageError):
    """The output folder refused a write (full disk, quota, read-only): names the file.

    A StageError, so the command line prints it as one line; it pickles as a plain exception,
    so it crosses from a Ray shard task to the driver unchanged."""


@contextlib.contextmanager
def writing(path: str, cleanup: tuple[str, ...] = ()) -> Iterator[None]:
    """Turn an OSError while writing `path` into an OutputWriteError naming it, after removing
    `cleanup` (the files of a shard begun here), so that no tar is left without its parquet
    and done marker; the atomic writes already removed their own temporary file."""
    try:
        yield
    except OSError as exc:
        import fsspec

        for uri in cleanup:
            with contextlib.suppress(OSError):
                fs, p = fsspec.core.url_to_fs(uri)
                if fs.exists(p):
                    fs.rm(p)
        reason = exc.strerror or str(exc)
        raise OutputWriteError(
            f"cannot write {path}: {reason} (errno {exc.errno}); the shards finished before "
            "are kept: free space (or fix the folder) and run again to resume"
        ) from exc


def write_shard(
    output_dir: str, index: int, rows: list[dict[str, Any]], ext: str, started: float
) -> dict[str, Any]:
    """Write tar, parquet and stats atomically, then the done marker; return the stats.

    A write that fails (a full disk) removes what this call wrote of a shard that was not done
    before, and raises OutputWriteError; a rewrite of a done shard (retry_failed) keeps its
    files, whose done marker still describes a complete shard.
    """
    base = shard_uri(output_dir, index)
    files = (f"{base}.tar", f"{base}.parquet", f"{base}_stats.json")
    cleanup = () if is_done(base) else files
    tar = build_tar(rows, ext)
    with writing(files[0], cleanup):
        put_atomic(files[0], tar)
    with writing(files[1], cleanup):
        put_atomic(files[1], build_parquet(rows))
    stats = shard_stats(rows, started, time.time(), len(tar))
    with writing(files[2], cleanup):
        put_atomic(files[2], json.dumps(stats, indent=2).encode())
    with writing(f"{base}.done", cleanup):
        mark_done(base, {"count": stats["count"], "successes": stats["successes"]})
    return stats


def read_shard(output_dir: str, index: int) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """(parquet rows, tar members by name) of a written shard, for retry_failed merges."""
    import fsspec
    import pyarrow.parquet as pq

    base = shard_uri(output_dir, index)
    with fsspec.open(f"{base}.parquet", "rb") as fh:
        rows = pq.read_table(fh).to_pylist()
    with fsspec.open(f"{base}.tar", "rb") as fh:
        data = fh.read()
    return rows, dict(iter_members(data, name=f"{base}.tar"))
