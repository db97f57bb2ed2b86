"""One small real build of the sample stage per test session (a slice of every source)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.sample.params import SampleParams

SMALL = {
    "openclipart_max_items": 250,
    "emoji_max_items": 250,
    "tuxpaint_max_items": 120,
    "gimp_max_pages": 25,
    "fashion_mnist_max_items": 300,
    "fashion_mnist_train_max_items": 50,
    "planted_count": 24,
    "items_per_page": 20,
    "pages_per_archive": 40,
    "private_items": 10,
    "broken_links": 10,
    "eval_min_class_items": 3,
}


def small_params(out: Path, **overrides: object) -> SampleParams:
    return SampleParams(out_dir=str(out), **{**SMALL, **overrides})


@pytest.fixture(scope="session")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleParams, dict]:
    """(out_dir, params, counts) of a small build, run in-process without Ray."""
    from tasks.sample.stage import run

    params = small_params(tmp_path_factory.mktemp("sample") / "out")
    counts = run(params)
    return Path(params.out_dir), params, counts
