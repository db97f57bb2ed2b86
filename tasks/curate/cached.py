"""Curate's CLIP embeddings from the feature store: the teacher stage already ran the locked
towers (MobileNetV2 trunk, MiniLM + pooler) over every pool image and caption and stored their
frozen features (tasks/clip/featurestore.py), so curate applies only the heads.

The store is keyed by the frozen part's fingerprint (weights + preprocessing / tokenizer,
tasks/clip/locked.py) and by the content id of the image bytes / caption text, so a feature is
reused only where the uncached path would compute the same one: `head(frozen(x))` equals
`encode_image(x)` / `encode_text(x)` (unnormalised) within float tolerance. Missing features
are computed here and added, so a rerun (another threshold, another t) reads them too. Images are
decoded with curate's own `decode_rgb` and the model's eval transform either way; the teacher
decodes with `convert("RGB")`, the same pixels for the crawl's JPEGs (no alpha to composite).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class CachedTowers:
    """Both towers of a loaded model split at their frozen part, with one store each."""

    image: Any  # TowerSplit of the image tower
    text: Any  # TowerSplit of the text tower
    image_store: Any  # FeatureStore of image.key
    text_store: Any  # FeatureStore of text.key
    batch_size: int  # inputs per frozen-part forward pass for the missing ones

    @classmethod
    def open(cls, model: Any, ref: str, root: Path, batch_size: int) -> CachedTowers:
        """Split `model` (loaded from `ref`) with the preprocessing it was built with (what the
        teacher keyed its features by) and open its stores under `root`."""
        from open_clip.model import get_model_preprocess_cfg

        from tasks.clip.featurestore import FeatureStore
        from tasks.clip.load import model_config_of
        from tasks.clip.locked import split_image, split_text, tokenizer_config

        image = split_image(model, get_model_preprocess_cfg(model))
        text = split_text(model, tokenizer_config(model_config_of(ref)))
        return cls(
            image=image,
            text=text,
            image_store=FeatureStore(root, image.key),
            text_store=FeatureStore(root, text.key),
            batch_size=batch_size,
        )

    def encode_images(self, data: list[bytes], pixels: Callable[[list[int]], Any]) -> Any:
        """Image tower outputs (unnormalised) of the images `data`; `pixels(indices)` builds
        the preprocessed batch of those not stored yet."""
        from tasks.clip.featurestore import content_id, encode_cached

        ids = [content_id(d) for d in data]
        return encode_cached(self.image, self.image_store, ids, pixels, self.batch_size)

    def encode_texts(self, texts: list[str], tokens: Callable[[list[int]], Any]) -> Any:
        """Text tower outputs (unnormalised) of `texts`; `tokens(indices)` tokenises those not
        stored yet."""
        from tasks.clip.featurestore import content_id, encode_cached

        ids = [content_id(t) for t in texts]
        return encode_cached(self.text, self.text_store, ids, tokens, self.batch_size)


def normalised(x: Any) -> np.ndarray:
    """L2-normalised rows as float32 numpy (what the pool stores)."""
    import torch

    with torch.no_grad():
        out: np.ndarray = torch.nn.functional.normalize(x.float(), dim=-1).numpy()
    return out
