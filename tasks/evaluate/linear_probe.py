"""Linear probe: logistic regression on frozen, normalised image features; C chosen on a validation split.

This is the CLIP paper's protocol (L-BFGS logistic regression, regularisation swept on held-out
data, then refit on train + validation). CLIP_benchmark's probe is a different recipe (a linear
layer trained with AdamW on CUDA only), so its `lp_*` numbers are not expected to match ours.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ProbeResult:
    metrics: dict[str, float]
    chosen_c: float
    val_accuracy: dict[float, float]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (first, second): about `fraction` of each class goes to first, at least one each side when possible."""
    rng = np.random.default_rng(seed)
    first: list[int] = []
    second: list[int] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        first.extend(idx[:n])
        second.extend(idx[n:])
    return np.sort(np.asarray(first, dtype=np.int64)), np.sort(np.asarray(second, dtype=np.int64))


def _fit(x: np.ndarray, y: np.ndarray, c: float, max_iter: int, seed: int) -> Any:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    return clf.fit(x, y)


def _scores(clf: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision scores widened to every class (classes absent from training score -inf)."""
    raw = clf.decision_function(x)
    if raw.ndim == 1:  # binary: sklearn returns one column
        raw = np.stack([-raw, raw], axis=1)
    out = np.full((len(x), n_classes), -np.inf)
    out[:, clf.classes_] = raw
    return out


def probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    c_grid: Sequence[float],
    val_proportion: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """Sweep C on a stratified validation split of the training data, refit on all of it, test."""
    import torch

    from tasks.evaluate.zeroshot import classification_metrics

    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("linear probe: empty train or test split")
    if len(np.unique(train_y)) < 2:
        raise ValueError("linear probe: the training split holds a single class")
    fit_idx, val_idx = stratified_split(train_y, 1 - val_proportion, seed)
    val_acc: dict[float, float] = {}
    for c in c_grid:
        clf = _fit(train_x[fit_idx], train_y[fit_idx], c, max_iter, seed)
        val_acc[c] = (
            float((clf.predict(train_x[val_idx]) == train_y[val_idx]).mean())
            if len(val_idx)
            else 0.0
        )
    best = max(c_grid, key=lambda c: (val_acc[c], -c))  # ties -> stronger regularisation
    clf = _fit(train_x, train_y, best, max_iter, seed)
    scores = torch.from_numpy(_scores(clf, test_x, n_classes))
    base = classification_metrics(scores, torch.from_numpy(test_y), n_classes)
    metrics = {f"lp_{k}": v for k, v in base.items()}
    metrics["C"] = float(best)
    return ProbeResult(metrics, float(best), val_acc)
