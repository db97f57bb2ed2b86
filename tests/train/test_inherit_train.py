"""Weight inheritance in a real run: the student starts from the larger model's slices."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tinymodel import save_tiny_model

from .conftest import tiny_params
from .distill_support import weights

BIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}


def test_run_starts_from_inherited_weights(tmp_path: Path, shards_dir: Path) -> None:
    import torch

    from tasks.train.stage import run

    big = save_tiny_model(tmp_path / "big", seed=3, cfg=BIG)
    # one step at a tiny learning rate: the student's weights stay next to what it inherited
    p = tiny_params(
        tmp_path, shards_dir, steps=1, lr=1e-9, warmup_steps=0, inherit={"source": str(big)}
    )
    run(p)
    s, t = weights(p.output_dir), weights(big)
    # clipmill-tiny-vit: 2 layers of width 128 -> teacher layers 0 and 2, full width
    a = s["visual.transformer.resblocks.1.mlp.c_fc.weight"]
    assert torch.allclose(a, t["visual.transformer.resblocks.2.mlp.c_fc.weight"], atol=1e-6)
    a = s["transformer.resblocks.0.attn.in_proj_weight"]
    assert torch.allclose(a, t["transformer.resblocks.0.attn.in_proj_weight"], atol=1e-6)


def test_missing_source_names_it(tmp_path: Path, shards_dir: Path) -> None:
    from tasks.train.stage import run

    p = tiny_params(tmp_path, shards_dir, steps=1, inherit={"source": str(tmp_path / "nope")})
    with pytest.raises(Exception, match="nope"):
        run(p)
