"""The teacher side of the reinforce stage: K views per image and every caption, embedded.

Views are made by `tasks.clip.reinforced.apply_aug` at the teacher's size and normalisation, the
same function the train stage uses to rebuild them, so what the teacher embedded is what training
sees. Embeddings are L2-normalised (what CLIP logits and distillation compare).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from tasks.clip.reinforced import AugSampling, ReinforcedRow, ViewConfig, apply_aug, sample_augs


@dataclass
class Teacher:
    """A loaded teacher and what the manifest records of it."""

    model: Any
    tokenizer: Any
    view: ViewConfig
    device: Any
    embed_dim: int
    logit_scale: float


def load_teacher(ref: str, device: str) -> Teacher:
    """The teacher, its view config (open_clip's preprocess_cfg of the model) and dimension."""
    import torch
    from open_clip.model import get_model_preprocess_cfg

    from tasks.clip import load_clip

    dev = device if device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    model, _, tokenizer = load_clip(ref, device=dev)
    view = ViewConfig.from_preprocess_cfg(get_model_preprocess_cfg(model))
    with torch.no_grad():
        probe = model.encode_text(tokenizer(["a"]).to(dev), normalize=True)
    scale = float(model.logit_scale.detach().exp()) if hasattr(model, "logit_scale") else 100.0
    return Teacher(model, tokenizer, view, torch.device(dev), int(probe.shape[-1]), scale)


def uid_rng(seed: int, uid: str) -> np.random.Generator:
    """One generator per (seed, uid): a sample's views depend on nothing else (not its shard,
    not the batch, not a resume)."""
    digest = hashlib.sha256(f"{seed}:{uid}".encode()).digest()
    return np.random.default_rng([seed & 0xFFFFFFFF, int.from_bytes(digest[:8], "big")])


def caption_of(parts: dict[str, bytes], meta: dict[str, Any], field: str) -> str | None:
    """A caption field: the sample member `<field>` (e.g. txt) or the JSON key; a list of captions
    is embedded as one text joined by ", " (documented in docs/CONTRACTS.md); empty -> None."""
    value: Any = parts.get(field)
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else meta.get(field)
    if isinstance(value, list):
        value = ", ".join(str(v) for v in value if str(v).strip())
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()


@dataclass
class Pending:
    """A decoded sample waiting for its embeddings."""

    uid: str
    image: Any
    captions: dict[str, str | None]


def decode(uid: str, image_bytes: bytes, parts: dict[str, bytes], fields: list[str]) -> Pending:
    """Decode one sample (RGB); raises on an undecodable image (the stage counts and skips it)."""
    from PIL import Image

    from tasks.io.wds import sample_json

    image = Image.open(io.BytesIO(image_bytes))
    image.load()
    meta = sample_json(parts)
    return Pending(uid, image.convert("RGB"), {f: caption_of(parts, meta, f) for f in fields})


def _encode(fn: Any, batch: list[Any], size: int) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(batch), size):
            out.append(fn(batch[i : i + size]).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def embed_samples(
    teacher: Teacher, samples: list[Pending], k: int, sampling: AugSampling, seed: int, batch: int
) -> list[ReinforcedRow]:
    """K augmentations per sample, the teacher's embedding of each view and of each caption."""
    import torch

    augs = [
        sample_augs(uid_rng(seed, s.uid), s.image.width, s.image.height, k, sampling)
        for s in samples
    ]
    views = [
        apply_aug(s.image, a, teacher.view) for s, sa in zip(samples, augs, strict=True) for a in sa
    ]
    m, dev = teacher.model, teacher.device
    img = _encode(
        lambda xs: m.encode_image(torch.stack(xs).to(dev), normalize=True), views, batch
    ).reshape(len(samples), k, -1)
    texts = sorted({t for s in samples for t in s.captions.values() if t is not None})
    txt = _encode(
        lambda xs: m.encode_text(teacher.tokenizer(xs).to(dev), normalize=True), texts, batch
    )
    index = {t: i for i, t in enumerate(texts)}
    return [
        ReinforcedRow(
            s.uid,
            a,
            img[i],
            {f: None if t is None else txt[index[t]] for f, t in s.captions.items()},
        )
        for i, (s, a) in enumerate(zip(samples, augs, strict=True))
    ]


def params_digest(obj: Any) -> str:
    """Short sha256 of a JSON-able object (the parts folder's fingerprint)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
