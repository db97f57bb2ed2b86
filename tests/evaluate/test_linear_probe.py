"""The linear probe: learns separable features, picks C on validation data, splits stratified."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluate.linear_probe import probe, stratified_split


def _blobs(n_per_class, n_classes: int, noise: float, seed: int, draw: int = 0):
    """Gaussian clusters: `seed` fixes the centres, `draw` the noise (so train and test differ)."""
    centres = np.random.default_rng(seed).normal(size=(n_classes, 16)) * 3
    rng = np.random.default_rng(1000 + draw)
    sizes = n_per_class if isinstance(n_per_class, list) else [n_per_class] * n_classes
    x = np.concatenate(
        [centres[c] + noise * rng.normal(size=(sizes[c], 16)) for c in range(n_classes)]
    )
    y = np.repeat(np.arange(n_classes), sizes)
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_separable_classes_are_learned():
    x, y = _blobs(30, 5, 0.3, seed=0)
    tx, ty = _blobs(10, 5, 0.3, seed=0, draw=1)
    res = probe(x, y, tx, ty, 5, c_grid=[0.01, 1.0, 100.0])
    assert res.metrics["lp_acc1"] >= 0.95
    assert res.metrics["lp_acc5"] == 1.0
    assert res.chosen_c in (0.01, 1.0, 100.0)
    assert set(res.val_accuracy) == {0.01, 1.0, 100.0}


def test_random_labels_give_chance_level():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 16))
    y = rng.integers(0, 4, 300)
    res = probe(x[:200], y[:200], x[200:], y[200:], 4, c_grid=[1.0])
    assert res.metrics["lp_acc1"] < 0.45, "a probe must not find structure in noise"


def test_c_is_chosen_on_validation_accuracy():
    # imbalanced classes: an all-but-unregularised-intercept model (C tiny) predicts the majority class
    x, y = _blobs([60, 20, 20], 3, 0.5, seed=2)
    res = probe(x, y, x, y, 3, c_grid=[1e-6, 10.0])
    assert res.val_accuracy[1e-6] == pytest.approx(0.6, abs=0.05)
    assert res.val_accuracy[10.0] > 0.9
    assert res.chosen_c == 10.0


def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.array([0] * 10 + [1] * 3 + [2] * 2)
    a, b = stratified_split(y, 0.5, seed=0)
    assert len(set(a) & set(b)) == 0 and len(a) + len(b) == len(y)
    for c in (0, 1, 2):
        assert (y[a] == c).any() and (y[b] == c).any()


def test_single_class_is_refused():
    x = np.ones((4, 2))
    with pytest.raises(ValueError, match="single class"):
        probe(x, np.zeros(4, dtype=int), x, np.zeros(4, dtype=int), 2, c_grid=[1.0])
