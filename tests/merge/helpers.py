"""Tiny model folders for the merge tests: hand-made tensors, or a tiny open_clip CLIP plus
seeded perturbations (experts), written in the model folder layout (docs/CONTRACTS.md)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tasks.clip.statedict import LazyWeights, open_weights
from tests.support.tinymodel import save_tiny_model


def tensor_folder(
    folder: Path, tensors: dict[str, torch.Tensor], embed_dim: int = 1
) -> LazyWeights:
    """A folder holding hand-made tensors (a config only so the folder reads as a model folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_name": "toy", "model_cfg": {"embed_dim": embed_dim}})
    )
    return open_weights(folder)


def expert_of(base: Path, out: Path, seed: int, scale: float = 0.05) -> Path:
    """The base folder with every floating tensor moved by seeded noise: a stand-in expert."""
    import shutil

    from safetensors.torch import load_file

    shutil.copytree(base, out)
    gen = torch.Generator().manual_seed(seed)
    state = load_file(str(base / "model.safetensors"))
    moved = {}
    for k, v in state.items():
        if v.is_floating_point():  # noise relative to the tensor's typical magnitude
            v = v + scale * (v.abs().mean() + 1e-3) * torch.randn(v.shape, generator=gen)
        moved[k] = v.contiguous()
    save_file(moved, str(out / "model.safetensors"))
    save_file(moved, str(out / "open_clip_model.safetensors"))
    torch.save(moved, out / "checkpoint.pt")
    return out


def tiny_suite(root: Path, n: int) -> tuple[Path, list[Path]]:
    """A tiny open_clip base and n perturbed experts."""
    base = save_tiny_model(root / "base", seed=0)
    return base, [expert_of(base, root / f"expert{i}", seed=i + 1) for i in range(n)]
