"""The probe task on real CLIP_benchmark-layout sets: the train split trains when present, the
test split is only scored; without a train split the k-fold scheme runs and the record says so."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tasks.evaluate import suite
from tasks.evaluate.datasets import load_set
from tasks.evaluate.embed import decode_image
from tasks.evaluate.params import EvaluateParams
from tests.support.wds import write_wds_set

from .sets import COLOURS, RGB, make_classification, png


def _mean_colour(images, *_args) -> torch.Tensor:
    """A stand-in image encoder: the mean RGB of each image (the colour squares separate)."""
    return torch.tensor(
        np.stack(
            [np.asarray(decode_image(b), dtype=np.float32).mean(axis=(0, 1)) / 255 for b in images]
        )
    )


@pytest.fixture()
def fake_encoder():
    """A stand-in `Embedder`: names the model, embeds images by their mean colour."""
    loaded = SimpleNamespace(name="fake", arch="fake-arch", ref="fake-ref")
    return SimpleNamespace(loaded=loaded, name="fake", images=_mean_colour)


def _swapped_train(root, per_class: int = 5) -> None:
    """A train split of the same colours whose labels are shifted by one class (c -> c+1)."""
    images, labels = [], []
    for c, rgb in enumerate(RGB):
        for j in range(per_class):
            images.append(png(rgb, 7000 + c * 100 + j))
            labels.append((c + 1) % len(RGB))
    write_wds_set(root, images, split="train", labels=labels, classnames=COLOURS)


def _run(tmp_path, name: str, emb) -> tuple[dict, dict]:
    params = EvaluateParams(
        models=["unused"],
        eval_root=str(tmp_path / "eval"),
        datasets=[name],
        output_dir=str(tmp_path / "out"),
        probe={"datasets": [name], "c_grid": [10.0, 1000.0], "folds": 4},
    )
    s = load_set(name, params.eval_root, params.public_root)
    metrics = suite.probe_task(emb, s, _mean_colour(s.images), params, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "fake" / f"{name}_linear_probe.json").read_text())
    return metrics, record


def test_train_split_trains_and_test_is_only_scored(tmp_path, fake_encoder):
    make_classification(tmp_path / "eval" / "shifted", per_class=4)
    _swapped_train(tmp_path / "eval" / "shifted")
    metrics, record = _run(tmp_path, "shifted", fake_encoder)
    # fitted on the train split, every test image gets the shifted (wrong) class; fitted on the
    # test split it would be right
    assert metrics["lp_acc1"] == 0.0
    assert record["split_scheme"].startswith("train split")
    assert metrics["lp_split_scheme"] == record["split_scheme"]
    assert record["train_images"] == 30 and record["test_images"] == 24
    assert set(record["val_accuracy"]) == {"10.0", "1000.0"} and record["folds"] == []


def test_set_without_train_split_uses_kfold_on_test(tmp_path, fake_encoder):
    make_classification(tmp_path / "eval" / "plain", per_class=4)
    metrics, record = _run(tmp_path, "plain", fake_encoder)
    assert record["split_scheme"] == "kfold-4 on test (no train split)"
    assert len(record["folds"]) == 4 and sum(f["test_images"] for f in record["folds"]) == 24
    assert metrics["lp_acc1"] >= 0.9  # the colours separate, so a probe fit on folds scores high
    assert {"lp_acc1_std", "lp_acc1_min", "lp_acc1_max"} <= set(record["metrics"])
