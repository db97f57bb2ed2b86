"""Linear probe: logistic regression on frozen, normalised image features; C chosen on validation data.

Two schemes, and the result names the one used (`split_scheme`):

- **train split** (the set has one, e.g. Fashion-MNIST): C is chosen on a seeded stratified
  validation part of the TRAIN split, the classifier is refit on the whole train split with that
  C, and the TEST split is only scored. This is CLIP_benchmark's scheme (its `val_proportion`
  carves the validation part out of the train split, the best regularisation is refit on train +
  validation, the test split is scored once) and the CLIP paper's.
- **k-fold on test** (no train split: the sets built from the site's held-out items): stratified
  k-fold over the test split; in each fold C is chosen on a stratified validation part of the
  fold's training part (nested: the scored fold never chooses C), the classifier is refit on that
  training part and scores the held-out fold. Every test image is scored exactly once; the
  metrics are the means over the folds, with the spread of top-1 (std, min, max) beside them.
  Chosen over "train on half of the test split" because every image is scored and the spread
  shows how much the number depends on the split.

The classifier is scikit-learn's L-BFGS logistic regression (the CLIP paper's probe).
CLIP_benchmark trains a linear layer with AdamW on CUDA and sweeps weight decay instead, so its
`lp_*` numbers are not expected to match ours; the split protocol above is the same.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TRAIN_SCHEME = (
    "train split: C on a {val:.0%} validation part of train, refit on train; test only scored"
)
KFOLD_SCHEME = "kfold-{k} on test (no train split)"


@dataclass
class ProbeResult:
    """Metrics (`lp_*`, `C`), the chosen C, validation accuracy per C and how the data was split."""

    metrics: dict[str, float]
    chosen_c: float
    val_accuracy: dict[float, float]
    split_scheme: str = ""
    train_images: int = 0  # images the final classifier(s) were fit on (per fold for k-fold)
    test_images: int = 0  # images scored
    folds: list[dict[str, Any]] = field(default_factory=list)  # k-fold: one entry per fold


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


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The fold (0..k-1) of every sample: each class shuffled, then dealt round-robin.

    Dealing the classes one after another from a running counter keeps every fold's class mix
    within one image of the others, also for classes smaller than k (they fall into some folds
    only; a fold's classifier then never predicts a class its training part lacks).
    """
    if k < 2:
        raise ValueError(f"linear probe: k-fold needs at least 2 folds, got {k}")
    if len(labels) < k:
        raise ValueError(f"linear probe: {len(labels)} test images cannot fill {k} folds")
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    )
    fold = np.empty(len(labels), dtype=np.int64)
    fold[order] = np.arange(len(order)) % k
    return fold


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


def choose_c(
    x: np.ndarray,
    y: np.ndarray,
    c_grid: Sequence[float],
    val_proportion: float,
    max_iter: int,
    seed: int,
) -> tuple[float, dict[float, float]]:
    """The C of the grid with the best accuracy on a stratified validation part of (x, y).

    Ties go to the smaller C (stronger regularisation). Only (x, y) is seen: callers pass the
    training data, never what they will score.
    """
    if len(np.unique(y)) < 2:
        raise ValueError("linear probe: the training split holds a single class")
    fit_idx, val_idx = stratified_split(y, 1 - val_proportion, seed)
    if len(np.unique(y[fit_idx])) < 2:
        raise ValueError(
            f"linear probe: a {val_proportion:.0%} validation part leaves a single class to fit "
            f"({len(y)} training images); lower probe.val_proportion"
        )
    val_acc: dict[float, float] = {}
    for c in c_grid:
        clf = _fit(x[fit_idx], y[fit_idx], c, max_iter, seed)
        val_acc[c] = float((clf.predict(x[val_idx]) == y[val_idx]).mean()) if len(val_idx) else 0.0
    best = max(c_grid, key=lambda c: (val_acc[c], -c))
    return float(best), val_acc


def _score(
    clf: Any, x: np.ndarray, y: np.ndarray, n_classes: int
) -> tuple[dict[str, float], np.ndarray]:
    """CLIP_benchmark's classification metrics of a fitted classifier, and its scores."""
    import torch

    from tasks.evaluate.zeroshot import classification_metrics

    scores = _scores(clf, x, n_classes)
    base = classification_metrics(torch.from_numpy(scores), torch.from_numpy(y), n_classes)
    return {f"lp_{k}": v for k, v in base.items()}, scores


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
    """Train-split scheme: C on a validation part of train, refit on all of train, score test."""
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("linear probe: empty train or test split")
    best, val_acc = choose_c(train_x, train_y, c_grid, val_proportion, max_iter, seed)
    clf = _fit(train_x, train_y, best, max_iter, seed)
    metrics, _ = _score(clf, test_x, test_y, n_classes)
    metrics["C"] = best
    return ProbeResult(
        metrics,
        best,
        val_acc,
        TRAIN_SCHEME.format(val=val_proportion),
        len(train_x),
        len(test_x),
    )


def _most_chosen(cs: Sequence[float]) -> float:
    """The C most folds chose (ties -> the smaller C, as in `choose_c`)."""
    counts = Counter(cs)
    return min(counts, key=lambda c: (-counts[c], c))


def kfold_probe(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    c_grid: Sequence[float],
    folds: int = 5,
    val_proportion: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """k-fold scheme over one (test) split; C chosen inside each fold's training part."""
    if len(x) == 0:
        raise ValueError("linear probe: empty test split")
    fold_of = stratified_folds(y, folds, seed)
    per_fold: list[dict[str, Any]] = []
    fold_metrics: list[dict[str, float]] = []
    for k in range(folds):
        train, test = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        best, val_acc = choose_c(x[train], y[train], c_grid, val_proportion, max_iter, seed + k)
        clf = _fit(x[train], y[train], best, max_iter, seed)
        m, _ = _score(clf, x[test], y[test], n_classes)
        fold_metrics.append(m)
        per_fold.append(
            {"fold": k, "train_images": len(train), "test_images": len(test), "C": best, **m}
        )
    metrics = {key: float(np.mean([m[key] for m in fold_metrics])) for key in fold_metrics[0]}
    acc = np.asarray([m["lp_acc1"] for m in fold_metrics])
    metrics.update(
        lp_acc1_std=float(acc.std(ddof=1)),
        lp_acc1_min=float(acc.min()),
        lp_acc1_max=float(acc.max()),
    )
    metrics["C"] = _most_chosen([f["C"] for f in per_fold])
    return ProbeResult(
        metrics,
        metrics["C"],
        {},
        KFOLD_SCHEME.format(k=folds),
        int(np.mean([f["train_images"] for f in per_fold])),
        len(x),
        per_fold,
    )
