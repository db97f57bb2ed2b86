"""Image and text embeddings: in process for small sets, a Ray Data actor pool for large ones.

Embeddings are L2-normalised float32 (CLIP_benchmark normalises image and text features before
every metric). The actor builds its own model from the reference, so no loaded model is shipped.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np

from tasks.evaluate.params import EmbedParams
from tasks.progress import Progress

LABEL = "evaluate: embedding images"  # progress lines of long embedding passes


def decode_image(data: bytes) -> Any:
    """PIL RGB image, exactly as webdataset's "pil" decoder gives it to CLIP_benchmark."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    return img.convert("RGB")


def pixel_batch(images: Sequence[bytes], preprocess: Any) -> Any:
    import torch

    return torch.stack([preprocess(decode_image(b)) for b in images])


def _autocast(amp: bool) -> Any:
    import torch

    return torch.autocast("cpu", enabled=True) if amp else nullcontext()


def encode_pixels(model: Any, pixels: Any, amp: bool = False) -> Any:
    """Normalised image features of preprocessed pixels (gradients off)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), _autocast(amp):
        return F.normalize(model.encode_image(pixels), dim=-1).float()


def encode_images_local(
    model: Any,
    preprocess: Any,
    images: Sequence[bytes],
    batch_size: int,
    amp: bool = False,
    threads: int = 1,
    label: str = LABEL,
) -> Any:
    """Batches in order; with threads > 0 the next batches are decoded while the model runs."""
    import torch

    batches = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    if not batches:
        return torch.zeros(0)
    progress = Progress(label, total=len(images), unit="images")
    if threads <= 0:
        with progress:
            return torch.cat(
                [
                    _counted(encode_pixels(model, pixel_batch(b, preprocess), amp), progress)
                    for b in batches
                ]
            )
    chunks = []
    with ThreadPoolExecutor(threads) as pool, progress:
        pending = deque(pool.submit(pixel_batch, b, preprocess) for b in batches[: threads + 1])
        for nxt in batches[threads + 1 :] + [None] * (threads + 1):
            pixels = pending.popleft().result()
            if nxt is not None:
                pending.append(pool.submit(pixel_batch, nxt, preprocess))
            chunks.append(_counted(encode_pixels(model, pixels, amp), progress))
            if not pending:
                break
    return torch.cat(chunks)


def _counted(features: Any, progress: Progress) -> Any:
    progress.update(len(features))
    return features


def encode_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 256, amp: bool = False
) -> Any:
    """Normalised text features, in batches."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.no_grad(), _autocast(amp):
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[i : i + batch_size]))
            out.append(F.normalize(model.encode_text(tokens), dim=-1).float())
    return torch.cat(out)


class ImageEmbedder:
    """Ray Data actor: loads the model once in `__init__`, then embeds batches of encoded images."""

    def __init__(self, model_ref: str, amp: bool = False) -> None:
        import torch

        from tasks.evaluate.loading import load_model

        torch.set_num_threads(1)
        self.loaded = load_model(model_ref)
        self.amp = amp

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = pixel_batch(list(batch["image"]), self.loaded.preprocess)
        emb = encode_pixels(self.loaded.model, pixels, self.amp)
        return {"index": np.asarray(batch["index"]), "embedding": emb.numpy()}


def encode_images_ray(
    model_ref: str, images: Sequence[bytes], params: EmbedParams, label: str = LABEL
) -> Any:
    """Embed through `map_batches` with a small actor pool; rows come back sorted by index.
    Progress is counted here, on the driver, as the pool's batches arrive."""
    import ray
    import torch

    items = [{"index": i, "image": b} for i, b in enumerate(images)]
    ds = ray.data.from_items(items, override_num_blocks=min(params.num_blocks, max(1, len(items))))
    out = ds.map_batches(
        ImageEmbedder,
        fn_constructor_kwargs={"model_ref": model_ref, "amp": params.amp},
        batch_size=params.batch_size,
        batch_format="numpy",
        concurrency=params.actors,
        num_cpus=params.cpus_per_actor,
    )
    index, emb = [], []
    with Progress(label, total=len(items), unit="images") as progress:
        for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
            index.append(batch["index"])
            emb.append(batch["embedding"])
            progress.update(len(batch["index"]))
    order = np.argsort(np.concatenate(index), kind="stable")
    return torch.from_numpy(np.concatenate(emb)[order]).float()


def encode_images(
    loaded: Any, images: Sequence[bytes], params: EmbedParams, label: str = LABEL
) -> Any:
    """The Ray pool for sets of `ray_min_samples` images or more when Ray is up, else in process.
    `label` starts the progress lines a long pass prints (tasks/progress.py)."""
    use_ray = len(images) >= params.ray_min_samples
    if use_ray:
        import ray

        use_ray = ray.is_initialized()
    if use_ray:
        return encode_images_ray(loaded.ref, images, params, label)
    return encode_images_local(
        loaded.model, loaded.preprocess, images, params.batch_size, params.amp, label=label
    )
