"""A-CLIP pieces by hand: planted attention maps, the attention read-out, the EMA and its schedule."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.train.objectives.masking import (
    AttentionRecorder,
    blocks_kept,
    crop_resize,
    select_patches,
)


def test_blocks_kept_follows_the_paper() -> None:
    assert blocks_kept(49, 0.5) == 25  # 100 of 196 patches
    assert blocks_kept(16, 0.5) == 8
    assert blocks_kept(16, 0.0) == 16


def _patches_of_blocks(blocks: list[tuple[int, int]], gw: int) -> list[int]:
    return sorted(
        (2 * bi + di) * gw + 2 * bj + dj for bi, bj in blocks for di in (0, 1) for dj in (0, 1)
    )


def test_planted_attention_map_whole_image_box_keeps_the_planted_blocks() -> None:
    gh = gw = 8  # 4x4 blocks; ratio 0.5 keeps 8 of 16
    planted = [(0, 0), (0, 3), (1, 1), (1, 2), (2, 0), (3, 3), (3, 1), (2, 2)]
    att = torch.rand(1, gh, gw) * 0.1
    for bi, bj in planted:
        att[0, 2 * bi : 2 * bi + 2, 2 * bj : 2 * bj + 2] += 1.0
    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # whole 64x64 image, 8 px patches
    keep = select_patches(att, box, (8, 8), 0.5)
    assert keep.tolist() == [_patches_of_blocks(planted, gw)]


def test_map_is_cut_to_the_crop_box_before_choosing() -> None:
    """The crop is the right half: the map's right half, stretched over the grid, decides."""
    gh = gw = 8
    att = torch.zeros(1, gh, gw)
    att[0, 0:2, 4:6] = 1.0  # block (0, 2) of the full image = left-top half of the right-half crop
    att[0, 6:8, 6:8] = 0.9  # block (3, 3) = bottom-right of the crop
    att[0, 0:2, 0:2] = 5.0  # strong, but outside the crop: must be ignored
    box = torch.tensor([[32.0, 0.0, 64.0, 64.0]])
    keep = select_patches(att, box, (8, 8), 0.75)  # 16 - 12 = 4 blocks kept
    # in crop coordinates columns 4-5 of the full map become 0-3: blocks (0,0),(0,1); 6-7 -> (3,2),(3,3)
    top = set(keep[0].tolist())
    assert set(_patches_of_blocks([(0, 0), (0, 1), (3, 2), (3, 3)], gw)) == top


def test_odd_grid_is_refused() -> None:
    with pytest.raises(ValueError, match="2x2 blocks"):
        select_patches(torch.rand(1, 7, 7), torch.tensor([[0.0, 0, 7, 7]]), (1, 1), 0.5)


def test_crop_resize_of_the_whole_box_is_the_image() -> None:
    images = torch.rand(2, 3, 16, 16)
    box = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 2)
    assert torch.allclose(crop_resize(images, box), images, atol=1e-5)
    half = crop_resize(images, torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 2))
    assert torch.allclose(half[:, :, ::2, ::2].mean(), images[:, :, :8, :8].mean(), atol=0.05)


def test_attention_recorder_matches_torch_attention_weights() -> None:
    """Recomputed CLS row = nn.MultiheadAttention's own weights averaged over heads, then blocks."""
    from tasks.clip import build_model

    torch.manual_seed(0)
    visual = build_model("clipmill-tiny-vit").model.visual.eval()
    inputs: list[tuple[torch.nn.MultiheadAttention, torch.Tensor]] = []
    hooks = [
        b.attn.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0])))
        for b in visual.transformer.resblocks
    ]
    recorder = AttentionRecorder(visual)
    with torch.no_grad():
        visual(torch.rand(2, 3, 64, 64))
    recorder.close()
    for h in hooks:
        h.remove()
    expected = []
    with torch.no_grad():
        for module, x in inputs:
            _, w = module(x, x, x, need_weights=True, average_attn_weights=True)
            expected.append(w[:, 0, 1:])
    got = recorder.map((8, 8))
    assert len(recorder.rows) == len(visual.transformer.resblocks) == 2
    assert torch.allclose(got, torch.stack(expected).mean(0).view(2, 8, 8), atol=1e-6)


def test_recorder_stopping_at_the_last_block_gives_the_same_map() -> None:
    """The map-only EMA forward (stop_at_last) raises MapComplete before the last block's
    attention / MLP run, and its map equals the full forward's."""
    from tasks.clip import build_model
    from tasks.train.objectives.masking import MapComplete

    torch.manual_seed(0)
    visual = build_model("clipmill-tiny-vit").model.visual.eval()
    images = torch.rand(2, 3, 64, 64)
    full = AttentionRecorder(visual)
    with torch.no_grad():
        visual(images)
    full.close()
    ran: list[int] = []
    last_mlp = visual.transformer.resblocks[-1].mlp.register_forward_hook(lambda *_: ran.append(1))
    early = AttentionRecorder(visual, stop_at_last=True)
    with pytest.raises(MapComplete), torch.no_grad():
        visual(images)
    early.close()
    last_mlp.remove()
    assert not ran  # the last block's MLP never ran
    assert len(early.rows) == 2
    assert torch.equal(early.rows[0], full.rows[0])  # same first block, same numbers
    # the last row comes from the CLS query and keys projected alone: equal up to float rounding
    assert torch.allclose(early.map((8, 8)), full.map((8, 8)), rtol=1e-5, atol=1e-9)


def test_ema_schedule_and_update_by_hand() -> None:
    from tasks.train.ema import EmaModel, momentum_at

    assert momentum_at(0, 100, 0.996, 1.0) == pytest.approx(0.996)
    assert momentum_at(100, 100, 0.996, 1.0) == pytest.approx(1.0)
    assert momentum_at(50, 100, 0.996, 1.0) == pytest.approx(0.998)
    assert momentum_at(25, 100, 0.996, 1.0) == pytest.approx(
        1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2
    )
    online = torch.nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[1.0, 2.0]]))
        online.bias.fill_(0.0)
    ema = EmaModel(online)
    with torch.no_grad():
        online.weight.copy_(torch.tensor([[3.0, -2.0]]))
        online.bias.fill_(1.0)
    ema.update(online, 0.9)
    assert ema.module.weight[0].tolist() == pytest.approx([0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * -2])
    assert ema.module.bias.item() == pytest.approx(0.1)
    assert not any(q.requires_grad for q in ema.module.parameters())


def test_nt_xent_by_hand() -> None:
    from tasks.train.objectives.aclip import nt_xent

    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    # row 0 (z1[0]) vs others [z1[1], z2[0], z2[1]] with cosines [0, 1, 0]: positive z2[0]
    per_row = -math.log(math.exp(1 / t) / (math.exp(0) + math.exp(1 / t) + math.exp(0)))
    assert nt_xent(z1, z2, t).item() == pytest.approx(
        per_row, rel=1e-6
    )  # symmetric: every row equal
