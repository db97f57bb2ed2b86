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

from tasks.io import mark_done
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


def materialise(
    kept: dict[str, dict[str, Any]],
    shard_of: dict[str, Path],
    out_dir: Path,
    shard_size: int,
    seed: int,
) -> list[Path]:
    """`kept`: uid -> caption fields; `shard_of`: uid -> crawl tar. Returns the written shards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("*.tar"), *out_dir.glob("*.tar.done"), *out_dir.glob(".bucket-*")]:
        old.unlink()
    uids = sorted(kept)
    rng = random.Random(seed)
    rng.shuffle(uids)
    n_out = max(1, -(-len(uids) // shard_size))
    bucket = {u: i // shard_size for i, u in enumerate(uids)}
    tmp = [out_dir / f".bucket-{i:05d}.tar" for i in range(n_out)]
    try:
        return _route_and_write(kept, shard_of, out_dir, bucket, tmp, seed)
    except BaseException:  # failed or interrupted (SIGTERM): no temporary bucket is left behind
        for path in tmp:
            path.unlink(missing_ok=True)
        raise


def _route_and_write(
    kept: dict[str, dict[str, Any]],
    shard_of: dict[str, Path],
    out_dir: Path,
    bucket: dict[str, int],
    tmp: list[Path],
    seed: int,
) -> list[Path]:
    """Route every kept sample into its bucket, then shuffle each bucket into its final shard."""
    uids = sorted(bucket)
    with ExitStack() as stack:
        writers = []
        for p in tmp:
            writers.append(TarWriter(stack.enter_context(p.open("wb"))))
            stack.callback(writers[-1].close)  # runs before its file closes
        for shard in sorted({shard_of[u] for u in uids}):
            for key, parts in iter_samples(shard, bucket):
                sample = _sample_parts(parts, kept[key])
                if sample is not None:
                    writers[bucket[key]].add_sample(key, sample)
    written = []
    for i, path in enumerate(tmp):
        samples = {key: dict(sorted(parts.items())) for key, parts in iter_samples(path)}
        order = sorted(samples)
        random.Random(seed * 1_000_003 + i).shuffle(order)
        final = out_dir / f"{i:05d}.tar"
        write_tar(final, ((key, samples[key]) for key in order))
        mark_done(str(final), {"samples": len(order)})
        path.unlink()
        written.append(final)
    return written
