"""Decoding, preprocessing and the plain (uncached) embedding path.

Embeddings are L2-normalised float32 (CLIP_benchmark normalises image and text features before
every metric). The stage embeds through `tasks.evaluate.features.Embedder` (each image and text
once per model, frozen-tower features from the store); `encode_images_local` / `encode_texts`
here run the whole model on every input: the reference the embedder is tested against.
"""

from __future__ import annotations

import io
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

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


def autocast(amp: bool) -> Any:
    """bf16 autocast on the CPU when `amp`, else nothing (fp32)."""
    import torch

    return torch.autocast("cpu", enabled=True) if amp else nullcontext()


def encode_pixels(model: Any, pixels: Any, amp: bool = False) -> Any:
    """Normalised image features of preprocessed pixels (gradients off)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad(), autocast(amp):
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
    with torch.no_grad(), autocast(amp):
        for i in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[i : i + batch_size]))
            out.append(F.normalize(model.encode_text(tokens), dim=-1).float())
    return torch.cat(out)
