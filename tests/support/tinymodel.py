"""A tiny randomly initialised open_clip model saved in the contract's folder layout.

Used by the evaluate and CLIP library tests and the CLIP_benchmark comparison: a trained-model
folder in seconds, without a training run. The
folder holds `open_clip_config.json` ({"model_cfg", "preprocess_cfg"}, so open_clip's
`local-dir:` schema and CLIP_benchmark `--model local-dir:<folder>` load it), `checkpoint.pt`,
`model.safetensors` and `open_clip_model.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def save_tiny_model(folder: str | Path, seed: int = 0, cfg: dict[str, Any] | None = None) -> Path:
    """Build the model with a fixed seed and write it; returns the folder."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = cfg or TINY_CFG
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "checkpoint.pt")
    save_file(state, str(folder / "model.safetensors"))
    save_file(state, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(
        json.dumps(
            {
                "model_name": "clipmill-tiny-eval",
                "model_cfg": cfg,
                "preprocess_cfg": _preprocess_cfg(cfg),
            },
            indent=2,
        )
    )
    (folder / "params.yaml").write_text(f"# tiny random model for tests\nseed: {seed}\n")
    return folder


def _preprocess_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """Every field written out, so every loader builds the same eval transform."""
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    out = asdict(PreprocessCfg())
    out["size"] = cfg["vision_cfg"]["image_size"]
    return out
