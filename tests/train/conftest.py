"""Train-test fixtures: tiny hand-made shards and small, fast params."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .shards import write_shards


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """Tiny models on a shared 2-core machine: extra threads only oversubscribe the CPUs."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shards(tmp_path_factory.mktemp("train_data") / "shards")


def tiny_params(tmp: Path, shards: Path, **over: Any) -> Any:
    """A tiny ViT run that takes seconds on one CPU core."""
    from tasks.train.params import TrainParams

    base: dict[str, Any] = dict(
        shards=str(shards),
        steps=8,
        batch_size=16,
        lr=1e-3,
        warmup_steps=2,
        checkpoint_every=4,
        run_root=str(tmp / "runs"),
        output_dir=str(tmp / "models" / "student"),
        registered_model_name="",
        shuffle_buffer=16,
        log_every=1,
    )
    base.update(over)
    return TrainParams(**base)
