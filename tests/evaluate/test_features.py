"""The evaluate embedder: every image and text once per model, the same embeddings as running the
whole model on every input, and the feature store a pure cache (same numbers with and without
it; a model whose frozen part matches reads it and applies only its head)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from tasks.evaluate.embed import encode_images_local, encode_texts
from tasks.evaluate.features import Embedder
from tasks.evaluate.loading import LoadedModel, load_model
from tasks.evaluate.params import EmbedParams

from .sets import COLOURS


def _count_frozen(emb: Embedder) -> dict[str, int]:
    """Wrap both towers' frozen parts to count the inputs they actually run on."""
    counts = {"image": 0, "text": 0}
    for kind in counts:
        split = getattr(emb, f"{kind}_split")
        inner = split.frozen_fn

        def counted(x: Any, inner: Any = inner, kind: str = kind) -> Any:
            counts[kind] += len(x)
            return inner(x)

        object.__setattr__(split, "frozen_fn", counted)
    return counts


@pytest.mark.parametrize("channels_last", [True, False])
def test_embeddings_match_the_whole_model_path(tiny_model, eval_root, channels_last):
    from tasks.evaluate.datasets import load_set

    s = load_set("colours", eval_root, eval_root)
    loaded = load_model(str(tiny_model))
    plain_img = encode_images_local(loaded.model, loaded.preprocess, s.images, 8)
    prompts = [f"a {c} square" for c in COLOURS]
    plain_txt = encode_texts(loaded.model, loaded.tokenizer, prompts)
    emb = Embedder(load_model(str(tiny_model)), EmbedParams(channels_last=channels_last), None)
    torch.testing.assert_close(emb.images(s.images), plain_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(emb.texts(prompts), plain_txt, rtol=1e-5, atol=1e-5)


def test_each_distinct_image_and_text_is_encoded_once(tiny_model, eval_root):
    from tasks.evaluate.datasets import load_set

    s = load_set("colours", eval_root, eval_root)
    emb = Embedder(load_model(str(tiny_model)), EmbedParams(batch_size=5), None)
    counts = _count_frozen(emb)
    first = emb.images(s.images[:10])
    both = emb.images([*s.images, *s.images[:3]])  # 10 seen, 14 new, 3 repeated within the call
    assert counts["image"] == len(s.images), "every distinct image through the tower once"
    torch.testing.assert_close(both[:10], first)
    torch.testing.assert_close(both[-3:], first[:3])
    assert emb.stats.images_unique == len(s.images) and emb.stats.images_computed == len(s.images)
    emb.texts(["a", "b", "a"])
    emb.texts(["b", "c"])
    assert counts["text"] == 3


TIMINGS = (
    "images_per_s",
    "embedding",
    "stage_seconds",
    "task_seconds",
    "task_cpu_seconds",
    "membership_seconds",
    "membership_cpu_seconds",
)


def _strip_times(m: Any) -> Any:
    """Metrics without what measures time, or how an embedding came to be."""
    if isinstance(m, dict):
        return {k: _strip_times(v) for k, v in m.items() if k not in TIMINGS}
    return m


def test_same_numbers_with_and_without_the_store(tmp_path, tiny_model, eval_root, monkeypatch):
    """The whole stage: no store, a cold store, a warm store (every frozen feature read, none
    computed) give the same metrics, to the last bit."""
    from tasks.evaluate.params import EvaluateParams
    from tasks.evaluate.stage import run

    from .test_stage import _params

    monkeypatch.setenv("CLIPMILL_FEATURE_STORE", str(tmp_path / "features"))

    def once(store: bool, name: str) -> dict[str, Any]:
        raw = _params(tmp_path, tiny_model, eval_root, output_dir=str(tmp_path / name))
        raw["embed"] = {"batch_size": 8, "feature_store": store}
        raw["membership"]["enabled"] = False
        return run(EvaluateParams.model_validate(raw))

    without = once(False, "without")
    assert not (tmp_path / "features").exists(), "feature_store=false writes nothing"
    cold = once(True, "cold")
    warm = once(True, "warm")
    stats = warm["tiny"]["embedding"]
    assert stats["images_computed"] == 0 and stats["images_from_store"] == stats["images_unique"]
    assert stats["texts_computed"] == 0 and stats["texts_from_store"] > 0
    assert cold["tiny"]["embedding"]["images_computed"] == stats["images_unique"]
    assert _strip_times(without) == _strip_times(cold) == _strip_times(warm)


@pytest.fixture(scope="module")
def lit_pair() -> tuple[LoadedModel, LoadedModel]:
    """A small LiT model (timm MobileNetV2 trunk + MiniLM, random weights, 32 px) and the same
    model with new heads: what retraining a LiT teacher changes."""
    from tasks.clip import build_model

    built = build_model("clipmill-lit-mnv2-minilm", image_size=32)

    def loaded(model: Any, name: str) -> LoadedModel:
        return LoadedModel(
            name, name, "lit", model.eval(), built.preprocess_val, built.tokenizer, built.model_cfg
        )

    first = built.model
    second = copy.deepcopy(first)
    with torch.no_grad():
        for module in (second.visual.head, second.text.proj):
            for q in module.parameters():
                q.add_(torch.randn_like(q))
    return loaded(first, "lit-a"), loaded(second, "lit-b")


def test_retrained_head_reads_the_stored_frozen_features(tmp_path, eval_root, lit_pair):
    from tasks.evaluate.datasets import load_set

    s = load_set("colours", eval_root, eval_root)
    prompts = [f"a {c} square" for c in COLOURS]
    a, b = lit_pair
    first = Embedder(a, EmbedParams(batch_size=8), tmp_path / "store")
    first.images(s.images), first.texts(prompts)
    second = Embedder(b, EmbedParams(batch_size=8), tmp_path / "store")
    assert second.image_split.key == first.image_split.key, "same trunk, same preprocessing"
    counts = _count_frozen(second)
    img, txt = second.images(s.images), second.texts(prompts)
    assert counts == {"image": 0, "text": 0}, "only the heads ran"
    assert second.stats.images_from_store == len(s.images)
    # and the numbers are the retrained model's own, not the first model's
    plain_img = encode_images_local(b.model, b.preprocess, s.images, 8)
    plain_txt = encode_texts(b.model, b.tokenizer, prompts)
    torch.testing.assert_close(img, plain_img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(txt, plain_txt, rtol=1e-4, atol=1e-5)
    assert not np.allclose(img.numpy(), first.images(s.images).numpy(), atol=1e-3)
