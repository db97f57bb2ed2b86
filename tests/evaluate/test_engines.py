"""Evaluate starts Ray only where its embedder can use it (issue 12: the demo's evaluate booted a
local Ray it never used, paying its start, stop and polling daemons on 2 cores)."""

from __future__ import annotations

import pytest

from tasks.evaluate.features import use_ray
from tasks.evaluate.params import EmbedParams, EvaluateParams
from tasks.settings import get_settings


@pytest.fixture
def ray_address(monkeypatch: pytest.MonkeyPatch):
    """Set (or clear) RAY_ADDRESS for the settings the params read; restored afterwards."""

    def set_to(value: str | None) -> None:
        for name in ("RAY_ADDRESS", "CLIPMILL_RAY_ADDRESS"):
            monkeypatch.delenv(name, raising=False)
        if value is not None:
            monkeypatch.setenv("RAY_ADDRESS", value)
        get_settings.cache_clear()

    yield set_to
    get_settings.cache_clear()


def test_local_auto_needs_no_ray(ray_address) -> None:
    ray_address(None)
    params = EvaluateParams()
    assert params.embed.ray == "auto"
    assert not params.needs_ray()
    # what the embedder decides with no Ray up: in process, whatever the number of images
    assert not use_ray(10**6, params.embed)


def test_cluster_or_always_needs_ray(ray_address) -> None:
    ray_address("ray://10.0.0.1:10001")
    assert EvaluateParams().needs_ray()  # auto on a cluster may use its actor pool
    assert not EvaluateParams(embed=EmbedParams(ray="never")).needs_ray()
    ray_address(None)
    assert EvaluateParams(embed=EmbedParams(ray="always")).needs_ray()


def test_committed_params_start_no_local_ray(ray_address) -> None:
    """The demo's params files (evaluate and evaluate_merge) run without a local Ray."""
    from tasks.registry import get_stage
    from tasks.runner import load_stage_params

    ray_address(None)
    for name in ("evaluate", "evaluate_merge"):
        spec = get_stage(name)
        assert not (spec.uses_ray and load_stage_params(spec).needs_ray()), name
