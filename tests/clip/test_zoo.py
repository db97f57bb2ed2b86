"""Architectures are data: repo configs and open_clip names resolve, unknown names say what is close."""

from __future__ import annotations

import json

import pytest

from tasks.clip import CONFIG_DIR, ModelLoadError, UnknownModelError, model_config
from tasks.clip.zoo import preprocess_overrides


def test_unknown_model_lists_close_names() -> None:
    with pytest.raises(UnknownModelError, match="ViT-B-32") as err:
        model_config("ViT-B-33")
    assert "ViT-B-33" in str(err.value)
    assert isinstance(err.value, ModelLoadError)  # one error family for callers to catch
    assert model_config("ViT-B-32")["embed_dim"] == 512  # any open_clip architecture name
    assert model_config("clipmill-tiny-vit")["vision_cfg"]["layers"] == 2  # repo JSON configs


def test_every_repo_config_is_registered_under_its_file_name() -> None:
    names = [
        p.stem for p in sorted(CONFIG_DIR.glob("*.json")) if not p.name.endswith(".preprocess.json")
    ]
    assert {"clipmill-tiny", "clipmill-tiny-vit", "clipmill-lit-mnv2-minilm"} <= set(names)
    for name in names:
        assert model_config(name) == json.loads((CONFIG_DIR / f"{name}.json").read_text())


def test_preprocess_side_file_is_read_for_its_architecture_only() -> None:
    assert preprocess_overrides("clipmill-lit-mnv2-minilm")["mean"] == [0.485, 0.456, 0.406]
    assert preprocess_overrides("clipmill-tiny-vit") == {}
