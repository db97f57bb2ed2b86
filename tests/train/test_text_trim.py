"""The trimmed text tower (tasks/clip/texttrim.py): same features and gradients as open_clip's
full-context `encode_text`, and only where that is exact."""

from __future__ import annotations

import pytest
import torch


def _tokens(model_name: str) -> tuple[object, torch.Tensor]:
    from tasks.clip import build_model

    built = build_model(model_name)
    texts = built.tokenizer(["a red car", "two small dogs on a sofa in the sun", "cat"])
    return built.model, texts


def test_trimmed_text_features_equal_the_full_context_ones() -> None:
    from tasks.clip.texttrim import encode_text, trimmable, used_columns

    torch.manual_seed(0)
    model, texts = _tokens("clipmill-tiny-vit")
    assert trimmable(model)
    n = used_columns(texts)
    assert 3 < n < texts.shape[1]  # the longest caption's end-of-text + 1, not the context
    assert n == int((texts == texts.max()).nonzero()[:, 1].max()) + 1
    model.eval()
    full = model.encode_text(texts, normalize=True)
    trim = encode_text(model, texts, normalize=True)
    assert trim.shape == full.shape
    torch.testing.assert_close(trim, full, atol=1e-5, rtol=1e-5)
    # not the same function of a shifted input: changing a padding column changes nothing
    padded = texts.clone()
    padded[:, n:] = 7
    torch.testing.assert_close(encode_text(model, padded, normalize=True), trim)


def test_trimmed_text_gradients_equal_the_full_context_ones() -> None:
    from tasks.clip.texttrim import encode_text

    torch.manual_seed(0)
    model, texts = _tokens("clipmill-tiny-vit")
    grads = []
    for fn in (lambda: model.encode_text(texts), lambda: encode_text(model, texts)):
        model.zero_grad(set_to_none=True)
        fn().pow(2).sum().backward()
        grads.append({k: q.grad.clone() for k, q in model.named_parameters() if q.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for k in grads[0]:
        scale = float(grads[0][k].abs().max())  # float sums in another order: relative bound
        torch.testing.assert_close(grads[1][k], grads[0][k], atol=1e-5 * scale, rtol=1e-4, msg=k)


def test_models_where_trimming_is_not_exact_run_their_own_encoder() -> None:
    from tasks.clip.texttrim import clip_forward, encode_text, trimmable

    torch.manual_seed(0)
    model, texts = _tokens("clipmill-tiny-coca")
    assert not trimmable(model)  # CoCa: its forward also returns the caption logits
    model.eval()
    torch.testing.assert_close(
        encode_text(model, texts, normalize=True), model.encode_text(texts, normalize=True)
    )
    images = torch.randn(len(texts), 3, 64, 64)
    assert "logits" in clip_forward(model, images, texts)


def test_clip_forward_matches_the_model_forward() -> None:
    from tasks.clip.texttrim import clip_forward

    torch.manual_seed(0)
    model, texts = _tokens("clipmill-tiny-vit")
    model.eval()
    model.output_dict = True
    images = torch.randn(len(texts), 3, 64, 64)
    ref, got = model(images, texts), clip_forward(model, images, texts)
    assert set(got) == set(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cols", [1, 2])
def test_used_columns_of_tiny_batches(cols: int) -> None:
    from tasks.clip.texttrim import used_columns

    texts = torch.zeros(2, 8, dtype=torch.long)
    texts[0, cols - 1] = 9
    assert used_columns(texts) == cols
