"""Ray Train: two CPU workers (gloo, gathered features) match one worker with the same global batch."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from .conftest import tiny_params


def _weights(params) -> dict[str, torch.Tensor]:
    return load_file(str(Path(params.output_dir) / "model.safetensors"))


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


# Not marked slow (~25 s idle): an acceptance test CI must run.
def test_two_workers_equal_one_worker(tmp_path: Path, shards_dir: Path, ray_session) -> None:
    from tasks.train.stage import run

    one = tiny_params(tmp_path / "one", shards_dir, steps=4, checkpoint_every=2)
    two = tiny_params(tmp_path / "two", shards_dir, steps=4, checkpoint_every=2, num_workers=2)
    m1, m2 = run(one), run(two)
    assert m1["world_size"] == 1 and m2["world_size"] == 2
    assert abs(m1["loss_last"] - m2["loss_last"]) < 1e-4
    # float sums in a different order (gather + all-reduce): equal up to rounding, not bitwise
    assert _max_diff(_weights(one), _weights(two)) < 1e-4
    assert sorted(p.name for p in Path(two.run_root).glob("*/checkpoint_*") if p.is_dir()) == [
        "checkpoint_00000002",
        "checkpoint_00000004",
    ]


def test_accumulation_keeps_the_full_batch_loss(tmp_path: Path, shards_dir: Path) -> None:
    """open_clip's feature caching: 2 micro-batches give the gradient of the whole batch."""
    from tasks.train.stage import run

    whole = tiny_params(tmp_path / "whole", shards_dir, steps=3)
    accum = tiny_params(tmp_path / "accum", shards_dir, steps=3, accum_steps=2)
    run(whole)
    run(accum)
    assert _max_diff(_weights(whole), _weights(accum)) < 1e-4
