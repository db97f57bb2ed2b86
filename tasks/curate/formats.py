"""The field's subset formats: DataComp's uid file and MetaCLIP's entry-count table.

DataComp ships every subset as a `.npy` of structured `(u8, u8)` pairs, sorted and unique, made
from each hex uid by `(int(uid[:16], 16), int(uid[16:32], 16))`; its tools load it with
`np.load` and compare pool uids converted the same way. Our uids are MetaCLIP's 24 hex
characters, so the second number holds the last 8; applying DataComp's own conversion to our
`uid` column gives exactly the pairs written here, which is what lets a DataComp-side script
read our subsets and us read theirs (a 32-hex DataComp uid converts the same way).

MetaCLIP keeps its balancing state as `entry_counts.npy` (int64, one count per metadata entry,
in the metadata's order) beside the metadata list (`metadata.json`, a JSON list of strings).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tasks.io.atomic import atomic_write_bytes, atomic_write_text

DATACOMP_UID_DTYPE = np.dtype("u8,u8")


class UidFileError(ValueError):
    """A uid file cannot be read or holds something that is not a uid; names the file."""


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def uid_pair(uid: str) -> tuple[int, int]:
    """DataComp's conversion of one hex uid to its two 64-bit halves."""
    return int(uid[:16], 16), int(uid[16:32], 16)


def datacomp_array(uids: Iterable[str]) -> np.ndarray:
    """Sorted, unique `(u8, u8)` pairs, as DataComp stores a subset."""
    pairs = np.array([uid_pair(u) for u in uids], dtype=DATACOMP_UID_DTYPE)
    return np.unique(pairs)  # np.unique sorts structured arrays field by field


def write_datacomp_uids(uids: Iterable[str], path: Path) -> int:
    """Write the subset as DataComp's `.npy`; returns how many distinct uids it holds."""
    array = datacomp_array(uids)
    atomic_write_bytes(path, _npy_bytes(array))
    return int(array.shape[0])


def read_uid_file(path: Path) -> np.ndarray:
    """A subset to apply, as DataComp pairs: DataComp's `.npy`, a parquet with a `uid` column, or
    a text file of hex uids (one per line)."""
    name = path.name.lower()
    try:
        if name.endswith(".npy"):
            array = np.load(path, allow_pickle=False)
            if array.dtype != DATACOMP_UID_DTYPE:
                raise UidFileError(
                    f"{path}: dtype {array.dtype} is not DataComp's uid dtype (u8,u8)"
                )
            return np.unique(array)
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            if "uid" not in table.column_names:
                raise UidFileError(f"{path}: no 'uid' column ({', '.join(table.column_names)})")
            return datacomp_array(_checked(path, table.column("uid").to_pylist()))
        if name.endswith(".txt"):
            lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
            return datacomp_array(_checked(path, [line for line in lines if line]))
    except UidFileError:
        raise
    except (OSError, ValueError) as exc:
        raise UidFileError(f"{path}: cannot read uids: {type(exc).__name__}: {exc}") from None
    raise UidFileError(f"{path}: unknown uid file format (use .npy, .parquet or .txt)")


def is_hex_uid(uid: object) -> bool:
    """A uid DataComp's conversion takes: 17 to 32 hex characters (ours have 24, DataComp's 32)."""
    return (
        isinstance(uid, str)
        and 16 < len(uid) <= 32
        and all(c in "0123456789abcdefABCDEF" for c in uid)
    )


def _checked(path: Path, uids: list[object]) -> list[str]:
    for number, uid in enumerate(uids):
        if not is_hex_uid(uid):
            raise UidFileError(f"{path}: row {number} is not a hex uid: {uid!r}")
    return [str(u) for u in uids]


def in_uid_set(uids: list[str], subset: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `uids` the sorted DataComp array `subset` holds (a non-hex uid
    is in no DataComp subset)."""
    hex_mask = np.array([is_hex_uid(u) for u in uids], dtype=bool)
    if not hex_mask.any() or subset.size == 0:
        return np.zeros(len(uids), dtype=bool)
    pairs = np.array(
        [uid_pair(u) if ok else (0, 0) for u, ok in zip(uids, hex_mask, strict=True)],
        dtype=DATACOMP_UID_DTYPE,
    )
    where = np.searchsorted(subset, pairs).clip(max=subset.size - 1)
    return np.asarray(subset[where] == pairs, dtype=bool) & hex_mask


def write_metaclip_counts(entries: Iterable[str], counts: np.ndarray, out_dir: Path) -> None:
    """`entry_counts.npy` (int64, metadata order) and `metadata.json` (the entries), MetaCLIP's form."""
    listed = list(entries)
    if len(listed) != len(counts):
        raise ValueError(f"{len(listed)} metadata entries but {len(counts)} counts")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / "entry_counts.npy", _npy_bytes(np.asarray(counts, np.int64)))
    atomic_write_text(out_dir / "metadata.json", json.dumps(listed, ensure_ascii=False))
