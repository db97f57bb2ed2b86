"""The recorder's single-pass attention (one in-projection, explicit softmax attention, the CLS row
read from the same probabilities) against the reference: nn.MultiheadAttention's own forward
(fused path for the output, need_weights=True for the map). Code-path tests on a tiny randomly
initialised ViT (no trained weights needed: the function is compared, not its quality)."""

from __future__ import annotations

import pytest
import torch

from tasks.train.objectives.masking import AttentionRecorder, MapComplete


def _visual() -> torch.nn.Module:
    from tasks.clip import build_model

    torch.manual_seed(0)
    return build_model("clipmill-tiny-vit").model.visual.eval()


def _reference_map(visual: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list]:
    """The full attention map path: each block's input re-run through the layer with weights."""
    inputs: list[tuple[torch.nn.MultiheadAttention, torch.Tensor]] = []
    hooks = [
        b.attn.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0])))
        for b in visual.transformer.resblocks
    ]
    with torch.no_grad():
        out = visual(images)
    for h in hooks:
        h.remove()
    rows = []
    with torch.no_grad():
        for module, x in inputs:
            _, w = module(x, x, x, need_weights=True, average_attn_weights=True)
            rows.append(w[:, 0, 1:])
    return out, rows


def test_recorded_forward_equals_the_layers_own_forward_and_map() -> None:
    visual = _visual()
    images = torch.rand(3, 3, 64, 64)
    expected_out, expected_rows = _reference_map(visual, images)
    recorder = AttentionRecorder(visual)
    with torch.no_grad():
        got_out = visual(images)
    recorder.close()
    # block outputs through the explicit attention = the fused path's, within float rounding
    assert torch.allclose(got_out, expected_out, rtol=1e-5, atol=1e-6)
    assert len(recorder.rows) == len(expected_rows) == 2
    for got, ref in zip(recorder.rows, expected_rows, strict=True):
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-7)
    # each block's own row is recorded (a recorder repeating one block's row would fail here)
    assert not torch.allclose(recorder.rows[0], recorder.rows[1], atol=1e-4)


def test_recorder_leaves_the_model_as_it_was() -> None:
    visual = _visual()
    keys = list(visual.state_dict())
    recorder = AttentionRecorder(visual, stop_at_last=True)
    assert all("forward" in b.attn.__dict__ for b in visual.transformer.resblocks)
    with pytest.raises(MapComplete), torch.no_grad():
        visual(torch.rand(1, 3, 64, 64))
    recorder.close()
    assert not any("forward" in b.attn.__dict__ for b in visual.transformer.resblocks)
    assert list(visual.state_dict()) == keys
    with torch.no_grad():  # the model runs its own forward again, to the end
        assert visual(torch.rand(1, 3, 64, 64)).shape[0] == 1


def test_bf16_map_stays_close_to_the_fp32_reference() -> None:
    """The EMA forward runs under bf16 autocast: its map stays within bf16 rounding of fp32."""
    visual = _visual()
    images = torch.rand(4, 3, 64, 64)
    _, ref_rows = _reference_map(visual, images)
    reference = torch.stack(ref_rows).mean(0)
    recorder = AttentionRecorder(visual, stop_at_last=True)
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            visual(images)
    except MapComplete:
        pass
    finally:
        recorder.close()
    got = recorder.map((8, 8)).flatten(1)
    assert got.dtype == torch.float32
    assert torch.allclose(got, reference, rtol=0.05, atol=2e-4)


def test_cross_or_masked_attention_is_refused() -> None:
    visual = _visual()
    attn = visual.transformer.resblocks[0].attn
    recorder = AttentionRecorder(visual)
    x = torch.rand(1, 5, attn.embed_dim)
    try:
        with pytest.raises(ValueError, match="not plain unmasked self-attention"):
            attn(x, x.clone(), x)
        with pytest.raises(ValueError, match="not plain unmasked self-attention"):
            attn(x, x, x, attn_mask=torch.zeros(5, 5))
    finally:
        recorder.close()


def test_kept_patch_stem_equals_the_full_convolution() -> None:
    """Online views: embedding only the kept patches gives the same tokens and conv1 gradient."""
    from tasks.clip import build_model
    from tasks.train.objectives.aclip import embed_kept_patches
    from tasks.train.objectives.masking import install_patch_keep

    torch.manual_seed(0)
    model = build_model("clipmill-tiny-vit").model.train()
    keeper = install_patch_keep(model, "aclip.enabled")
    images = torch.rand(3, 3, 64, 64)
    keep = torch.stack([torch.randperm(64)[:32].sort().values for _ in range(3)])
    keeper.keep = keep
    weight = model.visual.conv1.weight
    reference = model.encode_image(images)
    (reference * torch.arange(reference.shape[-1])).sum().backward()
    assert weight.grad is not None
    reference_grad = weight.grad.clone()
    weight.grad = None
    with embed_kept_patches(model.visual, keep):
        got = model.encode_image(images)
        assert "forward" in model.visual.conv1.__dict__
    (got * torch.arange(got.shape[-1])).sum().backward()
    assert "forward" not in model.visual.conv1.__dict__
    assert torch.allclose(got, reference, rtol=1e-5, atol=1e-6)
    scale = float(reference_grad.abs().max())  # sums over many patches: rounding scales with it
    assert torch.allclose(weight.grad, reference_grad, rtol=1e-5, atol=1e-6 * scale)
    with embed_kept_patches(model.visual, keep.flip(0)):  # other patches: other tokens
        assert not torch.allclose(model.encode_image(images), reference, atol=1e-3)
