"""Write the curated subset once as shuffled webdataset shards (uid.jpg, uid.txt, uid.json).

Two bounded-memory passes: route each kept sample from the crawl shards to a randomly chosen
output bucket (temporary tar), then shuffle each bucket in memory and write it atomically.
"""

from __future__ import annotations

import io
import json
import random
import tarfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tasks.curate.images import iter_tar_samples
from tasks.io import atomic_write_bytes, mark_done


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _sample_files(
    uid: str, parts: dict[str, bytes], row: dict[str, Any]
) -> list[tuple[str, bytes]]:
    """Image as stored by crawl; txt = the default caption; json = crawl json + EVERY caption field."""
    ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in parts), None)
    if ext is None:
        return []
    meta: dict[str, Any] = {}
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except (ValueError, UnicodeDecodeError):
            meta = {}
    meta.update({k: v for k, v in row.items() if v is not None})
    return [
        (f"{uid}.{ext}", parts[ext]),
        (f"{uid}.txt", (row.get("text") or "").encode("utf-8")),
        (f"{uid}.json", json.dumps(meta, sort_keys=True, default=str).encode("utf-8")),
    ]


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
    with ExitStack() as stack:
        writers = [stack.enter_context(tarfile.open(p, "w")) for p in tmp]
        for shard in sorted({shard_of[u] for u in uids}):
            for key, parts in iter_tar_samples(shard):
                if key in bucket:
                    for name, data in _sample_files(key, parts, kept[key]):
                        _add(writers[bucket[key]], name, data)
    written = []
    for i, path in enumerate(tmp):
        samples: dict[str, list[tuple[str, bytes]]] = {}
        for key, parts in iter_tar_samples(path):
            samples[key] = [(f"{key}.{ext}", data) for ext, data in sorted(parts.items())]
        order = sorted(samples)
        random.Random(seed * 1_000_003 + i).shuffle(order)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for key in order:
                for name, data in samples[key]:
                    _add(tar, name, data)
        final = out_dir / f"{i:05d}.tar"
        atomic_write_bytes(final, buf.getvalue())
        mark_done(str(final), {"samples": len(order)})
        path.unlink()
        written.append(final)
    return written
