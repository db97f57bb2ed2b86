"""Locked towers split in two: the frozen part whose output can be stored once, and the head.

LiT trains only what sits on top of a locked tower, so the locked part's output for an image or
a caption never changes during a run (or across runs with the same weights and preprocessing).
`split_image` / `split_text` cut an open_clip tower at the last frozen module, so that
`head(frozen(x)) == model.encode_image(x)` (or `encode_text`), unnormalised; `key` fingerprints
everything the frozen output depends on, so a feature store keyed by it is a pure cache.

Where each tower is cut (open_clip 3.x, read from its timm_model.py / hf_model.py / model.py):
- `TimmModel` (timm trunk + `head`): frozen = `trunk` (timm's own pooling included, classifier
  reset), head = `visual.head` (dropout + linear / mlp projection, or attention pooling).
- `HFTextEncoder`: frozen = `transformer` + `pooler` with the padding attention mask exactly as
  its forward builds it, head = `proj`.
- anything else (open_clip's own ViT / text transformer): frozen = the whole tower, head =
  identity (a locked plain tower has nothing trainable on top of it).
The frozen part always runs in eval mode without gradients (dropout off, BatchNorm on its running
statistics): a stored feature must not depend on the batch it was computed in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

FORMAT_VERSION = 1  # bump when the meaning of a stored feature changes (cut point, dtype, pooling)


@dataclass(frozen=True)
class TowerSplit:
    """One tower cut into `frozen` (features to store) and `head` (what trains on top of them)."""

    key: str  # fingerprint of the frozen part: weights + preprocessing/tokenizer + format version
    frozen_fn: Callable[[Any], Any]  # inputs -> frozen features (eval mode, no grad)
    head_fn: Callable[[Any], Any]  # frozen features -> tower output (unnormalised)
    dim: int  # width of the frozen features
    kind: str  # "image" or "text": which tower (for messages and store folders)
    modules: tuple[Any, ...] = field(default=())  # the frozen modules (put in eval while encoding)

    @property
    def device(self) -> Any:
        """Where the frozen part's weights live: inputs are moved there."""
        import torch

        for module in self.modules:
            for tensor in list(module.parameters()) + list(module.buffers()):
                return tensor.device
        return torch.device("cpu")

    def frozen(self, x: Any) -> Any:
        """Frozen features of a batch of inputs, in eval mode and without gradients."""
        import torch

        with torch.no_grad(), _eval_mode(self.modules):
            return self.frozen_fn(x.to(self.device))

    def head(self, f: Any) -> Any:
        """The trainable rest of the tower on stored features (gradients flow as the caller allows)."""
        return self.head_fn(f.to(self.device))


@contextmanager
def _eval_mode(modules: tuple[Any, ...]) -> Iterator[None]:
    """Eval mode for the duration, every submodule's own flag put back afterwards."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.train(flag)


def tensors_digest(named: Iterator[tuple[str, Any]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda kv: kv[0]):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(t.view(dtype=_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()


def _byte_dtype() -> Any:
    import torch

    return torch.uint8


def fingerprint(kind: str, cut: str, weights_digest: str, config: dict[str, Any]) -> str:
    """The store key: what the frozen output depends on, hashed (64 hex characters)."""
    blob = json.dumps(
        {
            "format": FORMAT_VERSION,
            "kind": kind,
            "cut": cut,
            "weights": weights_digest,
            "config": config,
        },
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _channels_last(trunk: Any, x: Any) -> Any:
    """A conv trunk on channels-last input: the same values (float rounding aside), about twice
    as fast on CPU for MobileNet-style depthwise convolutions (measured: 20 -> 11 ms per 128-px
    image on one core); the weights stay as they are."""
    import torch

    return trunk(x.contiguous(memory_format=torch.channels_last))


def _identity(f: Any) -> Any:
    return f


def _is_timm_tower(visual: Any) -> bool:
    from open_clip.timm_model import TimmModel

    return isinstance(visual, TimmModel)


def _is_hf_tower(text: Any) -> bool:
    from open_clip.hf_model import HFTextEncoder

    return isinstance(text, HFTextEncoder)


def split_image(model: Any, preprocess_cfg: dict[str, Any]) -> TowerSplit:
    """The image tower of an open_clip model split at its frozen part; `preprocess_cfg` (size,
    mean, std, interpolation, resize mode...) enters the key: other pixels, other features."""
    visual = model.visual
    if _is_timm_tower(visual):
        trunk, head = visual.trunk, visual.head
        probe = trunk.num_features if hasattr(trunk, "num_features") else 0
        return TowerSplit(
            key=fingerprint(
                "image", "timm-trunk", tensors_digest(_named_state(trunk)), preprocess_cfg
            ),
            frozen_fn=partial(_channels_last, trunk),
            head_fn=head,
            dim=int(probe),
            kind="image",
            modules=(trunk,),
        )
    return _whole_tower(visual, "image", preprocess_cfg)


def _whole_tower(tower: Any, kind: str, cfg: dict[str, Any]) -> TowerSplit:
    """No head can be split off: the whole tower is the frozen part, the head is the identity."""
    return TowerSplit(
        key=fingerprint(kind, "whole-tower", tensors_digest(_named_state(tower)), cfg),
        frozen_fn=tower,
        head_fn=_identity,
        dim=int(getattr(tower, "output_dim", 0) or 0),
        kind=kind,
        modules=(tower,),
    )


def split_text(model: Any, tokenizer_cfg: dict[str, Any]) -> TowerSplit:
    """The text tower split at its frozen part; `tokenizer_cfg` (tokenizer name, context length)
    enters the key: other tokens, other features."""
    text = getattr(model, "text", None)
    if text is not None and _is_hf_tower(text):
        return _split_hf(text, tokenizer_cfg)
    if text is not None:  # another custom text tower: whole tower
        return _whole_tower(text, "text", tokenizer_cfg)
    # open_clip's plain CLIP keeps its text tower on the model itself
    names = ("token_embedding", "transformer", "ln_final")
    modules = tuple(getattr(model, n) for n in names)
    state = [
        (k, v)
        for k, v in model.state_dict().items()
        if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")
    ]
    proj = getattr(model, "text_projection", None)
    dim = int(proj.shape[-1]) if proj is not None and hasattr(proj, "shape") else 0
    return TowerSplit(
        key=fingerprint("text", "whole-tower", tensors_digest(iter(state)), tokenizer_cfg),
        frozen_fn=model.encode_text,
        head_fn=_identity,
        dim=dim,
        kind="text",
        modules=modules,
    )


def _split_hf(text: Any, tokenizer_cfg: dict[str, Any]) -> TowerSplit:
    """HFTextEncoder: transformer + pooler frozen (the mask as its forward builds it), proj head."""
    pad_id = text.config.pad_token_id

    def frozen_fn(x: Any) -> Any:
        attn_mask = (x != pad_id).long()
        # Trailing columns that are padding in every row change nothing (masked keys, absolute
        # positions, the pooler averages under the mask) but cost compute: cut them off.
        used = int(attn_mask.any(dim=0).nonzero().max()) + 1 if attn_mask.any() else 1
        x, attn_mask = x[:, :used], attn_mask[:, :used]
        out = text.transformer(input_ids=x, attention_mask=attn_mask)
        return text.pooler(out, attn_mask)

    config = {
        **tokenizer_cfg,
        "pooler": type(text.pooler).__name__,
        "pad_token_id": pad_id,
    }
    width = int(getattr(text.transformer.config, "hidden_size", 0) or 0)
    return TowerSplit(
        key=fingerprint(
            "text", "hf-transformer+pooler", tensors_digest(_named_state(text.transformer)), config
        ),
        frozen_fn=frozen_fn,
        head_fn=text.proj,
        dim=width,
        kind="text",
        modules=(text.transformer, text.pooler),
    )


def _named_state(module: Any) -> Iterator[tuple[str, Any]]:
    """Parameters and buffers (BatchNorm running statistics too): everything the output reads."""
    return iter(module.state_dict().items())


def tokenizer_config(model_cfg: dict[str, Any]) -> dict[str, Any]:
    """What decides the token ids of a caption, from a model config (canonical hub ids, not local
    mirror paths, so the key is the same on every machine)."""
    text = model_cfg.get("text_cfg", {})
    return {
        "tokenizer": text.get("hf_tokenizer_name") or "open_clip-simple-bpe",
        "tokenizer_mode": text.get("tokenizer_mode"),
        "context_length": text.get("context_length", 77),
        "vocab_size": text.get("vocab_size"),
    }


def locked_towers(
    lock_image: bool,
    image_unlocked: int,
    train_augment: bool,
    lock_text: bool,
    text_unlocked: int,
    text_freeze_layer_norm: bool,
) -> tuple[bool, bool]:
    """(image cacheable, text cacheable): a tower's frozen output is a fixed function of its input
    only when it is locked with nothing unlocked (and, for images, the pixels are not augmented;
    for HF text, its LayerNorms are frozen too)."""
    image = lock_image and image_unlocked == 0 and not train_augment
    text = lock_text and text_unlocked == 0 and text_freeze_layer_norm
    return image, text
