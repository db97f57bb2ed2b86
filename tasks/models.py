"""Load any trained CLIP: a model folder written by the train stage or an MLflow registry URI.

`load_clip` is the one way curate, evaluate and users get a model back; it never unpickles
(safetensors weights, JSON config) and works offline from the folder alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "model.safetensors"
_MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")


class ModelLoadError(ValueError):
    """The path or URI does not hold a loadable model; the message names it."""


def load_clip(path_or_uri: str, device: str = "cpu") -> tuple[Any, Any, Any]:
    """(model in eval mode on `device`, eval image transform, tokenizer) for a folder or MLflow URI."""
    folder = (
        _download(path_or_uri) if path_or_uri.startswith(_MLFLOW_SCHEMES) else Path(path_or_uri)
    )
    model, preprocess, tokenizer = build_from_folder(folder)
    return model.to(device).eval(), preprocess, tokenizer


def _download(uri: str) -> Path:
    """Fetch a registered model's files from MLflow and find the model folder inside them."""
    import mlflow

    from tasks.settings import get_settings

    mlflow.set_tracking_uri(get_settings().tracking_uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except Exception as exc:
        raise ModelLoadError(
            f"{uri}: cannot be fetched from MLflow ({get_settings().tracking_uri}): {exc}"
        ) from None
    found = sorted(p.parent for p in local.rglob(CONFIG_FILE))
    if not found:
        raise ModelLoadError(f"{uri}: no {CONFIG_FILE} among its artifacts ({local})")
    return found[0]


def read_folder_config(folder: Path) -> dict[str, Any]:
    cfg_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: model folder not found")
    if not cfg_path.is_file():
        raise ModelLoadError(f"{folder}: not a model folder (no {CONFIG_FILE})")
    try:
        config = json.loads(cfg_path.read_text())
        config["model_cfg"]["embed_dim"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelLoadError(f"{cfg_path}: not a valid open_clip config ({exc})") from None
    return config


def build_from_folder(folder: Path) -> tuple[Any, Any, Any]:
    """Instantiate the saved architecture with open_clip's classes and load its safetensors weights."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    from tasks.train.zoo import make_tokenizer, make_transforms, runtime_config

    config = read_folder_config(folder)
    cfg = config["model_cfg"]
    is_hf = bool(cfg.get("text_cfg", {}).get("hf_model_name"))
    hf_dir = str(folder) if is_hf and (folder / "config.json").is_file() else None
    run_cfg = runtime_config(cfg, load_text_weights=False, hf_dir=hf_dir)
    custom = run_cfg.pop("custom_text", False) or is_hf
    model = (CustomTextCLIP if custom else CLIP)(**run_cfg)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: weights file {WEIGHTS_FILE} is missing")
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True)
    except Exception as exc:
        raise ModelLoadError(f"{weights}: corrupt or does not fit {CONFIG_FILE} ({exc})") from None
    _, preprocess, _ = make_transforms(model, config.get("preprocess_cfg", {}))
    return model, preprocess, make_tokenizer(run_cfg)
