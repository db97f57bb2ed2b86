"""One model on one set: every task that applies, each writing its JSON record.

Every function takes the model's `Embedder` (tasks/evaluate/features.py): images and texts are
embedded once per model and reused across tasks; `emb.loaded` names the model in records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.evaluate import plots, results
from tasks.evaluate.datasets import CLASSIFICATION, RETRIEVAL, EvalSet, load_set
from tasks.evaluate.embed import decode_image
from tasks.evaluate.features import Embedder
from tasks.evaluate.params import EvaluateParams


def zeroshot_task(
    emb: Embedder, s: EvalSet, img: Any, params: EvaluateParams, out: Path
) -> dict[str, float]:
    """Zero-shot metrics, confusion matrix and per-class recall plots, CLIP_benchmark JSON."""
    import torch

    from tasks.evaluate import zeroshot

    loaded = emb.loaded
    classifier = zeroshot.zeroshot_classifier(emb.text_encoder(), s.classnames, s.templates)
    scores = zeroshot.logits(img, classifier)
    target = torch.as_tensor(s.labels)
    metrics = zeroshot.classification_metrics(scores, target, len(s.classnames))
    _write(out, loaded, s.name, CLASSIFICATION, metrics, params.language)
    if not params.figures:
        return metrics
    matrix = zeroshot.confusion(target.numpy(), scores.argmax(dim=1).numpy(), len(s.classnames))
    title = f"{loaded.name} on {s.name}: zero-shot"
    plots.save(
        plots.confusion_figure(matrix, s.classnames, title),
        out,
        f"{loaded.name}/{s.name}_confusion.png",
    )
    recall = zeroshot.per_class_recall(matrix)
    plots.save(
        plots.recall_figure(recall, s.classnames, title),
        out,
        f"{loaded.name}/{s.name}_per_class_recall.png",
    )
    return metrics


def retrieval_task(
    emb: Embedder, s: EvalSet, img: Any, params: EvaluateParams, out: Path
) -> dict[str, float]:
    """Recall@k both directions (any-positive rule), a figure of example image queries, JSON."""
    from tasks.evaluate import retrieval

    loaded = emb.loaded
    texts, owner = retrieval.flatten_captions(s.captions)
    txt = emb.texts(texts)
    metrics = retrieval.recall_at_k(img, txt, owner, params.recall_k)
    _write(out, loaded, s.name, RETRIEVAL, metrics, params.language)
    if not params.figures:
        return metrics
    shown = list(range(min(4, len(s))))
    top = (img[shown] @ txt.T).topk(min(3, len(texts)), dim=1)[1]
    examples = [
        [(texts[j], owner[j] == i) for j in top[row].tolist()] for row, i in enumerate(shown)
    ]
    fig = plots.retrieval_figure(
        [decode_image(s.images[i]) for i in shown],
        examples,
        f"{loaded.name} on {s.name}: image -> text",
    )
    plots.save(fig, out, f"{loaded.name}/{s.name}_retrieval_examples.png")
    return metrics


def _probe_train(s: EvalSet, params: EvaluateParams, train: EvalSet | None) -> EvalSet | None:
    """The set's train split the probe fits on (`train` when the caller read it), else None."""
    from tasks.evaluate.datasets import has_split

    p = params.probe
    if train is None and (
        p.train_split != s.split
        and has_split(s.name, params.eval_root, params.public_root, p.train_split)
    ):
        train = load_set(s.name, params.eval_root, params.public_root, p.train_split)
    return train


def probe_results(
    emb: Embedder,
    sets: dict[str, EvalSet],
    params: EvaluateParams,
    train_sets: dict[str, EvalSet] | None = None,
) -> dict[str, Any]:
    """Every probed set's `ProbeResult`, their fits pooled in one batch of worker jobs
    (linear_probe.probe_all: the numbers `probe_task` alone would give, less idle CPU); the
    probed sets are the classification sets named in `probe.datasets`."""
    from tasks.evaluate.linear_probe import ProbeJob, probe_all

    p = params.probe
    names = [n for n, s in sets.items() if s.task == CLASSIFICATION and n in p.datasets]
    jobs = []
    for name in names:
        s = sets[name]
        train = _probe_train(s, params, (train_sets or {}).get(name))
        jobs.append(
            ProbeJob(
                emb.images(s.images).numpy(),
                np.asarray(s.labels),
                len(s.classnames),
                None if train is None else emb.images(train.images).numpy(),
                None if train is None else np.asarray(train.labels),
            )
        )
    done = probe_all(jobs, p.c_grid, p.folds, p.val_proportion, p.max_iter, p.seed, p.n_jobs)
    return dict(zip(names, done, strict=True))


def probe_task(
    emb: Embedder,
    s: EvalSet,
    img: Any,
    params: EvaluateParams,
    out: Path,
    train: EvalSet | None = None,
    result: Any = None,
) -> dict[str, Any]:
    """Probe on the set's train split when it has one (test only scored), else k-fold over test;
    `train` is that split when the caller read it already; `result` the set's `ProbeResult`
    when `probe_results` computed it already (then only the record is written).

    The record (CLIP_benchmark's JSON) says which scheme ran (`split_scheme`), how many images
    trained and were scored, the validation accuracy per C, and for k-fold every fold's numbers.
    """
    loaded = emb.loaded
    if result is None:
        result = _probe_one(emb, s, img, params, _probe_train(s, params, train))
    rec = results.record(
        s.name, loaded.arch, loaded.ref, "linear_probe", result.metrics, params.language
    )
    rec.update(
        split_scheme=result.split_scheme,
        train_images=result.train_images,
        test_images=result.test_images,
        val_accuracy={str(c): a for c, a in result.val_accuracy.items()},
        folds=result.folds,
    )
    results.write_record(out, loaded.name, rec)
    return {**result.metrics, "lp_split_scheme": result.split_scheme}


def _probe_one(
    emb: Embedder, s: EvalSet, img: Any, params: EvaluateParams, train: EvalSet | None
) -> Any:
    """One set's `ProbeResult`: the train-split scheme when `train` is given, else k-fold."""
    from tasks.evaluate.linear_probe import kfold_probe, probe

    p = params.probe
    test_x, test_y = img.numpy(), np.asarray(s.labels)
    if train is not None:
        return probe(
            emb.images(train.images).numpy(),
            np.asarray(train.labels),
            test_x,
            test_y,
            len(s.classnames),
            p.c_grid,
            p.val_proportion,
            p.max_iter,
            p.seed,
            p.n_jobs,
        )
    return kfold_probe(
        test_x,
        test_y,
        len(s.classnames),
        p.c_grid,
        p.folds,
        p.val_proportion,
        p.max_iter,
        p.seed,
        p.n_jobs,
    )


def _write(
    out: Path, loaded: Any, dataset: str, task: str, metrics: dict[str, Any], language: str
) -> None:
    results.write_record(
        out, loaded.name, results.record(dataset, loaded.arch, loaded.ref, task, metrics, language)
    )
