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


def bucket_uri(path: str | Path) -> str | None:
    """The bucket data root URI of a path under the data root's cache folder; None outside a
    bucket data root or for a path elsewhere (nothing to map)."""
    settings = get_settings()
    if not settings.remote_data or settings.data_root is None:
        return None
    try:
        rel = Path(path).absolute().relative_to(settings.local_data.absolute())
    except ValueError:
        return None
    return join_uri(settings.data_root, rel.as_posix())


def this_node() -> str | None:
    """The Ray node id of this process (a driver after `ray.init`, a task, an actor, a Ray
    Train worker); None where Ray is not running here."""
    import ray

    if not ray.is_initialized():
        return None
    return str(ray.get_runtime_context().get_node_id())


def publish(path: str | Path, driver_node: str | None) -> bool:
    """Upload a file or folder this process wrote under the cache folder to the bucket when it
    runs on another Ray node than the stage's driver (`driver_node`, from `this_node()` on the
    driver): the driver's runner pushes only its own cache folder, so an output written on
    another node's disk would otherwise never reach the driver or the bucket. The driver then
    reads it with `ensure_local`. A folder replaces the bucket's copy whole (no stale files
    left beside it). Returns whether it uploaded: nothing happens on the driver's node, with
    `driver_node=None` (no cluster), outside a bucket data root or outside the cache folder."""
    if driver_node is None or this_node() in (None, driver_node):
        return False
    uri = bucket_uri(path)
    if uri is None:
        return False
    import fsspec

    local = Path(path)
    fs, remote = fsspec.core.url_to_fs(uri)
    if local.is_dir():
        if fs.exists(remote):
            fs.rm(remote, recursive=True)
        fs.put(str(local).rstrip("/") + "/", remote.rstrip("/"), recursive=True)
    else:
        fs.put_file(str(local), remote)  # one PUT: an object store writes it whole or not at all
    return True


def refresh(path: str | Path) -> None:
    """Replace a local file or folder under the cache folder with the bucket's copy (what
    `publish` uploaded from another node); nothing outside a bucket data root."""
    if bucket_uri(path) is None:
        return
    local = Path(path)
    if local.is_dir():
        shutil.rmtree(local)
    else:
        local.unlink(missing_ok=True)
    ensure_local(local)
