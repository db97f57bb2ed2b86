"""CLIP library fixtures: one torch thread, a tiny model folder in the contract's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tinymodel import save_tiny_model


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """Tiny models on a shared small machine: extra threads only oversubscribe the CPUs."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder as the train stage writes it (config JSON + safetensors), seed 0."""
    return save_tiny_model(tmp_path_factory.mktemp("clip") / "tiny", seed=0)
