"""Greedy soup's held-out score: zero-shot top-1 of a candidate state dict on held-out splits.

Scored through the library's model loading (`load_clip` of the base folder, then each candidate's
weights loaded into that one model), on a split that is NOT the evaluate stage's `test` split
(default `val`, written by the sample stage from on-site items of the eval classes). Prompts
follow CLIP_benchmark: every template per class, normalised, averaged, normalised again; images
and prompts are decoded and tokenised once and reused for every candidate.

Frozen parts run once, not once per candidate: each tower is split at its frozen part
(tasks/clip/locked.py: a timm trunk, an HF transformer + pooler, else the whole tower) and the
frozen features of the held-out images and prompts are kept per split `key` (the sha256 of the
frozen weights and the preprocessing / tokenizer). A candidate whose frozen weights are those
of a candidate scored before (the suite's experts are fine-tuned with both towers locked, and a
key no expert changes keeps the base's exact bytes in every method) runs only the heads; one
whose frozen weights differ has another key, so its frozen features are computed (once per
key). The head runs on the frozen features in the same `batch_size` chunks either way, so the
scores are those of the whole towers (tests/merge/test_heldout.py compares both paths). Below
the in-memory cache sits the feature store the evaluate stage uses (tasks/clip/featurestore.py,
`heldout.feature_store`): a pure cache keyed the same way, so a second run reads the frozen
features instead of computing them. In memory, features of at most `KEPT_KEYS` keys per tower
are kept (the least recently used go first): a run whose candidates all differ in their frozen
weights (towers not locked) does not grow without bound.
"""

from __future__ import annotations

import io
import tarfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
KEPT_KEYS = 4  # frozen-feature sets kept in memory per tower (distinct frozen weights)


class HeldoutError(ValueError):
    """A held-out set is missing or unreadable; the message names the set and the path."""


@dataclass
class HeldoutSet:
    name: str
    images: Any  # (N, 3, H, W) preprocessed
    labels: Any  # (N,)
    tokens: Any  # (C * T, context) tokenised prompts
    n_templates: int
    image_ids: list[str] = field(default_factory=list)  # content ids of the image bytes (store ids)
    prompt_ids: list[str] = field(default_factory=list)  # content ids of the prompts (store ids)


def read_split(root: Path, name: str, split: str, max_items: int) -> list[tuple[bytes, int]]:
    """(image bytes, class index) of the first max_items samples of `<root>/<name>/<split>`."""
    folder = root / name / split
    tars = sorted(folder.glob("*.tar"), key=lambda p: int(p.stem) if p.stem.isdigit() else 0)
    if not tars:
        raise HeldoutError(f"held-out set {name!r}: no {split} split at {folder}")
    found: dict[str, dict[str, bytes]] = {}
    for path in tars:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                fh = tar.extractfile(member)
                if fh is not None:
                    found.setdefault(key, {})[ext] = fh.read()
    out = []
    for key in sorted(found):
        parts = found[key]
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        if image is not None and "cls" in parts:
            out.append((image, int(parts["cls"].decode().strip())))
        if len(out) >= max_items:
            break
    if not out:
        raise HeldoutError(f"held-out set {name!r}: no labelled images in {folder}")
    return out


def prepare(
    root: Path, names: Sequence[str], split: str, max_items: int, preprocess: Any, tokenizer: Any
) -> list[HeldoutSet]:
    """Decode and preprocess every set once."""
    import torch
    from PIL import Image

    from tasks.clip.featurestore import content_id

    sets = []
    for name in names:
        rows = read_split(root, name, split, max_items)
        classes = (root / name / "classnames.txt").read_text(encoding="utf-8").splitlines()
        templates = (
            (root / name / "zeroshot_classification_templates.txt")
            .read_text(encoding="utf-8")
            .splitlines()
        )
        images = torch.stack(
            [preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b, _ in rows]
        )
        labels = torch.tensor([label for _, label in rows])
        prompts = [t.format(c=c) for c in classes for t in templates]
        sets.append(
            HeldoutSet(
                name,
                images,
                labels,
                tokenizer(prompts),
                len(templates),
                [content_id(b) for b, _ in rows],
                [content_id(p) for p in prompts],
            )
        )
    return sets


class _FrozenCache:
    """Frozen features per (split key, set name) of one tower, the `KEPT_KEYS` most recently
    used keys in memory, the feature store (if any) below them."""

    def __init__(self, kind: str, store_root: Path | None) -> None:
        self.kind = kind
        self.store_root = store_root
        self._by_key: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.computed = 0  # inputs whose frozen features were computed here
        self.from_store = 0  # inputs whose frozen features were read from the store
        self.keys: set[str] = set()  # distinct frozen weights met

    def features(self, split: Any, s: HeldoutSet, ids: list[str], inputs: Any, batch: int) -> Any:
        """(n, d) float32 frozen features of `inputs` (rows named by `ids`) under `split.key`."""
        import torch

        from tasks.clip.featurestore import FeatureStore, encode_missing

        self.keys.add(split.key)
        sets = self._by_key.setdefault(split.key, {})
        self._by_key.move_to_end(split.key)
        while len(self._by_key) > KEPT_KEYS:
            self._by_key.popitem(last=False)
        if s.name not in sets:
            store = FeatureStore(self.store_root, split.key) if self.store_root else None
            feats, computed = encode_missing(
                split, store, ids, lambda idx: inputs[torch.as_tensor(idx)], batch
            )
            self.computed += computed
            self.from_store += len(set(ids)) - computed
            sets[s.name] = torch.from_numpy(feats)
        return sets[s.name]


class HeldoutScorer:
    """Callable: state dict -> mean zero-shot top-1 over the held-out sets.

    `store_root`: the feature store holding frozen features (None = in memory only);
    `reuse_frozen=False` runs both whole towers on every input for every candidate (the
    reference the cached path is tested against)."""

    def __init__(
        self,
        base_folder: Path,
        root: Path,
        names: Sequence[str],
        split: str,
        max_items: int,
        batch_size: int,
        store_root: Path | None = None,
        reuse_frozen: bool = True,
    ) -> None:
        from open_clip.model import get_model_preprocess_cfg

        from tasks.clip import load_clip
        from tasks.clip.load import model_config_of
        from tasks.clip.locked import tokenizer_config

        self.model, preprocess, tokenizer = load_clip(base_folder)
        self.sets = prepare(root, names, split, max_items, preprocess, tokenizer)
        self.batch_size = batch_size
        self.calls = 0
        self.reuse_frozen = reuse_frozen
        self._preprocess_cfg = dict(get_model_preprocess_cfg(self.model))
        self._tokenizer_cfg = tokenizer_config(model_config_of(str(base_folder)))
        self._images = _FrozenCache("image", store_root)
        self._texts = _FrozenCache("text", store_root)

    def __call__(self, state: dict[str, Any]) -> float:
        scores = self.per_set(state)
        return float(sum(scores.values()) / len(scores))

    def per_set(self, state: dict[str, Any]) -> dict[str, float]:
        """Top-1 per held-out set of the model with `state`'s weights."""
        logits = self.logits(state)
        return {
            s.name: int((logits[s.name].argmax(dim=1) == s.labels).sum()) / len(s.labels)
            for s in self.sets
        }

    def logits(self, state: dict[str, Any]) -> dict[str, Any]:
        """Cosine similarities (n images, n classes) per held-out set of the model with
        `state`'s weights: what top-1 is read from."""
        own = self.model.state_dict()
        self.model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        self.model.eval()
        self.calls += 1
        if not self.reuse_frozen:
            return {s.name: self._whole_towers(s) for s in self.sets}
        from tasks.clip.locked import split_image, split_text

        image = split_image(self.model, self._preprocess_cfg)
        text = split_text(self.model, self._tokenizer_cfg)
        return {s.name: self._heads(s, image, text) for s in self.sets}

    def stats(self) -> dict[str, int]:
        """How the frozen parts were run: distinct frozen weights met per tower, inputs computed
        and read from the store (the stage's metrics)."""
        out = {"candidates": self.calls}
        for cache in (self._images, self._texts):
            out[f"{cache.kind}_frozen_keys"] = len(cache.keys)
            out[f"{cache.kind}_frozen_computed"] = cache.computed
            out[f"{cache.kind}_frozen_from_store"] = cache.from_store
        return out

    def _heads(self, s: HeldoutSet, image: Any, text: Any) -> Any:
        """Logits from the frozen features (cached per key) through each tower's head."""
        import torch
        import torch.nn.functional as F

        n_tokens = max(1, len(s.prompt_ids))
        with torch.no_grad():
            frozen_text = self._texts.features(text, s, s.prompt_ids, s.tokens, n_tokens)
            classifier = self._classifier(text.head(frozen_text), s)
            frozen = self._images.features(image, s, s.image_ids, s.images, self.batch_size)
            return torch.cat(
                [
                    F.normalize(image.head(frozen[i : i + self.batch_size]).float(), dim=-1)
                    @ classifier.T
                    for i in range(0, len(frozen), self.batch_size)
                ]
            )

    def _whole_towers(self, s: HeldoutSet) -> Any:
        """Logits from both whole towers on the raw inputs (no frozen features kept)."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            classifier = self._classifier(self.model.encode_text(s.tokens), s)
            return torch.cat(
                [
                    F.normalize(
                        self.model.encode_image(s.images[i : i + self.batch_size]).float(), dim=-1
                    )
                    @ classifier.T
                    for i in range(0, len(s.images), self.batch_size)
                ]
            )

    @staticmethod
    def _classifier(text: Any, s: HeldoutSet) -> Any:
        """Every template per class normalised, averaged, normalised again (CLIP_benchmark)."""
        import torch.nn.functional as F

        text = F.normalize(text.float(), dim=-1)
        text = text.reshape(-1, s.n_templates, text.shape[-1]).mean(dim=1)
        return F.normalize(text, dim=-1)
