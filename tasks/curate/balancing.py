"""MetaCLIP balancing as map -> reduce -> map, with coins that make every t a nested subset.

map:    per shard, 64-bit counts of matched entries (one text adds 1 to each entry it matches).
reduce: global sum of the shard counts (never per-shard statistics).
map:    per pair, one independent coin u_e per matched entry; keep if some u_e < p_e with
        p_e = t / max(count_e, t), i.e. keep probability 1 - prod(1 - p_e).

The coin of (pair, entry) is a hash of (seed, uid, entry id): the same subset whatever the
sharding, and the same coins for every t. Because u_e < t / max(c_e, t)  <=>  u_e * c_e < t
(u_e < 1), each pair has one number `t_min = min_e u_e * c_e` and is kept iff t_min < t.
That makes re-balancing with another t a comparison, and finding the t for a target size a
quantile, with no re-matching and no re-counting.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective 64-bit hash with good avalanche, vectorised."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def uid_keys(uids: Sequence[str] | pa.Array) -> np.ndarray:
    """A 64-bit key per uid (blake2b), so coins depend on the sample, not on its row position."""
    values = uids.to_pylist() if isinstance(uids, pa.Array | pa.ChunkedArray) else uids
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little")
            for u in values
        ),
        dtype=np.uint64,
        count=len(values),
    )


def coins(keys: np.ndarray, entry_ids: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) per (pair key, entry id, seed), reproducible anywhere."""
    with np.errstate(over="ignore"):
        salt = _mix(entry_ids.astype(np.uint64) + np.uint64(seed % 2**64) * _GOLDEN)
        bits = _mix(keys ^ salt)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _flat(entry_ids: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(flattened ids, offsets) of a list<int> column."""
    arr = entry_ids.combine_chunks() if isinstance(entry_ids, pa.ChunkedArray) else entry_ids
    arr = arr.fill_null(pa.scalar([], arr.type)) if arr.null_count else arr
    offsets = arr.offsets.to_numpy() - arr.offsets[0].as_py()
    return arr.flatten().to_numpy(zero_copy_only=False), offsets


def count_entries(entry_ids: pa.Array | pa.ChunkedArray, n_entries: int) -> np.ndarray:
    """map: int64 count per entry over one shard (ids are a set per text, so +1 per text)."""
    flat, _ = _flat(entry_ids)
    return np.bincount(flat, minlength=n_entries).astype(np.int64, copy=False)


def entry_probabilities(counts: np.ndarray, t: int) -> np.ndarray:
    """p_e = t / max(count_e, t): 1 for tail entries, t / count for head entries."""
    return t / np.maximum(counts.astype(np.float64), float(t))


def pair_tmin(
    uids: Sequence[str] | pa.Array,
    entry_ids: pa.Array | pa.ChunkedArray,
    counts: np.ndarray,
    seed: int,
) -> np.ndarray:
    """min over matched entries of u_e * count_e; +inf for texts that match nothing (dropped)."""
    flat, offsets = _flat(entry_ids)
    n = len(offsets) - 1
    out = np.full(n, np.inf)
    if flat.size == 0:
        return out
    lengths = np.diff(offsets)
    keys = np.repeat(uid_keys(uids), lengths)
    v = coins(keys, flat, seed) * counts[flat].astype(np.float64)
    nonempty = lengths > 0
    out[nonempty] = np.minimum.reduceat(v, offsets[:-1][nonempty])
    return out


def keep_mask(tmin: np.ndarray, t: int) -> np.ndarray:
    """Kept iff some coin u_e < t / max(c_e, t), i.e. iff t_min < t."""
    return tmin < t


def size_at(tmin: np.ndarray, t: int) -> int:
    return int(np.count_nonzero(tmin < t))


def find_t(tmin: np.ndarray, target_size: int) -> int:
    """The smallest integer t whose balanced subset has at least `target_size` pairs.

    The subset at t is {t_min < t}, nested in t, so the answer is read off the sorted t_min.
    Raises when even keeping every matched pair is not enough.
    """
    finite = np.sort(tmin[np.isfinite(tmin)])
    if target_size > finite.size:
        raise ValueError(
            f"target size {target_size} exceeds the {finite.size} pairs that match any entry"
        )
    if target_size <= 0:
        return 1
    return max(1, int(np.floor(finite[target_size - 1])) + 1)


# --- the streaming map -> reduce -> map over parquet shards (uid, entry_ids) ---------------------


# a stored matches file, or its table (uid, entry_ids)
MatchesSource: TypeAlias = str | Path | pa.Table


def _batches(
    source: MatchesSource, columns: list[str], batch_rows: int
) -> Iterable[pa.RecordBatch]:
    """A matches file read in batches (bounded memory), or the batches of its table."""
    import pyarrow.parquet as pq

    if isinstance(source, pa.Table):
        return source.select(columns).to_batches(max_chunksize=batch_rows)
    return pq.ParquetFile(source).iter_batches(batch_size=batch_rows, columns=columns)


def count_file(source: MatchesSource, n_entries: int, batch_rows: int = 262_144) -> np.ndarray:
    """map step over one matches file (or its table), batch by batch."""
    total = np.zeros(n_entries, dtype=np.int64)
    for batch in _batches(source, ["entry_ids"], batch_rows):
        total += count_entries(batch.column(0), n_entries)
    return total


def tmin_table(
    source: MatchesSource, counts: np.ndarray, seed: int, batch_rows: int = 262_144
) -> pa.Table:
    """second map step: (uid, tmin) of one matches file (or its table), as a table."""
    parts = [
        pa.table(
            {
                "uid": b.column(0),
                "tmin": pa.array(pair_tmin(b.column(0), b.column(1), counts, seed), pa.float64()),
            }
        )
        for b in _batches(source, ["uid", "entry_ids"], batch_rows)
    ]
    schema = pa.schema([("uid", pa.string()), ("tmin", pa.float64())])
    return pa.concat_tables(parts) if parts else schema.empty_table()


def tmin_file(
    path: MatchesSource,
    out_path: str | Path,
    counts: np.ndarray,
    seed: int,
    batch_rows: int = 262_144,
) -> int:
    """second map step: write (uid, tmin) for one matches file; returns the rows written."""
    import pyarrow.parquet as pq

    rows = 0
    writer = None
    try:
        for batch in _batches(path, ["uid", "entry_ids"], batch_rows):
            tmin = pair_tmin(batch.column(0), batch.column(1), counts, seed)
            part = pa.table({"uid": batch.column(0), "tmin": pa.array(tmin, pa.float64())})
            if writer is None:
                writer = pq.ParquetWriter(str(out_path), part.schema)
            writer.write_table(part)
            rows += len(part)
    finally:
        if writer is not None:
            writer.close()
    return rows


def global_counts(sources: Iterable[Any], n_entries: int) -> np.ndarray:
    """map (Ray task per file, or per table in the object store) -> reduce (sum on the driver,
    64-bit)."""
    import ray

    task = ray.remote(count_file)
    total = np.zeros(n_entries, dtype=np.int64)
    for part in ray.get(
        [task.remote(s if isinstance(s, ray.ObjectRef) else str(s), n_entries) for s in sources]
    ):
        total += part
    return total


def balance_files(
    paths: Sequence[str | Path], out_dir: str | Path, n_entries: int, seed: int
) -> tuple[np.ndarray, list[Path]]:
    """The whole balancing pass: global counts, then (uid, tmin) files beside the matches.

    The matches files are the driver's: they go to the tasks through Ray's object store (one
    part each) and the (uid, tmin) parts come back the same way, written here. So the tasks
    may run on any node of a cluster, none of which sees the driver's disk."""
    import pyarrow.parquet as pq
    import ray

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [ray.put(pq.read_table(str(p), columns=["uid", "entry_ids"])) for p in paths]
    counts = global_counts(parts, n_entries)
    counts_ref = ray.put(counts)
    task = ray.remote(tmin_table)
    outs = [out_dir / f"tmin-{i:05d}.parquet" for i in range(len(paths))]
    pending = {
        task.remote(part, counts_ref, seed): out for part, out in zip(parts, outs, strict=True)
    }
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            pq.write_table(ray.get(ref), str(pending.pop(ref)))
    return counts, outs
