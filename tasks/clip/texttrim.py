"""The text tower without its padding: open_clip's CLIP text encoder run on the batch's used columns.

Why: captions are short (the demo's curated alt texts end at token 16-32 of a 48-token context),
yet `CLIP.encode_text` always runs the whole context. open_clip's text tower is causal and pools
the token at `argmax` of the ids (the end-of-text token, the largest id), so no position after the
batch's last pooled token can change any pooled output: running the first `L = max(argmax) + 1`
columns gives the same features (same function; float sums may differ in the last bits because the
matmuls have other shapes) at a fraction of the cost. This matters for every method whose speed is
measured against the plain step (FLIP's dropout only shrinks the image tower, so a padded text tower
caps its speed-up) and for plain training alike.

Only open_clip's `CLIP` (built-in text transformer, a causal mask checked entry by entry, argmax
pooling, absolute positions) is trimmed; any other model (HF text towers, which cut their own
padding in tasks/clip/locked.py, CoCa's appended CLS, other pooling) runs its own `encode_text`
unchanged. The train objectives (with gradients) and evaluate's embedder (without) share it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor


def trimmable(model: Any) -> bool:
    """True when trimming is exact for this model: open_clip CLIP, causal mask, argmax pooling."""
    import torch
    from open_clip.model import CLIP

    mask = getattr(model, "attn_mask", None)
    if not (
        type(model) is CLIP
        and getattr(model, "text_pool_type", None) == "argmax"
        and getattr(model, "cls_emb", None) is None
        and isinstance(mask, torch.Tensor)
        and mask.dim() == 2
    ):
        return False
    # causal: -inf strictly above the diagonal, 0 elsewhere (else every position sees the padding)
    above = torch.triu(torch.ones_like(mask, dtype=torch.bool), diagonal=1)
    return bool(torch.isneginf(mask[above]).all() and (mask[~above] == 0).all())


def used_columns(texts: Tensor) -> int:
    """Columns the pooled outputs depend on: the last pooled (argmax) position + 1."""
    return int(texts.argmax(dim=-1).max()) + 1


def encode_text(model: Any, texts: Tensor, normalize: bool = False) -> Tensor:
    """`model.encode_text(texts, normalize)` on the used columns only (open_clip 3.x CLIP body)."""
    import torch.nn.functional as F
    from open_clip.transformer import text_global_pool
    from torch import nn

    n = used_columns(texts) if trimmable(model) else texts.shape[1]
    if n >= texts.shape[1]:
        return model.encode_text(texts, normalize=normalize)
    texts = texts[:, :n]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(texts).to(cast_dtype)
    x = x + model.positional_embedding[:n].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(
        x, texts, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None)
    )
    if model.text_projection is not None:
        if isinstance(model.text_projection, nn.Linear):
            x = model.text_projection(x)
        else:
            x = x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def clip_forward(model: Any, images: Tensor, texts: Tensor) -> dict[str, Any]:
    """What `model(images, texts)` returns as a dict (open_clip's output_dict), with the text tower
    trimmed where that is exact; other models (CoCa: its caption logits) run their own forward."""
    if not trimmable(model):
        own = model(images, texts)
        if not isinstance(own, dict):
            raise ValueError(
                f"{type(model).__name__}: the train stage needs output_dict=True model outputs"
            )
        return own
    out: dict[str, Any] = {
        "image_features": model.encode_image(images, normalize=True),
        "text_features": encode_text(model, texts, normalize=True),
        "logit_scale": model.logit_scale.exp(),
    }
    if getattr(model, "logit_bias", None) is not None:
        out["logit_bias"] = model.logit_bias
    return out
