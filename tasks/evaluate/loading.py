"""Load a model to evaluate: `tasks.models.load_clip` when present, else the contract's folder layout.

A model reference is a folder (docs/CONTRACTS.md: open_clip_config.json + weights) or an MLflow
registered-model URI `models:/name/version`. Loading is a builder: Ray actors call it themselves.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.evaluate.datasets import resolve

_MLFLOW = re.compile(r"^models:/(?P<name>[^/]+)/(?P<version>[^/]+)$")


class ModelLoadError(RuntimeError):
    """A model reference cannot be loaded; the message names the reference and the fault."""


@dataclass
class LoadedModel:
    """What every evaluation needs from a model, plus how to name it in results."""

    name: str  # short name used in results (folder name or name-vN)
    ref: str  # the reference as given in params
    arch: str  # open_clip architecture name (CLIP_benchmark's "model" field)
    model: Any
    preprocess: Any
    tokenizer: Any


def model_label(ref: str) -> str:
    """`data/models/train` -> `train`; `models:/clip/3` -> `clip-v3`."""
    m = _MLFLOW.match(ref)
    if m:
        return f"{m['name']}-v{m['version']}"
    return Path(ref.rstrip("/")).name or ref


def load_model(ref: str) -> LoadedModel:
    """Load in eval mode on the CPU; clear errors for a missing folder or a mismatched checkpoint."""
    try:
        from tasks.models import load_clip  # the train stage's loader (docs/CONTRACTS.md)
    except ImportError:
        load_clip = None
    target = ref if _MLFLOW.match(ref) else str(resolve(ref))
    if not _MLFLOW.match(ref) and not Path(target).exists():
        raise ModelLoadError(
            f"model {ref!r}: folder {target} does not exist (run the train/teacher stage first)"
        )
    try:
        if load_clip is not None:
            model, preprocess, tokenizer = load_clip(target)
        else:
            model, preprocess, tokenizer = load_folder(target)
    except ModelLoadError:
        raise
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as exc:
        raise ModelLoadError(f"model {ref!r} could not be loaded: {exc}") from exc
    model.eval()
    return LoadedModel(
        model_label(ref), ref, architecture_name(target), model, preprocess, tokenizer
    )


def architecture_name(target: str) -> str:
    cfg = Path(target) / "open_clip_config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        return str(data.get("model_name") or data.get("name") or f"local-dir:{target}")
    return target


def load_folder(folder: str) -> tuple[Any, Any, Any]:
    """A folder with open_clip_config.json ({"model_cfg", "preprocess_cfg"} or a bare model config).

    Fallback used until `tasks.models.load_clip` exists; a missing key or a shape mismatch between
    checkpoint and config is reported with both paths named.
    """
    if _MLFLOW.match(folder):
        raise ModelLoadError(
            f"{folder}: MLflow models need tasks.models.load_clip, which is not installed yet"
        )
    import open_clip

    path = Path(folder)
    cfg_file = path / "open_clip_config.json"
    if not cfg_file.exists():
        raise ModelLoadError(f"{folder}: no open_clip_config.json")
    data = json.loads(cfg_file.read_text())
    model_cfg = data.get("model_cfg", data)
    preprocess_cfg = data.get("preprocess_cfg", {})
    if model_cfg.get("text_cfg", {}).get("hf_model_name"):
        raise ModelLoadError(f"{folder}: a Hugging Face text tower needs tasks.models.load_clip")
    weights = _weights_file(path)
    cfg = {k: v for k, v in model_cfg.items() if k != "custom_text"}
    model = open_clip.model.CLIP(**cfg)
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{weights} does not match the config {cfg_file}: {str(exc).splitlines()[0]} ..."
        ) from exc
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    pp = merge_preprocess_dict(get_model_preprocess_cfg(model), preprocess_cfg)
    preprocess = image_transform_v2(PreprocessCfg(**pp), is_train=False)
    ctx = model_cfg.get("text_cfg", {}).get("context_length", 77)
    tokenizer = open_clip.SimpleTokenizer(context_length=ctx)
    return model, preprocess, tokenizer


def _weights_file(path: Path) -> Path:
    for name in (
        "checkpoint.pt",
        "model.safetensors",
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
    ):
        if (path / name).exists():
            return path / name
    raise ModelLoadError(f"{path}: no weights (checkpoint.pt or model.safetensors)")
