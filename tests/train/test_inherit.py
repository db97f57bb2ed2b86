"""Weight inheritance copies exactly the intended slices (tasks/train/inherit.py)."""

from __future__ import annotations

import open_clip
import pytest
import torch

from tasks.train.inherit import InheritError, inherit_weights, layer_map

BIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 48, "heads": 3, "layers": 4},
}
SMALL = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 2},
}


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    return open_clip.model.CLIP(**BIG), open_clip.model.CLIP(**SMALL)


def test_layer_map_keeps_every_step_th_layer() -> None:
    assert layer_map(12, 3) == [0, 4, 8]
    assert layer_map(4, 2) == [0, 2]
    assert layer_map(5, 2) == [0, 2]
    with pytest.raises(InheritError, match="S <= T"):
        layer_map(2, 3)


def test_exact_slices_copied() -> None:
    big, small = _models()
    copied = inherit_weights(small, big)
    t, s = big.state_dict(), small.state_dict()
    # depth: student layer 1 is teacher layer 2 (step 4 // 2)
    assert copied["visual.transformer.resblocks.1.ln_1.weight"] == (
        "visual.transformer.resblocks.2.ln_1.weight"
    )
    # width: leading slices
    assert torch.equal(s["visual.conv1.weight"], t["visual.conv1.weight"][:32])
    assert torch.equal(s["visual.proj"], t["visual.proj"][:32, :16])
    assert torch.equal(s["token_embedding.weight"], t["token_embedding.weight"][:, :32])
    fc_s = s["transformer.resblocks.1.mlp.c_fc.weight"]
    assert torch.equal(fc_s, t["transformer.resblocks.2.mlp.c_fc.weight"][:128, :32])
    # attention, vision: teacher 4 heads x 16, student 2 heads x 16; q, k, v each keep heads 0-1
    w_t = t["visual.transformer.resblocks.2.attn.in_proj_weight"]  # (192, 64): q 0-63, k 64-127
    w_s = s["visual.transformer.resblocks.1.attn.in_proj_weight"]  # (96, 32): q 0-31, k 32-63
    assert torch.equal(w_s[0:32], w_t[0:32, :32])  # q heads 0, 1
    assert torch.equal(w_s[32:64], w_t[64:96, :32])  # k heads 0, 1
    assert torch.equal(w_s[64:96], w_t[128:160, :32])  # v heads 0, 1
    b_t = t["visual.transformer.resblocks.2.attn.in_proj_bias"]
    b_s = s["visual.transformer.resblocks.1.attn.in_proj_bias"]
    assert torch.equal(b_s, torch.cat([b_t[0:32], b_t[64:96], b_t[128:160]]))
    o_t = t["visual.transformer.resblocks.2.attn.out_proj.weight"]  # (64, 4 heads * 16)
    o_s = s["visual.transformer.resblocks.1.attn.out_proj.weight"]  # (32, 2 heads * 16)
    assert torch.equal(o_s, o_t[:32, :32])
    # text: teacher 3 heads x 16, student 2 heads x 16
    w_t = t["transformer.resblocks.0.attn.in_proj_weight"]  # (144, 48): q 0-47, k 48-95, v 96-143
    w_s = s["transformer.resblocks.0.attn.in_proj_weight"]  # (96, 32)
    assert torch.equal(w_s[32:64], w_t[48:80, :32])
    assert torch.equal(w_s[64:96], w_t[96:128, :32])
    assert torch.equal(s["logit_scale"], t["logit_scale"])


def test_one_tower_only() -> None:
    big, small = _models()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    copied = inherit_weights(small, big, image=False, text=True)
    assert not any(k.startswith("visual.") for k in copied)
    assert torch.equal(small.state_dict()["visual.proj"], before["visual.proj"])
    assert not torch.equal(small.state_dict()["text_projection"], before["text_projection"])


def test_other_grid_is_refused_by_name() -> None:
    big = open_clip.model.CLIP(**BIG)
    other = dict(SMALL, vision_cfg=dict(SMALL["vision_cfg"], image_size=24))
    with pytest.raises(InheritError, match="visual.positional_embedding"):
        inherit_weights(open_clip.model.CLIP(**other), big)


def test_deeper_or_wider_student_is_refused_by_name() -> None:
    big, small = _models()
    with pytest.raises(InheritError, match="S <= T"):
        inherit_weights(big, small)
    shallow = dict(BIG, vision_cfg=dict(BIG["vision_cfg"], layers=2))
    shallow["text_cfg"] = dict(BIG["text_cfg"], layers=2)
    with pytest.raises(InheritError, match="leading slice"):
        inherit_weights(open_clip.model.CLIP(**shallow), small)
