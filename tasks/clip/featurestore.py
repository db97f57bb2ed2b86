"""A content-addressed cache of frozen-tower features: append-only parquet parts per tower key.

Layout: `<root>/<key>/part-<time>-<random>.parquet`, columns `id` (content id: sha1 of the image
bytes or of the caption's utf-8) and `feat` (float32 list of fixed width). `key` is
`TowerSplit.key`, the fingerprint of the frozen weights and the preprocessing, so features of
another model or another image size never mix. Writers only ever add whole part files (written
to a dot-prefixed temporary name, then renamed), so concurrent writers (Ray Train workers, two
stages) never see half a file; an id written twice holds the same values, the first one read
wins. It is a pure cache: deleting the folder changes no result, only the time it takes.
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tasks.clip.locked import TowerSplit

STORE_ENV = "CLIPMILL_FEATURE_STORE"  # overrides the store root (a shared folder on a cluster)
PART_GLOB = "part-*.parquet"


class FeatureStoreError(RuntimeError):
    """The store folder or one of its part files is unusable; the message names it."""


def content_id(data: bytes | str) -> str:
    """sha1 hex of image bytes, or of a caption's utf-8: the same content, the same id."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return hashlib.sha1(raw).hexdigest()


def default_store_root() -> Path:
    """`$CLIPMILL_FEATURE_STORE` when set, else `<local data>/features` (`<root>/data/features`
    by default; the local cache folder when CLIPMILL_DATA_ROOT is a bucket: a cache stays local)."""
    env = os.environ.get(STORE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    from tasks.settings import get_settings

    return get_settings().local_data / "features"


class FeatureStore:
    """Features of one frozen tower (`key`) under `root/key/`; lookups are served from memory,
    refreshed from new part files (another writer's) when an id is missing."""

    def __init__(self, root: Path, key: str) -> None:
        if not key or "/" in key or key.startswith("."):
            raise FeatureStoreError(f"feature store key {key!r}: not a plain folder name")
        self.root, self.key = Path(root), key
        self.folder = self.root / key
        if self.root.exists() and not self.root.is_dir():
            raise FeatureStoreError(f"feature store root {self.root}: exists and is not a folder")
        if self.folder.exists() and not self.folder.is_dir():
            raise FeatureStoreError(f"feature store {self.folder}: exists and is not a folder")
        self._index: dict[str, tuple[int, int]] = {}  # id -> (block, row)
        self._blocks: list[np.ndarray] = []
        self._loaded: set[str] = set()
        self.dim: int | None = None

    def __repr__(self) -> str:
        return f"FeatureStore({self.folder}, {len(self._index)} ids loaded)"

    def __len__(self) -> int:
        self.refresh()
        return len(self._index)

    def refresh(self) -> int:
        """Read part files not read yet (written by this or another process); returns how many."""
        if not self.folder.is_dir():
            return 0
        try:
            parts = sorted(p for p in self.folder.glob(PART_GLOB) if p.name not in self._loaded)
        except OSError as exc:
            raise FeatureStoreError(f"feature store {self.folder}: cannot list ({exc})") from None
        for part in parts:
            ids, feats = _read_part(part)
            self._remember(ids, feats, part)
            self._loaded.add(part.name)
        return len(parts)

    def _remember(self, ids: list[str], feats: np.ndarray, where: Path) -> None:
        if self.dim is None:
            self.dim = int(feats.shape[1])
        elif feats.shape[1] != self.dim:
            raise FeatureStoreError(
                f"feature store {self.folder}: {where.name} holds width {feats.shape[1]}, "
                f"the store holds {self.dim} (one key, one tower: delete the folder to rebuild it)"
            )
        block = len(self._blocks)
        self._blocks.append(feats)
        for row, i in enumerate(ids):
            self._index.setdefault(i, (block, row))

    def lookup(self, ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 (n, d), found mask (n,)): zeros where an id is not stored yet;
        d is 0 while the store is empty."""
        if any(i not in self._index for i in ids):
            self.refresh()
        found = np.fromiter((i in self._index for i in ids), dtype=bool, count=len(ids))
        out = np.zeros((len(ids), self.dim or 0), dtype=np.float32)
        for n, i in enumerate(ids):
            where = self._index.get(i)
            if where is not None:
                out[n] = self._blocks[where[0]][where[1]]
        return out, found

    def add(self, ids: list[str], feats: Any) -> Path | None:
        """Append features as one new part file (atomic rename); returns it (None if empty)."""
        arr = np.ascontiguousarray(_as_numpy(feats), dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != len(ids):
            raise FeatureStoreError(
                f"feature store {self.folder}: add() needs (n, d) features for n ids, got "
                f"{arr.shape} for {len(ids)}"
            )
        if not ids:
            return None
        if self.dim is None:
            self.refresh()
        if self.dim is not None and arr.shape[1] != self.dim:
            raise FeatureStoreError(
                f"feature store {self.folder}: features of width {arr.shape[1]} do not fit its "
                f"width {self.dim}"
            )
        part = self._write_part(list(ids), arr)
        self._remember(list(ids), arr, part)
        self._loaded.add(part.name)
        return part

    def _write_part(self, ids: list[str], arr: np.ndarray) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FeatureStoreError(f"feature store {self.folder}: cannot create ({exc})") from None
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        flat = pa.array(arr.reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "id": pa.array(ids, type=pa.string()),
                "feat": pa.FixedSizeListArray.from_arrays(flat, arr.shape[1]),
            }
        )
        tmp = self.folder / f".{name}.tmp-{os.getpid()}"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, self.folder / name)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FeatureStoreError(f"feature store {self.folder}: cannot write ({exc})") from None
        return self.folder / name


def _as_numpy(feats: Any) -> np.ndarray:
    if hasattr(feats, "detach"):
        return feats.detach().float().cpu().numpy()
    return np.asarray(feats)


def _read_part(part: Path) -> tuple[list[str], np.ndarray]:
    """One part file -> (ids, (n, d) float32); a damaged file is an error naming it."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(part)
        ids = [str(i) for i in table.column("id").to_pylist()]
        col = table.column("feat").combine_chunks()
        width = col.type.list_size
        feats = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        feats = feats.reshape(len(ids), width)
    except Exception as exc:
        raise FeatureStoreError(
            f"feature store part {part}: unreadable ({exc}); delete it (the store is a cache)"
        ) from None
    return ids, feats


def encode_missing(
    split: TowerSplit,
    store: FeatureStore | None,
    ids: list[str],
    make_inputs: Callable[[list[int]], Any],
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, int]:
    """(frozen features (n, d) of every id, how many were computed): ids missing from the store
    (each distinct id once) are computed in batches and stored batch by batch, so an interrupted
    encoding keeps what it finished. `on_batch(k)` is told after each batch of k computed."""
    if store is not None:
        feats, found = store.lookup(ids)
    else:
        feats, found = np.zeros((len(ids), 0), dtype=np.float32), np.zeros(len(ids), dtype=bool)
    first: dict[str, int] = {}
    for n, i in enumerate(ids):
        if not found[n]:
            first.setdefault(i, n)
    todo = list(first.values())
    computed: dict[str, np.ndarray] = {}
    for start in range(0, len(todo), max(1, batch_size)):
        chunk = todo[start : start + max(1, batch_size)]
        out = _as_numpy(split.frozen(make_inputs(chunk))).astype(np.float32, copy=False)
        if store is not None:
            store.add([ids[n] for n in chunk], out)
        for n, row in zip(chunk, out, strict=True):
            computed[ids[n]] = row
        if on_batch is not None:
            on_batch(len(chunk))
    if computed:
        width = next(iter(computed.values())).shape[0]
        if feats.shape[1] != width:  # the store was empty (or absent): nothing was found
            feats = np.zeros((len(ids), width), dtype=np.float32)
        for n, i in enumerate(ids):
            if i in computed:
                feats[n] = computed[i]
    elif feats.shape[1] == 0 and split.dim:
        feats = np.zeros((len(ids), split.dim), dtype=np.float32)
    return feats, len(todo)


def encode_cached(
    split: TowerSplit,
    store: FeatureStore | None,
    ids: list[str],
    make_inputs: Callable[[list[int]], Any],
    batch_size: int,
) -> Any:
    """`split.head` of the frozen features of every id (unnormalised): stored ones are read,
    missing ones computed from `make_inputs(indices into ids)` and added to the store."""
    import torch

    feats, _ = encode_missing(split, store, ids, make_inputs, batch_size)
    return split.head(torch.from_numpy(feats))
