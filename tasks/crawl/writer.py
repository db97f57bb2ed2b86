"""Write one shard in one of img2dataset's layouts (output.output_format), then its marker.

- webdataset: NNNNN.tar (uid.<ext>, uid.txt, uid.json per success) + NNNNN.parquet (every URL);
- files: a folder NNNNN/ holding uid.<ext>, uid.txt, uid.json per success + NNNNN.parquet;
- parquet: NNNNN.parquet alone, every URL with its image bytes in a column named <ext>.
NNNNN_stats.json beside in every layout. Each file is written atomically and the shard's `.done`
marker comes last, so a shard is either complete or redone from scratch: a Ray task rerun after
its worker died rewrites the same content (a killed attempt's leftovers are removed first), and
rewriting a shard (retry_failed) replaces it as a whole. The done marker carries the sha256 of
the shard parquet: the pool's record of synced shards is checked against it without reading the
parquet again (tasks/crawl/poolsync.py).

Extra input columns (inputs.save_additional_columns, carried as plan row["extra"], a JSON dict)
become parquet columns after ours and keys of each sample's .json, as in img2dataset; a key that
names one of our columns is left out (ours win: status, uid... must stay what they mean).
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
from tasks.io.wds import TarWriter, iter_members, json_bytes
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
FORMATS = ("webdataset", "files", "parquet")  # output.output_format values


def extra_of(row: dict[str, Any]) -> dict[str, Any]:
    """The extra input columns of a row (its `extra` JSON dict, "" = none), ours left out."""
    raw = row.get("extra") or ""
    if not raw:
        return {}
    extra = json.loads(raw) if isinstance(raw, str) else dict(raw)
    return {k: v for k, v in extra.items() if k not in PARQUET_COLUMNS and k != "extra"}


def shard_name(index: int) -> str:
    return f"{index:05d}"


def shard_uri(output_dir: str, index: int) -> str:
    return join_uri(output_dir, "shards", shard_name(index))


def shard_path(index: int, fmt: str = "webdataset") -> str:
    """Where a shard's samples are, relative to the output folder (the pool's `shard` column)."""
    suffix = {"webdataset": ".tar", "files": "", "parquet": ".parquet"}[fmt]
    return f"shards/{shard_name(index)}{suffix}"


def sample_meta(row: dict[str, Any]) -> dict[str, Any]:
    """The per-sample JSON beside the image (img2dataset's keys plus our texts and page, then
    the extra input columns)."""
    meta = {k: row.get(k) for k in PARQUET_COLUMNS if k not in ("seconds", "fetch_url")}
    return {**meta, **extra_of(row)}


def sample_parts(row: dict[str, Any], ext: str) -> dict[str, Any]:
    """The files of one successful sample: image, caption, metadata (img2dataset's three)."""
    return {ext: row["image"], "txt": row.get("caption") or "", "json": sample_meta(row)}


def build_tar(rows: list[dict[str, Any]], ext: str) -> bytes:
    """webdataset tar of the successes: uid.<ext>, uid.txt, uid.json, in row order.

    Written by the shared fast writer (tasks.io.wds.TarWriter: tarfile's bytes, a third of
    TarFile's cost); tests/crawl/test_writer.py compares the bytes with tarfile's.
    """
    writer = TarWriter()
    for row in rows:
        if row["status"] != SUCCESS or row.get("image") is None:
            continue
        writer.add_sample(row["uid"], sample_parts(row, ext))
    return writer.getvalue()


def _extra_columns(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Extra input columns as arrow arrays (types inferred; mixed types stored as JSON text)."""
    import pyarrow as pa

    extras = [extra_of(r) for r in rows]
    names = list(dict.fromkeys(k for e in extras for k in e))
    out: dict[str, Any] = {}
    for name in names:
        values = [e.get(name) for e in extras]
        try:
            out[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            out[name] = pa.array([None if v is None else json.dumps(v) for v in values])
    return out


def build_parquet(rows: list[dict[str, Any]], image_ext: str | None = None) -> bytes:
    """Every input URL of the shard with its status, then the extra input columns; with
    `image_ext` (output_format parquet) the image bytes too, in a column named so (null when
    the download failed), as img2dataset's parquet writer does."""
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
    arrays = {c: pa.array(v, type=types.get(c, pa.string())) for c, v in cols.items()}
    arrays.update({k: v for k, v in _extra_columns(rows).items() if k != image_ext})
    if image_ext is not None:
        images = [r.get("image") if r["status"] == SUCCESS else None for r in rows]
        arrays[image_ext] = pa.array(images, type=pa.binary())
    table = pa.table(arrays)
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
                    fs.rm(p, recursive=True)  # a files/ folder too
        reason = exc.strerror or str(exc)
        raise OutputWriteError(
            f"cannot write {path}: {reason} (errno {exc.errno}); the shards finished before "
            "are kept: free space (or fix the folder) and run again to resume"
        ) from exc


def _as_bytes(value: Any) -> bytes:
    """A sample part as file content: bytes as is, text as UTF-8, metadata as JSON."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    return json_bytes(value)


def clear_attempt(output_dir: str, index: int) -> int:
    """Remove what an earlier attempt at a shard that is not done left: its temporary files
    (`.NNNNN.*.tmp` locally, `NNNNN*.<uuid>.tmp` on object stores) and any of its files written
    before the kill (a tar without its marker, a half-filled files/ folder). A Ray task rerun
    after its worker died starts from here, so the shard is rewritten whole, never added to.
    Returns how many paths were removed."""
    import fsspec

    base = shard_uri(output_dir, index)
    fs, path = fsspec.core.url_to_fs(base)
    folder, name = path.rsplit("/", 1)
    if not fs.exists(folder):
        return 0
    # `NNNNN.` / `NNNNN_` exactly: shard 10000's pattern must not match shard 100000's files
    stale = [
        f
        for pre in (".", "")
        for sep in (".", "_")
        for f in fs.glob(f"{folder}/{pre}{name}{sep}*.tmp")
    ]
    stale += [f"{path}{suffix}" for suffix in (".tar", ".parquet", "_stats.json", "")]
    stale = [f for f in stale if fs.exists(f)]
    for f in stale:
        fs.rm(f, recursive=True)
    return len(stale)


def write_shard(
    output_dir: str,
    index: int,
    rows: list[dict[str, Any]],
    ext: str,
    started: float,
    fmt: str = "webdataset",
) -> dict[str, Any]:
    """Write the samples (tar, files folder or image column), parquet and stats atomically, then
    the done marker; return the stats, with `parquet_sha256` (the pool's key for this content).

    A shard not done before is cleared first (clear_attempt): a rerun writes the same content,
    never beside a killed attempt's. A write that fails (a full disk) removes what this call
    wrote of such a shard and raises OutputWriteError; a rewrite of a done shard
    (retry_failed) keeps its files, whose done marker still describes a complete shard.
    """
    import hashlib

    if fmt not in FORMATS:
        raise ValueError(f"output.output_format: {fmt!r} is not one of {', '.join(FORMATS)}")
    base = shard_uri(output_dir, index)
    files = (f"{base}.tar", f"{base}.parquet", f"{base}_stats.json", base)
    done_before = is_done(base)
    cleanup = () if done_before else files
    if not done_before:
        with writing(base, cleanup):
            clear_attempt(output_dir, index)
    written = 0
    if fmt == "webdataset":
        tar = build_tar(rows, ext)
        written = len(tar)
        with writing(files[0], cleanup):
            put_atomic(files[0], tar)
    elif fmt == "files":
        for row in rows:
            if row["status"] != SUCCESS or row.get("image") is None:
                continue
            for part, value in sample_parts(row, ext).items():
                data = _as_bytes(value)
                uri = join_uri(base, f"{row['uid']}.{part}")
                with writing(uri, cleanup):
                    put_atomic(uri, data)
                written += len(data)
    parquet = build_parquet(rows, ext if fmt == "parquet" else None)
    if fmt == "parquet":
        written = len(parquet)
    with writing(files[1], cleanup):
        put_atomic(files[1], parquet)
    stats = shard_stats(rows, started, time.time(), written)
    with writing(files[2], cleanup):
        put_atomic(files[2], json.dumps(stats, indent=2).encode())
    key = hashlib.sha256(parquet).hexdigest()
    info = {"count": stats["count"], "successes": stats["successes"], "parquet_sha256": key}
    with writing(f"{base}.done", cleanup):
        mark_done(base, info)
    return {**stats, "parquet_sha256": key}


def read_marker(output_dir: str, index: int) -> dict[str, Any]:
    """The done marker's info ({} when unreadable or empty: a shard written before it held any)."""
    import fsspec

    from tasks.io import done_marker

    try:
        with fsspec.open(done_marker(shard_uri(output_dir, index)), "rb") as fh:
            info = json.loads(fh.read() or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def read_shard(
    output_dir: str, index: int, ext: str = "jpg", fmt: str = "webdataset"
) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """(parquet rows, images by `uid.<ext>`) of a written shard, for retry_failed merges.

    The extra input columns go back into each row's `extra` JSON (nulls left out: a row
    without the column), so a rewrite keeps them.
    """
    import fsspec
    import pyarrow.parquet as pq

    base = shard_uri(output_dir, index)
    with fsspec.open(f"{base}.parquet", "rb") as fh:
        rows = pq.read_table(fh).to_pylist()
    members: dict[str, bytes] = {}
    if fmt == "webdataset":
        with fsspec.open(f"{base}.tar", "rb") as fh:
            data = fh.read()
        members = dict(iter_members(data, name=f"{base}.tar"))
    out = []
    for row in rows:
        image = row.pop(ext, None) if fmt == "parquet" else None
        extra = {k: row.pop(k) for k in list(row) if k not in PARQUET_COLUMNS}
        extra = {k: v for k, v in extra.items() if v is not None}  # null = the row had none
        row["extra"] = json.dumps(extra) if extra else ""
        name = f"{row['uid']}.{ext}"
        if fmt == "parquet" and image is not None:
            members[name] = image
        elif fmt == "files" and row["status"] == SUCCESS:
            with fsspec.open(join_uri(base, name), "rb") as fh:
                members[name] = fh.read()
        out.append(row)
    return out, members
