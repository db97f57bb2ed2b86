"""Streaming training data: webdataset shards -> a seeded, resumable stream of global batches.

Every worker reads the same global sample stream and keeps its slice of each global batch, so
N workers see exactly the batches one worker would (the equivalence the tests check), and a
resumed run skips the consumed batches without decoding them (exact resume).

With `split_shards` (params `shard_split`) each worker instead reads only its own shards,
`shards[rank::world]` as webdataset's `split_by_node` gives them to open_clip, in its own seeded
stream: the workers see disjoint samples and together all of them, no worker reads (and
untars) what others train on, and resume stays exact (each worker's stream depends only on the
seed, its rank and the world size). The price: N workers no longer compute what one would, and
with uneven shard sizes the samples of a smaller part come round more often.

Samples whose key (the crawl's uid) is in the run's `exclude_uids` list (decontaminate's
flagged eval copies) are dropped from the raw stream before shuffling, so no worker, epoch or
resume ever sees them, and the counts that size the run leave them out too.
"""

from __future__ import annotations

import glob
import io
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    from tasks.io.uidlist import UidListError, read_uid_list

    try:
        return read_uid_list(spec, "exclude_uids", "run the decontaminate stage first")
    except UidListError as exc:
        raise DataError(str(exc)) from None


_KEYS: dict[tuple[str, int, int], list[str]] = {}  # (path, size, mtime_ns) -> image sample keys


def _image_keys(shard: str) -> list[str]:
    """A shard's image sample keys, read from its headers once per process while the file is
    unchanged: the stage counts before training (preflight) and again for its report."""
    st = Path(shard).stat()
    key = (shard, st.st_size, st.st_mtime_ns)
    if key not in _KEYS:
        _KEYS[key] = sample_keys(shard, IMAGE_EXTS)
    return _KEYS[key]


def sample_counts(shards: list[str], exclude: frozenset[str] = frozenset()) -> tuple[int, int]:
    """(samples with an image that are trained on, samples skipped as excluded), from tar
    headers only (no decoding), to check batch sizes up front."""
    kept = skipped = 0
    for shard in shards:
        try:
            keys = _image_keys(shard)
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


Reader = Callable[[str], Iterator[dict[str, Any]]]  # shard path -> its samples, in tar order


def raw_stream(
    shards: list[str],
    seed: int,
    resample: bool,
    exclude: frozenset[str] = frozenset(),
    reader: Reader | None = None,
) -> Iterator[dict[str, Any]]:
    """Endless raw samples (bytes, undecoded): shards drawn with replacement or in seeded epochs;
    samples without an image or with an excluded key are skipped. `reader` yields a shard's
    samples, `_shard_samples` when None (the stored-feature path passes one that replays them
    from memory, without the image bytes: the same samples, the same order)."""
    rng = random.Random(seed)
    while True:
        order = (
            [rng.choice(shards) for _ in shards] if resample else rng.sample(shards, len(shards))
        )
        for shard in order:
            for sample in (reader or _shard_samples)(shard):
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
    reader: Reader | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Global batches of raw samples, each sample tagged with its global index in the stream."""
    stream = shuffled(raw_stream(shards, seed, resample, exclude, reader), buffer, seed)
    index = 0
    while True:
        batch = []
        for _ in range(batch_size):
            sample = next(stream)
            sample["__index__"] = index
            index += 1
            batch.append(sample)
        yield batch


def shard_part(shards: list[str], rank: int, world: int) -> list[str]:
    """The shards worker `rank` of `world` reads in split mode: every world-th one from its rank
    (webdataset's split_by_node, which open_clip uses); a clear error when a worker gets none."""
    if len(shards) < world:
        raise DataError(
            f"shard_split: {len(shards)} shard(s) for {world} workers; each worker needs at "
            f"least one shard of its own (write more, smaller shards or turn shard_split off)"
        )
    return shards[rank::world]


def check_split(shards: list[str], world: int, exclude: frozenset[str] = frozenset()) -> None:
    """Before any worker starts: every worker's part holds samples it may train on (a worker with
    none would wait forever for its first batch); the error names the part's shards."""
    for rank in range(world):
        part = shard_part(shards, rank, world)
        if count_samples(part, exclude) == 0:
            raise DataError(
                f"shard_split: worker {rank} of {world} would read only {', '.join(part)}, "
                "which hold no image samples it may train on"
            )


def split_batches(
    shards: list[str],
    batch_size: int,
    *,
    rank: int,
    world: int,
    seed: int,
    resample: bool,
    buffer: int,
    exclude: frozenset[str] = frozenset(),
    reader: Reader | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Split mode: worker `rank`'s local batches (batch_size // world samples) from its own shards
    only, in a stream seeded by (seed, rank). Each sample's `__index__` is the position it holds in
    the global batch of its step (step * batch_size + rank * local + j), so the per-sample seeds
    (augmentation, caption choice) differ across workers; with one worker this is exactly the
    global stream."""
    local = batch_size // world
    mine = shard_part(shards, rank, world)
    wseed = seed + 1_000_003 * rank
    stream = shuffled(raw_stream(mine, wseed, resample, exclude, reader), buffer, wseed)
    step = 0
    while True:
        batch = []
        for j in range(local):
            sample = next(stream)
            sample["__index__"] = step * batch_size + rank * local + j
            batch.append(sample)
        yield batch
        step += 1


def sample_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index) % (2**63)


def pick_caption(sample: dict[str, Any], fields: dict[str, float], rng: random.Random) -> str:
    """Choose a caption field with the given probabilities among the fields this sample has."""
    return pick_caption_field(sample, fields, rng)[1]


def pick_caption_field(
    sample: dict[str, Any], fields: dict[str, float], rng: random.Random
) -> tuple[str, str]:
    """(field, caption) of `pick_caption` (the same random draws): offline distillation needs to
    know which stored caption embedding goes with the caption; "txt" when falling back."""
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
        return "txt", (
            txt.decode("utf-8", "replace").strip() if isinstance(txt, bytes) else str(txt)
        )
    name = rng.choices(list(present), weights=weights)[0]
    return name, present[name]


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


@dataclass
class Picked:
    """What the batch's extras builders see of each sample besides its raw fields."""

    seeds: list[int]  # per-sample seed (augmentation, caption choice)
    fields: list[str]  # the caption field each picked caption came from ("txt" on fallback)
    captions: list[str]  # the picked captions (what `texts` tokenises)


class BatchExtra(Protocol):
    """Builds named per-sample tensors of a batch (teacher inputs, hard negatives, tag targets).

    `replaces_images`: the builder returns `images` itself (offline distillation rebuilds each
    stored augmentation), so the default decode is skipped."""

    replaces_images: bool

    def __call__(self, samples: list[dict[str, Any]], picked: Picked) -> dict[str, Any]: ...


def decode_batch(
    samples: list[dict[str, Any]],
    transform: Any,
    tokenizer: Any,
    fields: dict[str, float],
    seed: int,
    augment: bool = True,
    extras: Sequence[BatchExtra] = (),
) -> Any:
    """Raw samples -> (images, tokens) tensors; `augment` = the transform draws random numbers.
    With `extras`, a `Batch` whose extras are what the builders return (objectives/base.py)."""
    import torch

    seeds = [sample_seed(seed, s["__index__"]) for s in samples]
    chosen = [
        pick_caption_field(s, fields, random.Random(x)) for s, x in zip(samples, seeds, strict=True)
    ]
    picked = Picked(seeds, [c[0] for c in chosen], [c[1] for c in chosen])
    images = None
    if not any(e.replaces_images for e in extras):
        images = torch.stack(
            [
                decode_image(s, transform, x if augment else None)
                for s, x in zip(samples, seeds, strict=True)
            ]
        )
    if not extras:
        return images, tokenizer(picked.captions)
    from tasks.train.objectives.base import Batch

    out: dict[str, Any] = {}
    for extra in extras:
        out.update(extra(samples, picked))
    images = out.pop("images", images)
    return Batch(images, tokenizer(picked.captions), out)


def worker_samples(
    shards: list[str],
    *,
    batch_size: int,
    rank: int,
    world: int,
    seed: int,
    resample: bool,
    buffer: int,
    start_step: int = 0,
    exclude: frozenset[str] = frozenset(),
    split_shards: bool = False,
    reader: Reader | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """This worker's raw (undecoded) samples of every step from `start_step` on: the one place
    that decides which samples a worker trains on, shared by the decoding path below and the
    stored-feature path (tasks/train/features.py), so both see the same samples in the same order.
    `split_shards`: read only this worker's shards (`split_batches`) instead of slicing the
    global stream."""
    local = batch_size // world
    batches: Iterator[list[dict[str, Any]]]
    if split_shards:
        batches = split_batches(
            shards,
            batch_size,
            rank=rank,
            world=world,
            seed=seed,
            resample=resample,
            buffer=buffer,
            exclude=exclude,
            reader=reader,
        )
    else:
        glob_batches = global_batches(shards, batch_size, seed, resample, buffer, exclude, reader)
        batches = (b[rank * local : (rank + 1) * local] for b in glob_batches)
    for step, batch in enumerate(batches):
        if step >= start_step:  # earlier ones were consumed before the checkpoint: not decoded
            yield batch


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
    split_shards: bool = False,
    extras: Sequence[BatchExtra] = (),
) -> Iterator[Any]:
    """This worker's slice of every global batch from `start_step` on (or, with `split_shards`,
    its batches from its own shards), decoded; `exclude`d keys never appear. With `extras`
    (an objective's builders), `Batch`es carrying them."""
    samples = worker_samples(
        shards,
        batch_size=batch_size,
        rank=rank,
        world=world,
        seed=seed,
        resample=resample,
        buffer=buffer,
        start_step=start_step,
        exclude=exclude,
        split_shards=split_shards,
    )
    for mine in samples:
        yield decode_batch(mine, transform, tokenizer, fields, seed, augment, extras)
