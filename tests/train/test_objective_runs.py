"""Every method of the objective hook toggled on in a short training run, and resumed exactly.

A run is interrupted after step 4 (its checkpoint at 3 on disk), restarted, and must end with
bitwise the weights of the uninterrupted run: the objective's state (A-CLIP's EMA model) is in
the checkpoint. The plain contrastive run is the "off" case every method must differ from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from .conftest import tiny_params

METHODS: dict[str, dict[str, Any]] = {
    "plain": {},
    "flip": {"patch_dropout": {"ratio": 0.5, "final_unmasked_steps": 2}},
    "aclip": {
        # default mask_ratio (0.5): the release's default trains unmasked, ours must mask
        "aclip": {"enabled": True, "simclr_weight": 0.5, "byol_weight": 0.5}
    },
    # no term reads the EMA embedding: its forward stops once the attention map is complete
    "aclip_map_only": {"aclip": {"enabled": True}},
}


class Interrupted(RuntimeError):
    pass


def _run(
    tmp: Path, shards: Path, monkeypatch: pytest.MonkeyPatch, method: str, stop_after: int = -1
) -> tuple[dict[str, torch.Tensor], list[Any]]:
    import tasks.train.loop as loop
    from tasks.train.stage import run

    seen: list[Any] = []
    real = loop.train_steps

    def spy(*args: Any, on_step: Any, **kwargs: Any) -> None:
        def hook(r: Any) -> None:
            on_step(r)
            seen.append(r)
            if r.step == stop_after:
                raise Interrupted(f"stopped after step {r.step}")

        real(*args, on_step=hook, **kwargs)

    monkeypatch.setattr(loop, "train_steps", spy)
    p = tiny_params(tmp, shards, steps=6, checkpoint_every=3, train_augment=True, **METHODS[method])
    try:
        run(p)
    finally:
        monkeypatch.setattr(loop, "train_steps", real)
    return load_file(str(Path(p.output_dir) / "model.safetensors")), seen


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory: pytest.TempPathFactory, shards_dir: Path) -> dict[str, Any]:
    with pytest.MonkeyPatch.context() as mp:
        return _run(tmp_path_factory.mktemp("plain"), shards_dir, mp, "plain")[0]


@pytest.mark.parametrize("method", ["flip", "aclip", "aclip_map_only"])
def test_method_on_trains_differently_and_resumes_exactly(
    tmp_path: Path,
    shards_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    plain_weights: dict[str, Any],
) -> None:
    from tasks.train.checkpoints import OBJECTIVE_FILE, complete_checkpoints

    full, steps = _run(tmp_path / "full", shards_dir, monkeypatch, method)
    with pytest.raises(Interrupted):
        _run(tmp_path / "cut", shards_dir, monkeypatch, method, stop_after=4)
    resumed, redone = _run(tmp_path / "cut", shards_dir, monkeypatch, method)
    assert [r.step for r in redone] == [3, 4, 5]  # resumed from the checkpoint at 3
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # bitwise
    assert any(not torch.equal(full[k], plain_weights[k]) for k in full)  # the method did something
    checkpoints = complete_checkpoints(next((tmp_path / "cut" / "runs").iterdir()))
    if method == "flip":
        assert [r.terms["patch_dropout"] for r in steps] == [0.5] * 4 + [0.0] * 2
        assert not (checkpoints[-1] / OBJECTIVE_FILE).exists()
    else:
        assert all(r.terms["kept_patches"] == 32 for r in steps)  # 8 of 16 blocks of a 8x8 grid
        parts = {"clip_view1", "clip_view2"} | ({"simclr", "byol"} if method == "aclip" else set())
        assert all(parts <= r.terms.keys() for r in steps)
        assert steps[0].terms["ema_momentum"] == pytest.approx(0.996)
        assert (checkpoints[-1] / OBJECTIVE_FILE).is_file()


def test_plain_run_has_no_objective_terms(
    tmp_path: Path, shards_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, steps = _run(tmp_path, shards_dir, monkeypatch, "plain")
    assert len(steps) == 6 and all(r.terms == {} for r in steps)


def test_methods_that_cannot_combine_are_refused_before_work(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from tasks.train.params import TrainParams

    with pytest.raises(ValidationError, match="aclip.enabled with accum_steps 2"):
        TrainParams(aclip={"enabled": True}, accum_steps=2)
    with pytest.raises(ValidationError, match="set patch_dropout.ratio: 0"):
        TrainParams(aclip={"enabled": True}, patch_dropout={"ratio": 0.5})
    with pytest.raises(ValidationError, match="patch_dropout.ratio: masks patches"):
        TrainParams(lock_image=True, patch_dropout={"ratio": 0.5})
    with pytest.raises(ValidationError, match="A-CLIP's views use a contrastive loss"):
        TrainParams(aclip={"enabled": True}, loss="coca")
    with pytest.raises(ValidationError, match="momentum only rises"):
        TrainParams(aclip={"momentum_start": 0.9, "momentum_end": 0.5})


def test_build_objective_refuses_a_non_vit_image_tower() -> None:
    """A CNN image tower (as the LiT teacher's MobileNetV2) has no patches to mask."""
    from types import SimpleNamespace

    from tasks.train.objectives.registry import build_objective
    from tasks.train.params import TrainParams

    cnn = SimpleNamespace(visual=torch.nn.Conv2d(3, 4, 3))
    for over, name in (
        ({"aclip": {"enabled": True}}, "aclip.enabled"),
        ({"patch_dropout": {"ratio": 0.5}}, "patch_dropout.ratio"),
    ):
        with pytest.raises(ValueError, match=f"{name}: needs an open_clip ViT.*Conv2d"):
            build_objective(TrainParams(**over), cnn, 0, 1)


def test_the_student_is_a_vit_whose_attention_aclip_reads() -> None:
    from tasks.clip import build_model
    from tasks.train.objectives.masking import AttentionRecorder, vision_transformer

    visual = vision_transformer(build_model("clipmill-small-vit").model, "aclip.enabled")
    assert tuple(visual.grid_size) == (8, 8)  # 96 px / 12 px patches: 4x4 blocks of 2x2
    AttentionRecorder(visual).close()
