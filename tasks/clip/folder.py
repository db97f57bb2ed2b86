"""A model folder (docs/CONTRACTS.md: open_clip_config.json + model.safetensors) -> a built model.

Never unpickles (safetensors weights, JSON config) and works offline from the folder alone, both
here and through open_clip's own `local-dir:<folder>` schema (what CLIP_benchmark users pass).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.clip.errors import ModelLoadError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "model.safetensors"
HUB_IDS_KEY = "hf_hub_ids"  # top-level key: canonical hub ids of towers the config names by path


def folder_config(
    model_name: str,
    model_cfg: dict[str, Any],
    preprocess_cfg: dict[str, Any],
    folder: Path,
    hf_files_in_folder: bool,
) -> dict[str, Any]:
    """The open_clip_config.json of a model folder, written so open_clip's `local-dir:` loads it
    offline (no hub, no hub cache).

    open_clip builds an HF text tower with `AutoConfig.from_pretrained(text_cfg.hf_model_name)`,
    resolved against the working directory or the hub, never against the folder (its tokenizer,
    by contrast, is read from the folder). A hub id there needs the hub or its cache, so when the
    folder holds the tower's config.json, `hf_model_name` names the folder by its absolute path and
    the hub id is kept under `hf_hub_ids` (provenance; `read_folder_config` puts it back, so this
    library always sees hub ids). The choice: a copied or moved folder still loads here, and in
    open_clip while the original path exists; elsewhere open_clip needs the hub id's config.
    `hf_tokenizer_name` stays the hub id (open_clip reads the tokenizer from the folder anyway).
    """
    cfg = json.loads(json.dumps(model_cfg, default=list))
    config: dict[str, Any] = {
        "model_name": model_name,
        "model_cfg": cfg,
        "preprocess_cfg": preprocess_cfg,
    }
    text = cfg.get("text_cfg", {})
    if hf_files_in_folder and text.get("hf_model_name"):
        config[HUB_IDS_KEY] = {"hf_model_name": text["hf_model_name"]}
        text["hf_model_name"] = str(folder.resolve())
    return config


def read_folder_config(folder: Path) -> dict[str, Any]:
    """The folder's `{"model_name", "model_cfg", "preprocess_cfg"}`; errors name the folder or file."""
    cfg_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: model folder does not exist")
    if not cfg_path.is_file():
        raise ModelLoadError(f"{folder}: not a model folder (no {CONFIG_FILE})")
    try:
        config = json.loads(cfg_path.read_text())
        config["model_cfg"]["embed_dim"]
        hub_ids = config.get(HUB_IDS_KEY) or {}
        if hub_ids.get("hf_model_name"):  # the canonical id, not the path open_clip needs
            config["model_cfg"]["text_cfg"]["hf_model_name"] = hub_ids["hf_model_name"]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadError(f"{cfg_path}: not a valid open_clip config ({exc})") from None
    return config


def architecture_name(folder: Path) -> str | None:
    """The architecture a folder records (`model_name`, CLIP_benchmark's "model" field), if any."""
    try:
        data = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    name = data.get("model_name") or data.get("name")
    return str(name) if name else None


def build_from_folder(folder: Path) -> tuple[Any, Any, Any]:
    """Instantiate the saved architecture with open_clip's classes and load its safetensors weights."""
    import open_clip
    from open_clip.model import CLIP, CustomTextCLIP

    from tasks.clip.zoo import make_tokenizer, make_transforms, runtime_config

    config = read_folder_config(folder)
    cfg = config["model_cfg"]
    is_hf = bool(cfg.get("text_cfg", {}).get("hf_model_name"))
    hf_dir = str(folder) if is_hf and (folder / "config.json").is_file() else None
    try:
        run_cfg = runtime_config(cfg, load_text_weights=False, hf_dir=hf_dir)
        custom = run_cfg.pop("custom_text", False) or is_hf
        if "multimodal_cfg" in run_cfg:  # CoCa: open_clip's create_model picks it the same way
            from open_clip.coca_model import CoCa

            model = CoCa(**run_cfg)
        else:
            model = (CustomTextCLIP if custom else CLIP)(**run_cfg)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{folder / CONFIG_FILE}: does not build an open_clip model ({exc})"
        ) from None
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: weights file {WEIGHTS_FILE} is missing")
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True)
    except Exception as exc:
        raise ModelLoadError(f"{weights}: corrupt or does not fit {CONFIG_FILE} ({exc})") from None
    _, preprocess, _ = make_transforms(model, config.get("preprocess_cfg", {}))
    return model, preprocess, make_tokenizer(run_cfg)
