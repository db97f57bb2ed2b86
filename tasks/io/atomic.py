"""Atomic writes and completion markers, over local paths and fsspec URIs alike."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec


def _umask() -> int:
    """The process umask (read by setting and restoring it: the only portable way)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary sibling then rename, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; outputs get the mode a plain open() would give them.
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8 text, written atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Indented, key-sorted JSON (stable diffs), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def put_atomic(uri: str, data: bytes) -> None:
    """Atomic-enough write to any fsspec URI: local files are renamed, object stores are atomic per put."""
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.protocol in ("file", ("file", "local")) or "file" in fs.protocol:
        atomic_write_bytes(path, data)
        return
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    fs.pipe_file(tmp, data)
    fs.mv(tmp, path)


def done_marker(uri: str) -> str:
    """The `.done` file beside an output: written last, so its presence means complete."""
    return f"{uri.rstrip('/')}.done"


def is_done(uri: str) -> bool:
    """Whether an output was completed (a rerun skips it)."""
    fs, path = fsspec.core.url_to_fs(done_marker(uri))
    return fs.exists(path)


def mark_done(uri: str, info: dict[str, Any] | None = None) -> None:
    """Write the completion marker (with a little info) after the output itself."""
    put_atomic(done_marker(uri), json.dumps(info or {}, default=str).encode())


def sweep_temp(folder: str | Path, patterns: tuple[str, ...] = ("*.tmp", ".*.tmp_*")) -> int:
    """Remove what writes cut short by a kill left under a local `folder` (recursively): the
    temporary files of `atomic_write_bytes` (`*.tmp`) and the temporary folders of the
    write-then-rename model and checkpoint writers (`.<name>.tmp_*`). A stage calls it before it
    writes, so a rerun after SIGKILL neither trips over them nor hands them to DVC. Only one run
    writes an output at a time (the stages' contract), so nothing live is removed. Returns how
    many were removed."""
    import shutil

    root = Path(folder)
    if not root.is_dir():
        return 0
    stale = {p for pattern in patterns for p in root.rglob(pattern)}
    for path in sorted(stale, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(stale)


@contextmanager
def atomic_dir(final: Path, prefix: str | None = None) -> Iterator[Path]:
    """A temporary folder beside `final` that replaces it whole when the block ends.

    The block fills the yielded folder; on success any old `final` is removed and the folder
    renamed into place; on any exit by exception (SIGTERM turned into SystemExit included) the
    temporary folder is deleted, so a reader never sees half a model or checkpoint.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix or f".{final.name}.tmp_"))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
