"""Tiny models and hand-made CLIP_benchmark-layout sets for the evaluate tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.tinymodel import save_tiny_model

from .sets import make_classification, make_retrieval


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def eval_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    make_classification(root / "colours")
    make_classification(root / "colours", split="train", seed=1)
    make_retrieval(root / "retrieval")
    return root
