"""Training from stored features: locked towers are encoded once, the steps run only the heads.

When a tower is locked with nothing unlocked (and, for images, the pixels are not augmented),
its frozen part (tasks/clip/locked.py) maps each image or caption to the same features at every
step and in every run with the same weights and preprocessing. The run first encodes every
trainable sample's frozen features into the feature store (tasks/clip/featurestore.py; images
keyed by the content id of their bytes, captions by the content id of the string, every caption
any caption field can give), then each step reads its batch's features and runs the heads and the
loss. The samples, their order and the caption picked for each are those of the decoding path
(`worker_samples` and `pick_caption` of tasks/train/data.py, the same seeds), so the loss curve
is the same within float tolerance (fp32 on CPU; with bf16 autocast on a GPU the frozen part runs
in fp32 here, a difference of bf16 rounding). The store is a cache: a feature missing at a step
is computed then, and deleting the store only costs time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from tasks.train.params import TrainParams

ENCODE_BATCH = 64  # images or captions per frozen-tower forward while encoding
DECODE_THREADS = 2  # threads decoding images for the frozen tower (torch holds the cores meanwhile)


@dataclass
class CachedTowers:
    """The towers whose frozen features come from the store, with their stores and counts."""

    image: Any = None  # TowerSplit of the image tower, None = decoded and run at every step
    text: Any = None  # TowerSplit of the text tower, None = tokenised and run at every step
    image_store: Any = None  # FeatureStore of `image.key`
    text_store: Any = None  # FeatureStore of `text.key`
    counts: dict[str, int] = field(default_factory=dict)  # features computed / reused per tower
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # shard -> light samples

    def add(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def summary(self) -> dict[str, Any]:
        """What the run reports: which towers were cached, how many features computed vs reused."""
        return {
            "used": self.image is not None or self.text is not None,
            "image": self.image is not None,
            "text": self.text is not None,
            **{k: int(v) for k, v in sorted(self.counts.items())},
        }


def cached_towers(model: Any, built: Any, p: TrainParams, root: str) -> CachedTowers | None:
    """The towers this run can train from stored features (their stores under `root`, which the
    driver resolved, so every Ray worker uses the same one); None when neither can (or when the
    params turn the cache off)."""
    from pathlib import Path

    from tasks.clip.featurestore import FeatureStore
    from tasks.clip.locked import locked_towers, split_image, split_text, tokenizer_config

    if not p.feature_cache:
        return None
    image_ok, text_ok = locked_towers(
        p.lock_image,
        p.lock_image_unlocked_groups,
        p.train_augment,
        p.lock_text,
        p.lock_text_unlocked_layers,
        p.lock_text_freeze_layer_norm,
    )
    if not (image_ok or text_ok):
        return None
    towers = CachedTowers()
    if image_ok:
        towers.image = split_image(model, built.preprocess_cfg)
        towers.image_store = FeatureStore(Path(root), towers.image.key)
    if text_ok:
        towers.text = split_text(model, tokenizer_config(built.model_cfg))
        towers.text_store = FeatureStore(Path(root), towers.text.key)
    return towers


def caption_options(sample: dict[str, Any], fields: dict[str, float]) -> list[str]:
    """Every caption `pick_caption` can return for this sample: each value (each list element) of
    a field with a positive probability, and the `txt` fallback."""
    from tasks.io.wds import sample_json

    meta = sample_json(sample)
    out: list[str] = []
    for name, prob in fields.items():
        value = sample.get(name)
        value = (
            value.decode("utf-8", "replace") if isinstance(value, bytes) else meta.get(name, value)
        )
        values = value if isinstance(value, list) else [value]
        if prob > 0:
            out += [v.strip() for v in values if isinstance(v, str) and v.strip()]
    txt = sample.get("txt", b"")
    out.append(txt.decode("utf-8", "replace").strip() if isinstance(txt, bytes) else str(txt))
    return list(dict.fromkeys(out))


def _image_id(sample: dict[str, Any]) -> str:
    from tasks.clip.featurestore import content_id
    from tasks.io.wds import image_ext

    if IMAGE_ID in sample:
        return str(sample[IMAGE_ID])

    ext = image_ext(sample)
    return content_id(sample[ext] if ext else b"")


def _image_inputs(samples: list[dict[str, Any]], transform: Any) -> Callable[[list[int]], Any]:
    """Builder of frozen-tower inputs for some of `samples`: decoded as the uncached path does
    (deterministic transform), on DECODE_THREADS threads (PIL decodes and resizes outside the GIL)."""
    import torch

    from tasks.train.data import decode_image

    def make(idx: list[int]) -> Any:
        return torch.stack(
            list(
                _decode_pool().map(
                    lambda i: decode_image(_with_bytes(samples[i]), transform, None), idx
                )
            )
        )

    return make


@lru_cache(maxsize=1)
def _decode_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="clipmill-decode")


def _text_inputs(captions: list[str], tokenizer: Any) -> Callable[[list[int]], Any]:
    return lambda idx: tokenizer([captions[i] for i in idx])


def _encode(towers: CachedTowers, tower: str, ids: list[str], make: Callable[..., Any]) -> Any:
    """Frozen features of `ids` from the store, computing (and storing) the missing ones."""
    from tasks.clip.featurestore import encode_missing

    split, store = getattr(towers, tower), getattr(towers, f"{tower}_store")
    feats, computed = encode_missing(split, store, ids, make, ENCODE_BATCH)
    towers.add(f"{tower}_computed", computed)
    return feats


IMAGE_ID = "__image_id__"  # a light record's content id of the image bytes it no longer holds


def _light(sample: dict[str, Any]) -> dict[str, Any]:
    """The sample without its image bytes (the member name stays, with b""), plus their content
    id: everything the steps need once the features are stored, a few hundred bytes."""
    from tasks.io.wds import IMAGE_EXTS

    light = {k: (b"" if k in IMAGE_EXTS else v) for k, v in sample.items()}
    light[IMAGE_ID] = _image_id(sample)
    return light


def _local_samples(
    towers: CachedTowers, shards: list[str], exclude: frozenset[str], rank: int, world: int
) -> Iterator[dict[str, Any]]:
    """One pass over every shard: keeps each sample's light record (every rank, for the steps)
    and yields this rank's share of the trainable samples (image present, not excluded)."""
    from tasks.io.wds import image_ext
    from tasks.train.data import _shard_samples

    k = 0
    for shard in shards:
        kept = towers.records.setdefault(shard, [])
        for sample in _shard_samples(shard):
            kept.append(_light(sample))
            if image_ext(sample) is None or sample.get("__key__") in exclude:
                continue
            if k % world == rank:
                yield sample
            k += 1


def replay(towers: CachedTowers) -> Callable[[str], Iterator[dict[str, Any]]]:
    """A shard reader for `worker_samples` that replays the light records (fresh dicts: the
    stream tags each yielded sample); a shard not indexed is read from disk."""
    from tasks.train.data import _shard_samples

    def reader(shard: str) -> Iterator[dict[str, Any]]:
        records = towers.records.get(shard)
        if records is None:
            yield from _shard_samples(shard)
            return
        for r in records:
            yield dict(r)

    return reader


def _with_bytes(sample: dict[str, Any]) -> dict[str, Any]:
    """A light record's full sample, read again from its shard (a feature the store lacks at a
    step: rare, e.g. the store was deleted mid-run)."""
    from tasks.train.data import _shard_samples

    if sample.get(IMAGE_ID) is None:
        return sample
    for full in _shard_samples(sample["__url__"]):
        if full.get("__key__") == sample["__key__"]:
            return full
    raise FileNotFoundError(f"sample {sample['__key__']} is no longer in {sample['__url__']}")


def encode_all(
    towers: CachedTowers,
    p: TrainParams,
    *,
    transform: Any,
    tokenizer: Any,
    rank: int,
    world: int,
    label: str,
) -> None:
    """Encode this rank's share of every trainable sample's frozen features that the store lacks
    (ranks split the samples; a store another run filled is reused); counts go to `towers`."""
    from tasks.progress import Progress
    from tasks.train.data import count_samples, list_shards, load_excluded

    shards, exclude = list_shards(p.shards), load_excluded(p.exclude_uids)
    total = -(-count_samples(shards, exclude) // world)
    seen_images: set[str] = set()
    seen_texts: set[str] = set()
    chunk: list[dict[str, Any]] = []
    progress = Progress(
        f"{label}: encoding locked towers once",
        total=total,
        unit="samples",
        mode=None if rank == 0 else "off",
    )

    def flush() -> None:
        _encode_chunk(towers, p, chunk, seen_images, seen_texts, transform, tokenizer)
        progress.update(len(chunk), **towers.counts)
        chunk.clear()

    for sample in _local_samples(towers, shards, exclude, rank, world):
        chunk.append(sample)
        if len(chunk) >= 4 * ENCODE_BATCH:
            flush()
    flush()
    progress.close()


def _encode_chunk(
    towers: CachedTowers,
    p: TrainParams,
    chunk: list[dict[str, Any]],
    seen_images: set[str],
    seen_texts: set[str],
    transform: Any,
    tokenizer: Any,
) -> None:
    """One chunk of samples: its new image ids and caption strings, looked up or computed."""
    if towers.image is not None:
        picked = []
        for sample in chunk:
            i = _image_id(sample)
            if i not in seen_images:
                seen_images.add(i)
                picked.append((i, sample))
        _encode(
            towers,
            "image",
            [i for i, _ in picked],
            _image_inputs([s for _, s in picked], transform),
        )
        towers.add("image_ids", len(picked))
    if towers.text is not None:
        captions = []
        for sample in chunk:
            for c in caption_options(sample, p.caption_fields):
                if c not in seen_texts:
                    seen_texts.add(c)
                    captions.append(c)
        from tasks.clip.featurestore import content_id

        captions.sort(key=len)  # similar lengths batch together: less padding to run
        _encode(
            towers, "text", [content_id(c) for c in captions], _text_inputs(captions, tokenizer)
        )
        towers.add("text_ids", len(captions))


def total_counts(towers: CachedTowers, world: int) -> dict[str, Any]:
    """The run's counts summed over ranks (every rank calls this: it is also the barrier after
    which every rank's features are in the store); `*_reused` = ids found in the store."""
    counts = dict(towers.counts)
    if world > 1:
        import torch
        import torch.distributed as dist

        names = sorted(counts)
        values = torch.tensor([counts[n] for n in names], dtype=torch.float64)
        dist.all_reduce(values)
        counts = {n: int(v) for n, v in zip(names, values.tolist(), strict=True)}
    for tower in ("image", "text"):
        if f"{tower}_ids" in counts:
            counts[f"{tower}_reused"] = counts[f"{tower}_ids"] - counts.get(f"{tower}_computed", 0)
    towers.counts = counts
    return towers.summary()


def feature_batches(
    towers: CachedTowers,
    samples: Iterator[list[dict[str, Any]]],
    p: TrainParams,
    *,
    transform: Any,
    tokenizer: Any,
) -> Iterator[tuple[Any, Any]]:
    """(image input, text input) per step for the samples `worker_samples` gives: stored features
    for a cached tower, decoded pixels / tokens for the other; captions picked exactly as
    `decode_batch` picks them (same per-sample seed)."""
    import torch

    from tasks.clip.featurestore import content_id
    from tasks.train.data import decode_image, pick_caption, sample_seed

    for mine in samples:
        seeds = [sample_seed(p.seed, s["__index__"]) for s in mine]
        captions = [
            pick_caption(s, p.caption_fields, random.Random(seed))
            for s, seed in zip(mine, seeds, strict=True)
        ]
        if towers.image is not None:
            ids = [_image_id(s) for s in mine]
            images = torch.from_numpy(
                np.ascontiguousarray(_encode(towers, "image", ids, _image_inputs(mine, transform)))
            )
        else:
            aug = p.train_augment
            images = torch.stack(
                [
                    decode_image(s, transform, seed if aug else None)
                    for s, seed in zip(mine, seeds, strict=True)
                ]
            )
        if towers.text is not None:
            ids = [content_id(c) for c in captions]
            texts = torch.from_numpy(
                np.ascontiguousarray(
                    _encode(towers, "text", ids, _text_inputs(captions, tokenizer))
                )
            )
        else:
            texts = tokenizer(captions)
        yield images, texts


def heads_model(model: Any, towers: CachedTowers) -> Any:
    """The model as the loop sees it: forward(image input, text input) -> open_clip's output dict,
    running only the heads on stored features; parameters and `logit_scale` are the model's."""
    import torch
    import torch.nn.functional as F

    class FeatureHeads(torch.nn.Module):
        """Heads on stored features, the full tower where a tower is not cached."""

        def __init__(self) -> None:
            super().__init__()
            self.clip = model

        @property
        def logit_scale(self) -> Any:
            return self.clip.logit_scale

        def forward(self, images: Any, texts: Any) -> dict[str, Any]:
            img = (
                F.normalize(towers.image.head(images), dim=-1)
                if towers.image is not None
                else self.clip.encode_image(images, normalize=True)
            )
            txt = (
                F.normalize(towers.text.head(texts), dim=-1)
                if towers.text is not None
                else self.clip.encode_text(texts, normalize=True)
            )
            out = {
                "image_features": img,
                "text_features": txt,
                "logit_scale": self.clip.logit_scale.exp(),
            }
            if getattr(self.clip, "logit_bias", None) is not None:
                out["logit_bias"] = self.clip.logit_bias
            return out

    return FeatureHeads()
