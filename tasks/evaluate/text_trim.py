"""Evaluate's text features from tokens cut to the batch's longest prompt.

Evaluate's prompts ("a photo of a {c}.") are a few tokens long, but open_clip pads every one to the
model's full context (48 for the demo's student) and `CLIP.encode_text` runs the whole padded
sequence. Where cutting is exact (tasks/clip/texttrim.py says when: a causal mask, absolute
positions, argmax pooling) the embedder encodes the cut tokens; elsewhere it keeps the full context.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def trimmed_text_encoder(model: Any) -> Callable[[Any], Any] | None:
    """`encode_text` over the batch's used columns, or None where that would not give the same
    features (the caller then runs the model's own `encode_text`)."""
    from tasks.clip.texttrim import encode_text, trimmable

    if not trimmable(model):
        return None
    return lambda tokens: encode_text(model, tokens)
