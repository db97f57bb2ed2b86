"""Evaluate's text tower on tokens cut to the longest prompt: the same features as the full
context for a causal CLIP text tower (to float rounding), and never used where it would not be
(a non-causal mask, other pooling). Code-path tests on tiny randomly initialised models."""

from __future__ import annotations

from typing import Any

import torch


def _tiny() -> Any:
    from tasks.clip import build_model

    torch.manual_seed(0)
    built = build_model("clipmill-tiny-vit")
    return built.model.eval(), built.tokenizer


PROMPTS = ["a", "a photo of a cat.", "an icon of a very small red house on a plain background"]


def test_trimmed_features_equal_the_full_context() -> None:
    from tasks.evaluate.text_trim import trimmed_text_encoder

    model, tokenizer = _tiny()
    tokens = tokenizer(PROMPTS)
    encode = trimmed_text_encoder(model)
    assert encode is not None
    seen: list[int] = []
    hook = model.transformer.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
    with torch.no_grad():
        full = model.encode_text(tokens)
        cut = encode(tokens)
        short = encode(tokenizer(PROMPTS[:2]))
    hook.remove()
    longest = int((tokens != 0).sum(dim=1).max())
    assert seen == [model.context_length, longest, int((tokens[:2] != 0).sum(dim=1).max())]
    assert longest < model.context_length  # the cut path ran on fewer positions
    torch.testing.assert_close(cut, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(short, full[:2], rtol=1e-5, atol=1e-5)


def test_not_used_without_a_causal_mask_or_argmax_pooling() -> None:
    """With a full (non-causal) mask every position sees the padding, so cutting it changes
    the features: the encoder refuses; the same for `first` pooling."""
    from tasks.evaluate.text_trim import trimmed_text_encoder

    model, tokenizer = _tiny()
    tokens = tokenizer(PROMPTS)
    n = model.context_length
    model.attn_mask = torch.zeros(n, n)  # bidirectional attention
    assert trimmed_text_encoder(model) is None
    with torch.no_grad():  # why: the full-context features now depend on the padding
        full = model.encode_text(tokens)[0]
        used = int((tokens[0] != 0).sum())
        x = model.token_embedding(tokens[:1, :used]) + model.positional_embedding[:used]
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:used, :used]))
        cut = x[0, tokens[0, :used].argmax()] @ model.text_projection
    assert not torch.allclose(cut, full, atol=1e-4)
    model, _ = _tiny()
    model.text_pool_type = "first"
    assert trimmed_text_encoder(model) is None


def test_embedder_uses_it_for_a_causal_tower(tiny_model: Any) -> None:
    from tasks.evaluate.features import Embedder
    from tasks.evaluate.loading import load_model
    from tasks.evaluate.params import EmbedParams

    emb = Embedder(load_model(str(tiny_model)), EmbedParams(), None)
    assert emb.text_split.frozen_fn != emb.loaded.model.encode_text
