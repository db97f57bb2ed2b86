"""The one rule for paths in params: relative ones live under the settings' root (CLIPMILL_ROOT).

Absolute paths and URIs (`s3://bucket/x`, `file:///x`) are used as they are, so the same params
file works on a laptop (relative, under the project) and on a cluster (a shared object store).
The root is read from the settings, not frozen at import, so a test or a copy of the project
that sets CLIPMILL_ROOT (then clears `get_settings`' cache) sees its own root. Relative
`data/...` paths resolve under the settings' `local_data` (`<root>/data` unless
CLIPMILL_DATA_ROOT moves it: docs/ARCHITECTURE.md, "Shared storage").
"""

from __future__ import annotations

from pathlib import Path
from typing import overload


def is_uri(path: str | Path) -> bool:
    """An fsspec URI (`scheme://...`): never joined to the root, never turned into a Path."""
    return "://" in str(path)


def resolve_uri(path: str | Path) -> str:
    """Where a params path points, as a string: URIs and absolute paths unchanged, relative
    paths under the settings' root. For outputs that may live on an object store."""
    from tasks.settings import get_settings

    text = str(path)
    if is_uri(text) or Path(text).is_absolute():
        return text
    root = get_settings().root
    if ".." in Path(text).parts and not (root / text).resolve().is_relative_to(root.resolve()):
        # A relative path is a promise to stay in the project: `../../x` breaking it is a typo or
        # an attack (params from elsewhere); an absolute path says outright where it goes.
        raise ValueError(
            f"params path {text!r} escapes the project folder {root}: write it inside the "
            "project, or as an absolute path / URI to point outside it on purpose"
        )
    parts = Path(text).parts
    if parts and parts[0] == "data" and ".." not in parts:
        # `data/...` lives where the settings put the data: `<root>/data` by default, the local
        # copy of CLIPMILL_DATA_ROOT's bucket when that is set (tasks/io/dataroot.py fills it).
        return str(get_settings().local_data.joinpath(*parts[1:]))
    return str(root / text)


@overload
def resolve_path(path: None) -> None: ...
@overload
def resolve_path(path: str | Path) -> Path: ...
def resolve_path(path: str | Path | None) -> Path | None:
    """A local params path as a Path (None passes through, for optional inputs).

    A URI raises: `Path("s3://b/k")` would silently become the local folder `s3:/b/k`.
    """
    if path is None:
        return None
    if is_uri(path):
        raise ValueError(f"{path!r}: this input must be a local path, not a URI")
    return Path(resolve_uri(path))
