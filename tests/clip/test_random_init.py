"""random:<config>: seeded random weights through the training builder, same every time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tasks.clip import CONFIG_DIR, ModelLoadError, UnknownModelError, build_random, load_clip


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_random_models_are_deterministic_and_leave_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first, preprocess, tokenizer = load_clip("random:clipmill-tiny")
    assert torch.equal(torch.random.get_rng_state(), before)
    second, _, _ = load_clip("random:clipmill-tiny")
    a, b = _state(first), _state(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other, _, _ = build_random("random:clipmill-tiny", seed=1)
    assert not torch.equal(_state(other)["text_projection"], a["text_projection"])
    assert not first.training
    assert first.visual.image_size == (32, 32)
    assert tokenizer(["a cat"]).shape == (1, 32)


def test_random_model_matches_open_clips_own_seeded_build() -> None:
    """Same weights and transform as open_clip.create_model_and_transforms with seed 0 (the
    curate stage's earlier random builder), so curate results stay the same."""
    import open_clip
    from PIL import Image

    open_clip.add_model_config(CONFIG_DIR / "clipmill-tiny.json")
    torch.manual_seed(0)
    ref, _, ref_pre = open_clip.create_model_and_transforms("clipmill-tiny", pretrained=None)
    ours, pre, _ = load_clip("random:clipmill-tiny")
    a, b = _state(ref), _state(ours)
    assert all(torch.equal(a[k], b[k]) for k in a)
    img = Image.new("RGB", (50, 37), (200, 30, 60))
    assert torch.equal(pre(img), ref_pre(img))


def test_random_from_a_config_file(tmp_path: Path) -> None:
    cfg = json.loads((CONFIG_DIR / "clipmill-tiny.json").read_text())
    cfg["embed_dim"] = 16
    path = tmp_path / "my-arch.json"
    path.write_text(json.dumps(cfg))
    model, _, _ = load_clip(f"random:{path}")
    assert model.text_projection.shape[1] == 16


def test_unknown_random_config_names_the_reference(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match=r"random:clipmill-tny.*closest: clipmill-tiny"):
        load_clip("random:clipmill-tny")
    with pytest.raises(ModelLoadError, match="random:.*absent.json"):
        load_clip(f"random:{tmp_path / 'absent.json'}")
    with pytest.raises(ModelLoadError, match="'random:'"):
        load_clip("random:")
