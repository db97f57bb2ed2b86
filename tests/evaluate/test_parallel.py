"""The evaluate stage's speed paths give the numbers of the plain path: one feature store object
per tower shared by a run's models, and models evaluated side by side in worker processes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tasks.evaluate.features import Embedder
from tasks.evaluate.loading import load_model
from tasks.evaluate.params import EmbedParams


def test_models_of_one_run_share_each_towers_store(tmp_path, tiny_model, eval_root):
    """The second embedder of a tower gets the first one's store object (its features already
    in memory, no part file read again) and the same embeddings as with a store of its own."""
    from tasks.evaluate.datasets import load_set

    s = load_set("colours", eval_root, eval_root)
    shared: dict[str, Any] = {}
    first = Embedder(load_model(str(tiny_model)), EmbedParams(batch_size=8), tmp_path, shared)
    first.images(s.images)
    second = Embedder(load_model(str(tiny_model)), EmbedParams(batch_size=8), tmp_path, shared)
    assert second.image_store is first.image_store and second.text_store is first.text_store
    assert len(shared) == 2  # one image and one text tower
    own = Embedder(load_model(str(tiny_model)), EmbedParams(batch_size=8), tmp_path)
    assert own.image_store is not first.image_store
    read_shared, read_own = second.images(s.images), own.images(s.images)
    assert second.stats.images_from_store == own.stats.images_from_store == len(s.images)
    assert torch.equal(read_shared, read_own)
    assert torch.equal(read_shared, first.images(s.images))


@pytest.mark.slow  # two spawned worker processes import torch and open_clip (~25 s on 2 cores)
def test_models_in_worker_processes_give_the_same_metrics(
    tmp_path, tiny_model, eval_root, monkeypatch
):
    """`model_processes: 2`: every metric, the membership audit (run beside its model in the
    worker) included, equals the sequential run's to the last bit; same records written."""
    from tasks.evaluate.params import EvaluateParams
    from tasks.evaluate.stage import run
    from tests.support.tinymodel import save_tiny_model

    from .test_features import _strip_times
    from .test_stage import _params

    monkeypatch.setenv("CLIPMILL_FEATURE_STORE", str(tmp_path / "features"))
    other = save_tiny_model(tmp_path / "models" / "other", seed=1)
    runs = {}
    for processes in (1, 2):
        raw = _params(tmp_path, tiny_model, eval_root, output_dir=str(tmp_path / f"p{processes}"))
        raw["models"] = [str(tiny_model), str(other)]
        raw["model_processes"] = processes
        raw["embed"] = {"batch_size": 8, "feature_store": False}
        runs[processes] = run(EvaluateParams.model_validate(raw))
    one, two = runs[1], runs[2]
    assert list(one) == list(two), "same keys in the same order"
    assert one["tiny"]["membership"]["measured"] and "similarity_auc" in one["tiny"]["membership"]
    assert one["membership_cpu_seconds"] > 0 and two["membership_cpu_seconds"] > 0
    np.testing.assert_equal(_strip_times(one), _strip_times(two))
    assert "robustness" in two["other"]["colours"]
    files = {
        n: sorted(p.relative_to(tmp_path / f"p{n}") for p in (tmp_path / f"p{n}").rglob("*"))
        for n in (1, 2)
    }
    assert files[1] == files[2]
