"""Write the curated subset once as shuffled webdataset shards (uid.jpg, uid.txt, uid.json).

Two bounded-memory passes: route each kept sample from the crawl shards to a randomly chosen
output bucket (temporary tar), then shuffle each bucket in memory and write it atomically.
"""

from __future__ import annotations

import json
import random
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from tasks.io import mark_done
from tasks.io.crawlshards import iter_parts as iter_crawl_parts
from tasks.io.wds import TarWriter, image_ext, iter_samples, sample_json, write_tar


def _sample_parts(parts: dict[str, bytes], row: dict[str, Any]) -> dict[str, bytes] | None:
    """Image as stored by crawl; txt = the default caption; json = crawl json + EVERY caption field."""
    ext = image_ext(parts)
    if ext is None:
        return None
    meta = sample_json(parts)
    meta.update({k: v for k, v in row.items() if v is not None})
    return {
        ext: parts[ext],
        "txt": (row.get("text") or "").encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, default=str).encode("utf-8"),
    }


def bucket_of_sorted(n: int, shard_size: int, seed: int) -> np.ndarray:
    """The output shard of the i-th of `n` uids in sorted order: a seeded permutation cut into
    runs of `shard_size`. One int64 per uid, so the streamed path (tasks/curate/streamwrite.py)
    computes it in a Ray task from the sorted uid list and both paths write the same shards."""
    position = np.empty(n, dtype=np.int64)
    position[np.random.default_rng(seed).permutation(n)] = np.arange(n, dtype=np.int64)
    return position // shard_size


def clear_shards(out_dir: Path) -> None:
    """Remove a previous run's shards, markers and temporary buckets from `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("*.tar"), *out_dir.glob("*.tar.done"), *out_dir.glob(".bucket-*")]:
        old.unlink()


def materialise(
    kept: dict[str, dict[str, Any]],
    shard_of: dict[str, Path],
    out_dir: Path,
    shard_size: int,
    seed: int,
) -> list[Path]:
    """`kept`: uid -> caption fields; `shard_of`: uid -> crawl tar. Returns the written shards."""
    clear_shards(out_dir)
    uids = sorted(kept)
    n_out = max(1, -(-len(uids) // shard_size))
    bucket = dict(zip(uids, bucket_of_sorted(len(uids), shard_size, seed).tolist(), strict=True))
    return write_buckets(kept, shard_of, out_dir, bucket, list(range(n_out)), seed)


def write_buckets(
    kept: dict[str, dict[str, Any]],
    shard_of: dict[str, Path],
    out_dir: Path,
    bucket: dict[str, int],
    ids: list[int],
    seed: int,
) -> list[Path]:
    """Write output shards `ids` (every uid of `bucket` falls in one of them): route, shuffle."""
    tmp = {i: out_dir / f".bucket-{i:05d}.tar" for i in ids}
    try:
        return _route_and_write(kept, shard_of, out_dir, bucket, tmp, seed)
    except BaseException:  # failed or interrupted (SIGTERM): no temporary bucket is left behind
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise


def _route_and_write(
    kept: dict[str, dict[str, Any]],
    shard_of: dict[str, Path],
    out_dir: Path,
    bucket: dict[str, int],
    tmp: dict[int, Path],
    seed: int,
) -> list[Path]:
    """Route every kept sample into its bucket, then shuffle each bucket into its final shard."""
    uids = sorted(bucket)
    with ExitStack() as stack:
        writers = {}
        for i, p in tmp.items():
            writers[i] = TarWriter(stack.enter_context(p.open("wb")))
            stack.callback(writers[i].close)  # runs before its file closes
        for shard in sorted({shard_of[u] for u in uids}):
            for key, parts in iter_crawl_parts(shard, bucket):  # any crawl layout
                sample = _sample_parts(parts, kept[key])
                if sample is not None:
                    writers[bucket[key]].add_sample(key, sample)
    written = []
    for i, path in tmp.items():
        samples = {key: dict(sorted(parts.items())) for key, parts in iter_samples(path)}
        order = sorted(samples)
        random.Random(seed * 1_000_003 + i).shuffle(order)
        final = out_dir / f"{i:05d}.tar"
        write_tar(final, ((key, samples[key]) for key in order))
        mark_done(str(final), {"samples": len(order)})
        path.unlink()
        written.append(final)
    return written
