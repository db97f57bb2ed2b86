"""A file of the bucket data root's cache folder, fetched on the node that reads it.

With `CLIPMILL_DATA_ROOT=s3://...` the runner downloads a stage's inputs into the driver's cache
folder (`Settings.local_data`, tasks/io/dataroot.py) and the stage hands its Ray tasks paths in
that folder. On another machine of a Ray cluster that folder is the node's own (the same path,
its own disk) and holds nothing the driver downloaded. Rather than requiring a shared
filesystem, a reader of such a path calls `ensure_local(path)` first: when the file is missing
here and lies under the cache folder, it is copied from the bucket (`<data root>/<relative
path>`) to a temporary sibling and renamed into place, so concurrent readers on one node never
see half a file. The workers of a cluster get the driver's `CLIPMILL_DATA_ROOT` and
`CLIPMILL_DATA_CACHE` (tasks/raysession.py), so every node maps paths the same way.

Outside a bucket data root, or for a path outside the cache folder, it does nothing: the reader
then fails as it always did, naming its path.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from tasks.settings import get_settings, join_uri


def ensure_local(path: str | Path) -> None:
    """Copy `path` (a file or a folder) from the bucket data root when it is missing here and
    lies under the data root's cache folder; otherwise do nothing."""
    local = Path(path)
    if local.exists():
        return
    settings = get_settings()
    if not settings.remote_data or settings.data_root is None:
        return
    try:
        rel = local.absolute().relative_to(settings.local_data.absolute())
    except ValueError:
        return
    import fsspec

    fs, remote = fsspec.core.url_to_fs(join_uri(settings.data_root, rel.as_posix()))
    if not fs.exists(remote):
        return  # not in the bucket either: the reader reports the missing path
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex}.tmp")
    try:
        if fs.isdir(remote):  # a model folder: all of it, then one rename
            fs.get(remote.rstrip("/") + "/", str(tmp), recursive=True)
        else:
            fs.get(remote, str(tmp))
        try:
            os.replace(tmp, local)
        except OSError:
            if not local.exists():  # a folder another reader renamed first is kept
                raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
