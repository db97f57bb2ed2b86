"""The teacher inside a recaption actor: loaded once per process, its locked towers' frozen
features read from the feature store the teacher stage filled (data/features/), so only the
heads run for images and texts it already encoded. Used by the tagger (image-vs-entry scores)
and by the stage to score every caption against its image (CLIP score = cosine similarity)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np


@dataclass
class Teacher:
    """A loaded CLIP split at its frozen parts, with one feature store per tower."""

    ref: str  # the model reference it was loaded from
    version: str  # the frozen image tower's feature-store key (weights + preprocessing digest)
    preprocess: Any
    tokenizer: Any
    image: Any  # TowerSplit
    text: Any  # TowerSplit
    image_store: Any  # FeatureStore | None
    text_store: Any  # FeatureStore | None
    batch_size: int = 64

    def encode_images(self, data: Sequence[bytes], images: Sequence[Any]) -> np.ndarray:
        """L2-normalised image embeddings (n, d); `data` are the stored bytes (the store's
        content ids), `images` the decoded RGB images used for those not stored yet."""
        import torch

        from tasks.clip.featurestore import content_id, encode_cached

        ids = [content_id(d) if d else f"nobytes-{i}" for i, d in enumerate(data)]
        store = self.image_store if all(data) else None

        def pixels(which: list[int]) -> Any:
            return torch.stack([self.preprocess(images[j]) for j in which])

        with torch.no_grad():
            out = encode_cached(self.image, store, ids, pixels, self.batch_size)
        return _normalised(out)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings (n, d) of `texts` (stored ones read, others added)."""
        import torch

        from tasks.clip.featurestore import content_id, encode_cached

        texts = list(texts)
        if not texts:
            return np.zeros((0, self.text.dim or 0), dtype=np.float32)

        def tokens(which: list[int]) -> Any:
            return self.tokenizer([texts[j] for j in which])

        with torch.no_grad():
            out = encode_cached(
                self.text, self.text_store, [content_id(t) for t in texts], tokens, self.batch_size
            )
        return _normalised(out)


def _normalised(x: Any) -> np.ndarray:
    arr = x.detach().float().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return (arr / np.maximum(norms, 1e-12)).astype(np.float32)


@lru_cache(maxsize=2)
def load_teacher(ref: str, use_store: bool = True) -> Teacher:
    """The teacher for `ref`, once per process (an actor's tagger and scorer share it)."""
    from open_clip.model import get_model_preprocess_cfg

    from tasks.clip.featurestore import FeatureStore, default_store_root
    from tasks.clip.load import load_clip, model_config_of
    from tasks.clip.locked import split_image, split_text, tokenizer_config

    model, preprocess, tokenizer = load_clip(ref)
    image = split_image(model, get_model_preprocess_cfg(model))
    cfg = {} if ref.startswith("random:") else model_config_of(ref)
    text = split_text(model, tokenizer_config(cfg))
    root = default_store_root() if use_store and not ref.startswith("random:") else None
    return Teacher(
        ref=ref,
        version=image.key[:16],
        preprocess=preprocess,
        tokenizer=tokenizer,
        image=image,
        text=text,
        image_store=FeatureStore(root, image.key) if root else None,
        text_store=FeatureStore(root, text.key) if root else None,
    )


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two normalised (n, d) arrays: the CLIP score of each pair."""
    return np.einsum("nd,nd->n", a, b).astype(np.float32)


def teacher_ref(params: Any) -> str:
    """The model reference of `paths.teacher` (folders resolved); ValueError naming the field."""
    ref = params.paths.teacher
    if ref is None:
        raise ValueError(
            "paths.teacher: the tagger and the caption scores need a teacher (got null)"
        )
    if ref.startswith("random:") or "://" in ref or ref.startswith("models:/"):
        return str(ref)
    from tasks.io.paths import resolve_path

    return str(resolve_path(ref))
