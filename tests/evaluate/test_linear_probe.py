"""The linear probe: learns separable features, picks C on validation data, splits stratified."""

from __future__ import annotations

import os

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


def test_kfold_scores_every_test_image_once_and_says_so():
    from tasks.evaluate.linear_probe import kfold_probe

    x, y = _blobs([12, 9, 7], 3, 0.3, seed=3)
    res = kfold_probe(x, y, 3, c_grid=[0.1, 10.0], folds=5, seed=0)
    assert res.split_scheme == "kfold-5 on test (no train split)"
    assert len(res.folds) == 5
    assert sum(f["test_images"] for f in res.folds) == len(y) == res.test_images
    accs = [f["lp_acc1"] for f in res.folds]
    assert res.metrics["lp_acc1"] == pytest.approx(np.mean(accs))
    assert res.metrics["lp_acc1_std"] == pytest.approx(np.std(accs, ddof=1))
    assert res.metrics["lp_acc1_min"] == min(accs) and res.metrics["lp_acc1_max"] == max(accs)
    assert res.metrics["lp_acc1"] >= 0.9
    assert res.metrics["C"] in (0.1, 10.0)


def test_kfold_chooses_c_without_the_fold_it_scores(monkeypatch):
    """Nested: each fold's C is chosen on images of its training part only."""
    from tasks.evaluate import linear_probe

    x, y = _blobs(10, 3, 0.3, seed=4)
    x = np.concatenate([x, np.arange(len(y))[:, None] * 1e-6], axis=1)  # last column: row id
    seen: list[set[int]] = []
    choose = linear_probe.choose_c

    def spy(fx, fy, *args, **kwargs):
        seen.append({round(v * 1e6) for v in fx[:, -1]})
        return choose(fx, fy, *args, **kwargs)

    monkeypatch.setattr(linear_probe, "choose_c", spy)
    folds = linear_probe.stratified_folds(y, 4, seed=0)
    linear_probe.kfold_probe(x, y, 3, c_grid=[1.0], folds=4, seed=0)
    assert len(seen) == 4
    for k, ids in enumerate(seen):
        scored = set(np.flatnonzero(folds == k).tolist())
        assert ids and not ids & scored
        assert ids | scored == set(range(len(y)))


def test_stratified_folds_spread_each_class_and_follow_the_seed():
    from tasks.evaluate.linear_probe import stratified_folds

    y = np.array([0] * 10 + [1] * 5 + [2] * 3)
    folds = stratified_folds(y, 5, seed=0)
    assert sorted(np.bincount(folds, minlength=5)) == [3, 3, 4, 4, 4]
    assert np.bincount(folds[y == 0], minlength=5).tolist() == [2] * 5
    assert np.bincount(folds[y == 1], minlength=5).tolist() == [1] * 5
    assert len(set(folds[y == 2])) == 3  # a class smaller than k lands in distinct folds
    assert np.array_equal(folds, stratified_folds(y, 5, seed=0))
    assert not np.array_equal(folds, stratified_folds(y, 5, seed=1))
    with pytest.raises(ValueError, match="cannot fill 5 folds"):
        stratified_folds(np.array([0, 1, 0]), 5, seed=0)


def test_train_scheme_fits_on_train_only():
    """Train labels mapped c -> c+1: fitting on train scores ~0 on test, fitting on test ~1."""
    x, y = _blobs(20, 4, 0.2, seed=5)
    tx, ty = _blobs(10, 4, 0.2, seed=5, draw=1)
    res = probe(x, (y + 1) % 4, tx, ty, 4, c_grid=[1.0, 10.0])
    assert res.metrics["lp_acc1"] <= 0.05
    assert res.split_scheme.startswith("train split") and res.train_images == len(y)
    assert res.test_images == len(ty)
    control = probe(tx, ty, tx, ty, 4, c_grid=[1.0, 10.0])
    assert control.metrics["lp_acc1"] >= 0.95


def test_worker_processes_give_the_serial_results():
    """n_jobs > 1 runs the folds / the C grid in loky processes: every number must be the one
    the serial loop gives (the fits are deterministic), and the processes must really be used."""
    from tasks.evaluate import linear_probe

    x, y = _blobs([12, 9, 7], 3, 0.8, seed=6)
    grid = [0.01, 1.0, 100.0]
    serial = linear_probe.kfold_probe(x, y, 3, c_grid=grid, folds=4, seed=0, n_jobs=1)
    parallel = linear_probe.kfold_probe(x, y, 3, c_grid=grid, folds=4, seed=0, n_jobs=2)
    np.testing.assert_equal(parallel.metrics, serial.metrics)  # exact; NaN (acc5) equals NaN
    np.testing.assert_equal(parallel.folds, serial.folds)
    tx, ty = _blobs([6, 5, 4], 3, 0.8, seed=6, draw=1)
    a = linear_probe.probe(x, y, tx, ty, 3, c_grid=grid, n_jobs=1)
    b = linear_probe.probe(x, y, tx, ty, 3, c_grid=grid, n_jobs=2)
    np.testing.assert_equal(
        (a.metrics, a.val_accuracy, a.chosen_c), (b.metrics, b.val_accuracy, b.chosen_c)
    )
    pids = linear_probe.parallel_map(os.getpid, [()] * 4, 2)
    assert os.getpid() not in pids
    # the evaluate stage releases them on the way out: none is left holding our stdout open
    import psutil

    workers = set(pids)
    assert workers & {p.pid for p in psutil.Process().children(recursive=True)}
    linear_probe.release_workers()
    alive = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running()}
    assert not (workers & alive), "loky workers outlived release_workers()"


def test_pooled_probes_give_the_per_set_numbers():
    """probe_all (what the evaluate stage runs: every set's fits in one batch of worker jobs)
    gives, number for number, what probe / kfold_probe give set by set, in the jobs' order;
    the sets differ (classes, sizes, scheme) so a result handed to the wrong set shows."""
    from tasks.evaluate import linear_probe
    from tasks.evaluate.linear_probe import ProbeJob, kfold_probe, probe_all

    grid = [0.01, 1.0, 100.0]
    x, y = _blobs([14, 9, 7], 3, 0.8, seed=6)
    tx, ty = _blobs([6, 5, 4], 3, 0.8, seed=6, draw=1)
    kx, ky = _blobs([10, 8, 9, 7], 4, 0.9, seed=8)
    k2x, k2y = _blobs([9, 9], 2, 1.2, seed=9)
    alone = [
        kfold_probe(kx, ky, 4, grid, folds=4, seed=3),
        probe(x, y, tx, ty, 3, grid, seed=3),
        kfold_probe(k2x, k2y, 2, grid, folds=3, seed=3),
    ]
    jobs = [ProbeJob(kx, ky, 4), ProbeJob(tx, ty, 3, x, y), ProbeJob(k2x, k2y, 2)]
    for n_jobs in (1, 2):
        pooled = probe_all(jobs[:2], grid, folds=4, seed=3, n_jobs=n_jobs)
        pooled += probe_all(jobs[2:], grid, folds=3, seed=3, n_jobs=n_jobs)
        for a, b in zip(alone, pooled, strict=True):
            np.testing.assert_equal(vars(b), vars(a))  # exact; NaN (acc5) equals NaN
    assert alone[0].metrics != alone[2].metrics
    linear_probe.release_workers()
    with pytest.raises(ValueError, match="single class"):
        probe_all([ProbeJob(tx, ty, 3, x, np.zeros(len(y), dtype=int))], grid)
