"""FLIP patch dropout: exactly the intended number of patches kept, CLS first, off at eval and in
the final unmasked phase."""

from __future__ import annotations

import pytest
import torch

from tasks.train.objectives.masking import PatchKeep, flip_kept, install_patch_keep


def _tokens(batch: int = 3, patches: int = 64, width: int = 5) -> torch.Tensor:
    # token i of sample b carries the value 1000 * b + i in every channel: identifiable after gather
    ids = (
        torch.arange(patches + 1, dtype=torch.float32)[None, :]
        + 1000 * torch.arange(batch)[:, None]
    )
    return ids[..., None].expand(batch, patches + 1, width).clone()


@pytest.mark.parametrize(
    ("patches", "ratio", "kept"), [(64, 0.5, 32), (49, 0.5, 24), (49, 0.75, 12), (4, 0.9, 1)]
)
def test_flip_keeps_cls_and_max1_int_n_1mp_distinct_patches(
    patches: int, ratio: float, kept: int
) -> None:
    assert flip_kept(patches, ratio) == kept
    keeper = PatchKeep(ratio).train()
    x = _tokens(patches=patches)
    torch.manual_seed(0)
    y = keeper(x)
    assert y.shape == (3, kept + 1, 5)
    for b in range(3):
        ids = y[b, :, 0].long().tolist()
        assert ids[0] == 1000 * b  # CLS kept, first
        assert len(set(ids[1:])) == kept  # distinct patches
        assert all(1000 * b + 1 <= i <= 1000 * b + patches for i in ids[1:])  # of this sample


def test_flip_is_identity_at_eval_and_at_ratio_zero() -> None:
    x = _tokens()
    assert torch.equal(PatchKeep(0.5).eval()(x), x)
    assert torch.equal(PatchKeep(0.0).train()(x), x)


def test_explicit_keep_indices_are_gathered_exactly() -> None:
    keeper = PatchKeep(0.5).train()
    keeper.keep = torch.tensor([[0, 5, 63], [1, 2, 3], [60, 61, 62]])
    y = keeper(_tokens())
    assert y[:, :, 0].long().tolist() == [
        [0, 1, 6, 64],
        [1000, 1002, 1003, 1004],
        [2000, 2061, 2062, 2063],
    ]


def test_final_unmasked_steps_switch_dropout_off(tmp_path) -> None:
    from tasks.train.objectives.contrastive import flip_ratio_at
    from tasks.train.params import TrainParams

    p = TrainParams(steps=10, patch_dropout={"ratio": 0.5, "final_unmasked_steps": 3})
    assert [flip_ratio_at(s, p) for s in range(10)] == [0.5] * 7 + [0.0] * 3


def test_flip_in_the_model_forward_runs_only_the_kept_tokens() -> None:
    """clipmill-tiny-vit (64 px, 8 px patches: 64 patches) at ratio 0.5: ln_pre sees 1 + 32 tokens."""
    from tasks.clip import build_model
    from tasks.train.objectives.contrastive import FlipSchedule
    from tasks.train.params import TrainParams

    torch.manual_seed(0)
    model = build_model("clipmill-tiny-vit").model
    p = TrainParams(steps=4, patch_dropout={"ratio": 0.5, "final_unmasked_steps": 1})
    flip = FlipSchedule(p, model)
    assert install_patch_keep(model, "x") is flip.keeper  # installed once, in open_clip's slot
    seen: list[int] = []
    model.visual.ln_pre.register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
    model.train()
    images = torch.rand(2, 3, 64, 64)
    for step in range(4):
        flip.set_step(step)
        model.encode_image(images)
    model.eval()
    model.encode_image(images)
    assert seen == [33, 33, 33, 65, 65]
