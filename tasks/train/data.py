"""Streaming training data: webdataset shards -> a seeded, resumable stream of global batches.

Every worker reads the same global sample stream and keeps its slice of each global batch, so
N workers see exactly the batches one worker would (the equivalence the tests check), and a
resumed run skips the consumed batches without decoding them (exact resume).

Samples whose key (the crawl's uid) is in the run's `exclude_uids` list (decontaminate's
flagged eval copies) are dropped from the raw stream before shuffling, so no worker, epoch or
resume ever sees them, and the counts that size the run leave them out too.
"""

from __future__ import annotations

import glob
import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.io.paths import resolve_path
from tasks.io.wds import IMAGE_EXTS, ShardError, image_ext, sample_json, sample_keys


class DataError(ValueError):
    """The training shards are missing, empty or unusable; the message names them."""


def list_shards(spec: str) -> list[str]:
    """A folder of *.tar shards or a glob -> sorted shard paths; a clear error when there are none."""
    root = resolve_path(spec)
    shards = (
        sorted(str(p) for p in root.glob("*.tar"))
        if root.is_dir()
        else sorted(glob.glob(str(root)))
    )
    if not shards:
        where = (
            "folder does not exist"
            if not root.exists() and not any(c in spec for c in "*?[")
            else "no *.tar files"
        )
        raise DataError(f"shards {spec!r}: {where} ({root}); run the upstream stage first")
    empty = [s for s in shards if Path(s).stat().st_size == 0]
    if empty:
        raise DataError(f"shards {spec!r}: empty shard file(s): {', '.join(empty[:5])}")
    return shards


def load_excluded(spec: str | None) -> frozenset[str]:
    """The uids never trained on: the `uid` column of a parquet file (decontaminate's
    flagged_uids.parquet); empty for None. A missing or unreadable file is a DataError naming it:
    training on without the list would train on the eval copies it names."""
    if spec is None:
        return frozenset()
    import pyarrow.parquet as pq

    path = resolve_path(spec)
    if not path.is_file():
        raise DataError(
            f"exclude_uids {spec!r}: file not found ({path}); run the decontaminate stage first"
        )
    try:
        schema = pq.read_schema(path)
    except Exception as exc:
        raise DataError(f"exclude_uids {spec!r}: not a parquet file ({exc})") from None
    if "uid" not in schema.names:
        raise DataError(f"exclude_uids {spec!r}: no `uid` column (columns: {schema.names})")
    uids = pq.read_table(path, columns=["uid"]).column("uid").to_pylist()
    return frozenset(str(u) for u in uids if u is not None)


def sample_counts(shards: list[str], exclude: frozenset[str] = frozenset()) -> tuple[int, int]:
    """(samples with an image that are trained on, samples skipped as excluded), from tar
    headers only (no decoding), to check batch sizes up front."""
    kept = skipped = 0
    for shard in shards:
        try:
            keys = sample_keys(shard, IMAGE_EXTS)
        except ShardError as exc:
            raise DataError(f"shard {exc}") from None
        except OSError as exc:
            raise DataError(f"shard {shard}: not a readable tar file ({exc})") from None
        out = sum(k in exclude for k in keys)
        kept += len(keys) - out
        skipped += out
    return kept, skipped


def count_samples(shards: list[str], exclude: frozenset[str] = frozenset()) -> int:
    """Samples with an image that are trained on (excluded uids left out)."""
    return sample_counts(shards, exclude)[0]


def _shard_samples(shard: str) -> Iterator[dict[str, Any]]:
    """webdataset's own streaming tar iterator: the loader open_clip trains with, same samples."""
    import webdataset as wds

    yield from wds.tariterators.tarfile_samples([{"url": shard}])


def raw_stream(
    shards: list[str], seed: int, resample: bool, exclude: frozenset[str] = frozenset()
) -> Iterator[dict[str, Any]]:
    """Endless raw samples (bytes, undecoded): shards drawn with replacement or in seeded epochs;
    samples without an image or with an excluded key are skipped."""
    rng = random.Random(seed)
    while True:
        order = (
            [rng.choice(shards) for _ in shards] if resample else rng.sample(shards, len(shards))
        )
        for shard in order:
            for sample in _shard_samples(shard):
                if image_ext(sample) is not None and sample.get("__key__") not in exclude:
                    yield sample


def shuffled(stream: Iterator[dict[str, Any]], size: int, seed: int) -> Iterator[dict[str, Any]]:
    """A seeded shuffle buffer: the same seed always gives the same order."""
    rng = random.Random(seed + 1)
    buf: list[dict[str, Any]] = []
    for sample in stream:
        if len(buf) < size:
            buf.append(sample)
            continue
        i = rng.randrange(size)
        buf[i], sample = sample, buf[i]
        yield sample


def global_batches(
    shards: list[str],
    batch_size: int,
    seed: int,
    resample: bool,
    buffer: int,
    exclude: frozenset[str] = frozenset(),
) -> Iterator[list[dict[str, Any]]]:
    """Global batches of raw samples, each sample tagged with its global index in the stream."""
    stream = shuffled(raw_stream(shards, seed, resample, exclude), buffer, seed)
    index = 0
    while True:
        batch = []
        for _ in range(batch_size):
            sample = next(stream)
            sample["__index__"] = index
            index += 1
            batch.append(sample)
        yield batch


def sample_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def pick_caption(sample: dict[str, Any], fields: dict[str, float], rng: random.Random) -> str:
    """Choose a caption field with the given probabilities among the fields this sample has."""
    meta = sample_json(sample)
    present: dict[str, str] = {}
    for name in fields:
        value = sample.get(name)
        value = (
            value.decode("utf-8", "replace") if isinstance(value, bytes) else meta.get(name, value)
        )
        if isinstance(value, list):  # several recaptions in one field: pick one
            value = rng.choice(value) if value else None
        if isinstance(value, str) and value.strip():
            present[name] = value.strip()
    weights = [fields[n] for n in present]
    if not present or sum(weights) <= 0:
        txt = sample.get("txt", b"")
        return txt.decode("utf-8", "replace").strip() if isinstance(txt, bytes) else str(txt)
    return present[rng.choices(list(present), weights=weights)[0]]


def decode_image(sample: dict[str, Any], transform: Any, seed: int | None) -> Any:
    """Bytes -> tensor; augmentation randomness comes from the sample's own seed (resume-exact)."""
    import torch
    from PIL import Image

    ext = image_ext(sample)
    if ext is None:
        raise DataError(f"sample {sample.get('__key__')} in {sample.get('__url__')}: no image")
    try:
        image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
    except Exception as exc:
        raise DataError(
            f"sample {sample.get('__key__')} in {sample.get('__url__')}: bad image ({exc})"
        ) from None
    if seed is None:  # a deterministic transform needs no RNG of its own
        return transform(image)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transform(image)


def decode_batch(
    samples: list[dict[str, Any]],
    transform: Any,
    tokenizer: Any,
    fields: dict[str, float],
    seed: int,
    augment: bool = True,
) -> tuple[Any, Any]:
    """Raw samples -> (images, tokens) tensors; `augment` = the transform draws random numbers."""
    import torch

    images, texts = [], []
    for s in samples:
        sseed = sample_seed(seed, s["__index__"])
        texts.append(pick_caption(s, fields, random.Random(sseed)))
        images.append(decode_image(s, transform, sseed if augment else None))
    return torch.stack(images), tokenizer(texts)


def worker_batches(
    shards: list[str],
    *,
    batch_size: int,
    rank: int,
    world: int,
    seed: int,
    resample: bool,
    buffer: int,
    transform: Any,
    tokenizer: Any,
    fields: dict[str, float],
    start_step: int = 0,
    augment: bool = True,
    exclude: frozenset[str] = frozenset(),
) -> Iterator[tuple[Any, Any]]:
    """This worker's slice of every global batch from `start_step` on, decoded; `exclude`d keys
    never appear."""
    local = batch_size // world
    batches = global_batches(shards, batch_size, seed, resample, buffer, exclude)
    for step, batch in enumerate(batches):
        if step < start_step:
            continue  # consumed before the checkpoint: skipped undecoded
        yield decode_batch(
            batch[rank * local : (rank + 1) * local], transform, tokenizer, fields, seed, augment
        )
