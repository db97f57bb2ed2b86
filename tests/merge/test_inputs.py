"""Mismatched checkpoints fail before any arithmetic, naming the model and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.clip import ModelLoadError
from tasks.clip.statedict import StateDictMismatchError, check_compatible, open_weights
from tests.merge.helpers import tensor_folder


def _pair(tmp_path: Path, other: dict[str, torch.Tensor], embed_dim: int = 1):  # noqa: ANN202
    base = tensor_folder(tmp_path / "base", {"a.weight": torch.zeros(2, 3), "b": torch.zeros(3)})
    return base, tensor_folder(tmp_path / "other", other, embed_dim)


def test_missing_key_names_model_and_key(tmp_path: Path) -> None:
    base, other = _pair(tmp_path, {"a.weight": torch.zeros(2, 3)})
    with pytest.raises(StateDictMismatchError, match=r"other.*missing key 'b'"):
        check_compatible(base, other)


def test_extra_key_names_model_and_key(tmp_path: Path) -> None:
    base, other = _pair(
        tmp_path, {"a.weight": torch.zeros(2, 3), "b": torch.zeros(3), "c": torch.zeros(1)}
    )
    with pytest.raises(StateDictMismatchError, match=r"other.*extra key 'c'"):
        check_compatible(base, other)


def test_shape_mismatch_names_model_key_and_shapes(tmp_path: Path) -> None:
    base, other = _pair(tmp_path, {"a.weight": torch.zeros(3, 3), "b": torch.zeros(3)})
    with pytest.raises(
        StateDictMismatchError, match=r"other.*'a.weight' has shape \[3, 3\].*\[2, 3\]"
    ):
        check_compatible(base, other)


def test_architecture_mismatch_names_model(tmp_path: Path) -> None:
    base, other = _pair(tmp_path, {"a.weight": torch.zeros(2, 3), "b": torch.zeros(3)}, 2)
    with pytest.raises(StateDictMismatchError, match=r"other.*architecture differs.*embed_dim"):
        check_compatible(base, other)


def test_missing_folder_and_bad_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="nowhere"):
        open_weights(tmp_path / "nowhere")
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 1}}))
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="broken.*not safetensors"):
        open_weights(folder)


def test_get_of_an_unknown_key_names_it(tmp_path: Path) -> None:
    base, _ = _pair(tmp_path, {"a.weight": torch.zeros(2, 3), "b": torch.zeros(3)})
    with pytest.raises(StateDictMismatchError, match="has no key 'zzz'"):
        base.get("zzz")
