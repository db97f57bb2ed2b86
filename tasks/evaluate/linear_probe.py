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

Speed: every fit is single-threaded and deterministic (L-BFGS uses no randomness), so `n_jobs`
worker processes (joblib's loky) run the independent fits side by side with the same results as
one process: the folds of the k-fold scheme, the C grid of the train-split scheme. Measured in the
demo's evaluate stage, the probe was ~30% of the stage (the 90-class emoji subgroups alone fit
30 classifiers, those with C = 100 running to `max_iter`).
CLIP_benchmark trains a linear layer with AdamW on CUDA and sweeps weight decay instead, so its
`lp_*` numbers are not expected to match ours; the split protocol above is the same.
"""

from __future__ import annotations

import warnings
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
    with warnings.catch_warnings():
        # many classes in a small k-fold part (openclipart, emoji subgroups): sklearn suspects a
        # regression target; the labels are classes, and the warning filled the demo's console
        warnings.filterwarnings("ignore", message="The number of unique classes is greater")
        return clf.fit(x, y)


def _scores(clf: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision scores widened to every class (classes absent from training score -inf)."""
    raw = clf.decision_function(x)
    if raw.ndim == 1:  # binary: sklearn returns one column
        raw = np.stack([-raw, raw], axis=1)
    out = np.full((len(x), n_classes), -np.inf)
    out[:, clf.classes_] = raw
    return out


def _val_accuracy(
    x: np.ndarray,
    y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    c: float,
    max_iter: int,
    seed: int,
) -> float:
    """Accuracy on (val_x, val_y) of the classifier fit on (x, y) with C = c."""
    clf = _fit(x, y, c, max_iter, seed)
    return float((clf.predict(val_x) == val_y).mean()) if len(val_y) else 0.0


def parallel_map(fn: Any, jobs: Sequence[tuple[Any, ...]], n_jobs: int) -> list[Any]:
    """[fn(*job) for job in jobs], on `n_jobs` loky worker processes when n_jobs > 1 and there
    is more than one job (the fits hold the GIL: threads would not overlap). Same results in the
    same order as the serial loop."""
    if n_jobs <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    from joblib import Parallel, delayed

    return list(
        Parallel(n_jobs=min(n_jobs, len(jobs)), backend="loky")(delayed(fn)(*j) for j in jobs)
    )


def release_workers() -> None:
    """Stop joblib's reusable loky workers now (they otherwise idle for 300 s, keeping the
    parent's inherited stdout/stderr open); a no-op when none were started."""
    import sys

    if "joblib" not in sys.modules:
        return
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True, kill_workers=True)


def choose_c(
    x: np.ndarray,
    y: np.ndarray,
    c_grid: Sequence[float],
    val_proportion: float,
    max_iter: int,
    seed: int,
    n_jobs: int = 1,
) -> tuple[float, dict[float, float]]:
    """The C of the grid with the best accuracy on a stratified validation part of (x, y).

    Ties go to the smaller C (stronger regularisation). Only (x, y) is seen: callers pass the
    training data, never what they will score. `n_jobs` > 1 fits the grid's C values in that
    many processes (parallel_map).
    """
    if len(np.unique(y)) < 2:
        raise ValueError("linear probe: the training split holds a single class")
    fit_idx, val_idx = stratified_split(y, 1 - val_proportion, seed)
    if len(np.unique(y[fit_idx])) < 2:
        raise ValueError(
            f"linear probe: a {val_proportion:.0%} validation part leaves a single class to fit "
            f"({len(y)} training images); lower probe.val_proportion"
        )
    fx, fy, vx, vy = x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]
    accs = parallel_map(
        _val_accuracy, [(fx, fy, vx, vy, c, max_iter, seed) for c in c_grid], n_jobs
    )
    val_acc = dict(zip(c_grid, accs, strict=True))
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
    n_jobs: int = 1,
) -> ProbeResult:
    """Train-split scheme: C on a validation part of train, refit on all of train, score test;
    `n_jobs` processes fit the C grid (parallel_map)."""
    if len(train_x) == 0 or len(test_x) == 0:
        raise ValueError("linear probe: empty train or test split")
    best, val_acc = choose_c(train_x, train_y, c_grid, val_proportion, max_iter, seed, n_jobs)
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
    n_jobs: int = 1,
) -> ProbeResult:
    """k-fold scheme over one (test) split; C chosen inside each fold's training part;
    `n_jobs` processes run the folds (parallel_map), each fold's fits in order inside it."""
    if len(x) == 0:
        raise ValueError("linear probe: empty test split")
    fold_of = stratified_folds(y, folds, seed)
    jobs = []
    for k in range(folds):
        train, test = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
        jobs.append(
            (
                x[train],
                y[train],
                x[test],
                y[test],
                n_classes,
                c_grid,
                val_proportion,
                max_iter,
                seed,
                k,
            )
        )
    done = parallel_map(_fold, jobs, n_jobs)
    return _kfold_result(done, [(len(j[1]), len(j[3])) for j in jobs], folds, len(x))


def _fold(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    c_grid: Sequence[float],
    val_proportion: float,
    max_iter: int,
    seed: int,
    k: int,
) -> tuple[float, dict[str, float]]:
    """Fold k of kfold_probe: C chosen on its training part (seed + k), refit there, the held-out
    part scored; a module-level function so worker processes can run it."""
    best, _ = choose_c(train_x, train_y, c_grid, val_proportion, max_iter, seed + k)
    clf = _fit(train_x, train_y, best, max_iter, seed)
    m, _ = _score(clf, test_x, test_y, n_classes)
    return best, m


@dataclass(frozen=True)
class ProbeJob:
    """One set's probe for `probe_all`: the train-split scheme when `train_x` is given (as
    `probe`), else k-fold over the test split (as `kfold_probe`)."""

    test_x: np.ndarray
    test_y: np.ndarray
    n_classes: int
    train_x: np.ndarray | None = None
    train_y: np.ndarray | None = None


def _validation_part(
    x: np.ndarray, y: np.ndarray, val_proportion: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fit x, fit y, val x, val y) exactly as `choose_c` cuts them, with its checks."""
    if len(np.unique(y)) < 2:
        raise ValueError("linear probe: the training split holds a single class")
    fit_idx, val_idx = stratified_split(y, 1 - val_proportion, seed)
    if len(np.unique(y[fit_idx])) < 2:
        raise ValueError(
            f"linear probe: a {val_proportion:.0%} validation part leaves a single class to fit "
            f"({len(y)} training images); lower probe.val_proportion"
        )
    return x[fit_idx], y[fit_idx], x[val_idx], y[val_idx]


def _refit_and_score(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    n_classes: int,
    c: float,
    max_iter: int,
    seed: int,
) -> dict[str, float]:
    """The final classifier of one problem (fit on its whole training part with the chosen C)
    and its metrics on the scored part; module level so worker processes can run it."""
    m, _ = _score(_fit(train_x, train_y, c, max_iter, seed), test_x, test_y, n_classes)
    return m


def probe_all(
    jobs: Sequence[ProbeJob],
    c_grid: Sequence[float],
    folds: int = 5,
    val_proportion: float = 0.2,
    max_iter: int = 1000,
    seed: int = 0,
    n_jobs: int = 1,
) -> list[ProbeResult]:
    """`probe` / `kfold_probe` of every job, with every fit of every set pooled: the same
    results, number for number (tests/evaluate/test_linear_probe.py), in less wall time.

    Why: per set, the folds (5 jobs on 2 processes: the last round uses one core) and the C grid
    then the refit (the train split's final fit ran alone in the calling process, the other core
    idle) left cores idle; in a cold demo the probe was a large part of evaluate. Here all
    validation fits of all sets go to the `n_jobs` processes in one batch (phase 1), then all the
    final fits (phase 2): the same deterministic single-threaded L-BFGS fits on the same data,
    only scheduled together.
    """
    # a problem: (job index, fold or None, train x/y, scored x/y, validation part, split seed)
    problems: list[tuple[int, int | None, Any, Any, Any, Any, tuple[Any, ...], int]] = []
    fold_index: dict[int, np.ndarray] = {}
    for j, job in enumerate(jobs):
        if job.train_x is not None and job.train_y is not None:
            if len(job.train_x) == 0 or len(job.test_x) == 0:
                raise ValueError("linear probe: empty train or test split")
            part = _validation_part(job.train_x, job.train_y, val_proportion, seed)
            problems.append((j, None, job.train_x, job.train_y, job.test_x, job.test_y, part, seed))
            continue
        if len(job.test_x) == 0:
            raise ValueError("linear probe: empty test split")
        fold_of = stratified_folds(job.test_y, folds, seed)
        fold_index[j] = fold_of
        for k in range(folds):
            tr, te = np.flatnonzero(fold_of != k), np.flatnonzero(fold_of == k)
            tx, ty = job.test_x[tr], job.test_y[tr]
            part = _validation_part(tx, ty, val_proportion, seed + k)
            problems.append((j, k, tx, ty, job.test_x[te], job.test_y[te], part, seed + k))
    val_jobs = [(*part, c, max_iter, s) for *_, part, s in problems for c in c_grid]
    accs = parallel_map(_val_accuracy, val_jobs, n_jobs)
    chosen: list[tuple[float, dict[float, float]]] = []
    for n in range(len(problems)):
        val_acc = dict(zip(c_grid, accs[n * len(c_grid) : (n + 1) * len(c_grid)], strict=True))
        chosen.append((float(max(c_grid, key=lambda c: (val_acc[c], -c))), val_acc))
    fits = [
        (tx, ty, sx, sy, jobs[j].n_classes, best, max_iter, seed)
        for (j, _, tx, ty, sx, sy, _, _), (best, _) in zip(problems, chosen, strict=True)
    ]
    scored = parallel_map(_refit_and_score, fits, n_jobs)
    out: list[ProbeResult] = []
    for j, job in enumerate(jobs):
        mine = [n for n, p in enumerate(problems) if p[0] == j]
        if j not in fold_index:
            (n,) = mine
            best, val_acc = chosen[n]
            metrics = {**scored[n], "C": best}
            out.append(
                ProbeResult(
                    metrics,
                    best,
                    val_acc,
                    TRAIN_SCHEME.format(val=val_proportion),
                    len(problems[n][2]),
                    len(job.test_x),
                )
            )
            continue
        out.append(
            _kfold_result(
                [(chosen[n][0], scored[n]) for n in mine],
                [(len(problems[n][3]), len(problems[n][5])) for n in mine],
                folds,
                len(job.test_x),
            )
        )
    return out


def _kfold_result(
    done: list[tuple[float, dict[str, float]]],
    sizes: list[tuple[int, int]],
    folds: int,
    n_test: int,
) -> ProbeResult:
    """kfold_probe's result from each fold's (chosen C, metrics) and (train, test) sizes."""
    fold_metrics = [m for _, m in done]
    per_fold: list[dict[str, Any]] = [
        {"fold": k, "train_images": n_train, "test_images": n_scored, "C": best, **m}
        for k, ((best, m), (n_train, n_scored)) in enumerate(zip(done, sizes, strict=True))
    ]
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
        n_test,
        per_fold,
    )
