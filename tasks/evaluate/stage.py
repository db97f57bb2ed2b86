"""The evaluate stage: every model on every set, every task; scoreboard, audit, records and plots."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.evaluate.datasets import (
    CLASSIFICATION,
    EvalSet,
    PublicBenchmarkMissing,
    load_set,
)
from tasks.evaluate.features import Embedder
from tasks.evaluate.loading import load_model
from tasks.evaluate.params import EvaluateParams
from tasks.evaluate.scoreboard import Row
from tasks.io.paths import resolve_path

log = logging.getLogger(__name__)


def load_sets(params: EvaluateParams) -> tuple[dict[str, EvalSet], list[str]]:
    """Local sets must exist; an absent public benchmark is skipped with a message unless required."""
    sets: dict[str, EvalSet] = {}
    skipped: list[str] = []
    for name in [*params.datasets, *params.public_datasets]:
        try:
            sets[name] = load_set(name, params.eval_root, params.public_root, params.split)
        except PublicBenchmarkMissing as exc:
            if params.public_required or name in params.datasets:
                raise
            log.warning("skipping: %s", exc)
            print(f"evaluate: skipping {exc}")
            skipped.append(name)
    return sets, skipped


def store_root(params: EvaluateParams) -> Path | None:
    """Where frozen-tower features are read and added (tasks/clip/featurestore.py), or None."""
    if not params.embed.feature_store:
        return None
    from tasks.clip.featurestore import default_store_root

    return default_store_root()


def probe_train_images(params: EvaluateParams, sets: dict[str, EvalSet]) -> dict[str, EvalSet]:
    """The train splits the linear probe will fit on (sets that have one), read once."""
    from tasks.evaluate.datasets import has_split

    p = params.probe
    out: dict[str, EvalSet] = {}
    if not p.enabled or p.train_split == params.split:
        return out
    for name, s in sets.items():
        probed = s.task == CLASSIFICATION and name in p.datasets
        if probed and has_split(name, params.eval_root, params.public_root, p.train_split):
            out[name] = load_set(name, params.eval_root, params.public_root, p.train_split)
    return out


def evaluate_model(
    emb: Embedder,
    sets: dict[str, EvalSet],
    params: EvaluateParams,
    out: Path,
    train_sets: dict[str, EvalSet] | None = None,
) -> tuple[dict[str, Any], list[Row]]:
    """Embed every image of every set (and of the probe's train splits) in one pass, each
    distinct image once, then run the tasks that apply to each set on those embeddings."""
    from tasks.evaluate import suite
    from tasks.evaluate.scoreboard import (
        PROBE_METRIC,
        PROBE_TASK,
        main_metric,
        main_value,
        make_row,
    )

    loaded = emb.loaded
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    everything = [b for s in [*sets.values(), *(train_sets or {}).values()] for b in s.images]
    with _timed(seconds, "embed", cpu):
        emb.images(everything)  # one pass: batches fill across sets, repeats are encoded once
    probes: dict[str, Any] = {}
    if params.probe.enabled:  # every set's fits pooled in one batch of worker jobs
        with _timed(seconds, "probe", cpu):
            probes = suite.probe_results(emb, sets, params, train_sets)
    metrics: dict[str, Any] = {}
    rows: list[Row] = []
    for name, s in sets.items():
        img = emb.images(s.images)
        with _timed(seconds, s.task, cpu):
            if s.task == CLASSIFICATION:
                m = suite.zeroshot_task(emb, s, img, params, out)
            else:
                m = suite.retrieval_task(emb, s, img, params, out)
        metric = main_metric(s.task, name, params.main_metrics)
        rows.append(make_row(loaded.name, s, s.task, metric, main_value(m, metric)))
        m = {
            k: v for k, v in m.items() if v == v
        }  # NaN (acc5 below 5 classes) stays in the JSON only
        m.update(_extras(emb, s, img, params, out, m, probes.get(name), seconds, cpu))
        if PROBE_METRIC in m:  # shown with its chance and baseline, outside the average
            rows.append(make_row(loaded.name, s, PROBE_TASK, PROBE_METRIC, m[PROBE_METRIC], False))
        metrics[name] = m
    stats = emb.stats.as_metrics()
    metrics["images_per_s"] = stats["images_per_s"]
    metrics["embedding"] = stats
    metrics["task_seconds"] = seconds
    metrics["task_cpu_seconds"] = cpu
    return metrics, rows


@contextmanager
def _timed(
    seconds: dict[str, float], key: str, cpu: dict[str, float] | None = None
) -> Iterator[None]:
    """Adds the wall seconds of the block to `seconds[key]` (and its CPU seconds, this process
    and its worker processes, to `cpu[key]`): the stage's metrics say where its time went
    (`task_seconds`, `task_cpu_seconds` per model), so the next cut is measured, not guessed.
    CPU seconds are what to compare on a shared machine: wall time there depends on the load."""
    start, cpu_start = time.perf_counter(), cpu_seconds() if cpu is not None else 0.0
    try:
        yield
    finally:
        seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
        if cpu is not None:
            # never negative: a worker ending unreaped inside the block drops out of both counts
            cpu[key] = cpu.get(key, 0.0) + max(0.0, cpu_seconds() - cpu_start)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (every thread), of its live child processes
    (the probe's loky workers live across fits) and of its children that ended."""
    import resource

    import psutil

    total = time.process_time()
    total += sum(
        getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f) for f in ("ru_utime", "ru_stime")
    )
    for child in psutil.Process().children(recursive=True):
        try:
            t = child.cpu_times()
        except psutil.Error:  # ended meanwhile: counted in RUSAGE_CHILDREN once reaped
            continue
        total += t.user + t.system
    return total


def _extras(
    emb: Embedder,
    s: EvalSet,
    img: Any,
    params: EvaluateParams,
    out: Path,
    base: dict[str, float],
    probed: Any = None,
    seconds: dict[str, float] | None = None,
    cpu: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Probe (its record, from `probed`, the set's `ProbeResult` when computed already),
    PerceptionCLIP and robustness, for the classification sets their params name."""
    from tasks.evaluate import perception, robustness, suite

    seconds = {} if seconds is None else seconds
    cpu = {} if cpu is None else cpu
    extra: dict[str, Any] = {}
    if s.task != CLASSIFICATION:
        return extra
    if params.probe.enabled and s.name in params.probe.datasets:
        with _timed(seconds, "probe", cpu):
            extra.update(suite.probe_task(emb, s, img, params, out, result=probed))
    if params.perception.enabled and s.name in params.perception.datasets:
        with _timed(seconds, "perception", cpu):
            extra["perception"] = perception.evaluate(
                emb.text_encoder(), s, img, params.perception, base["acc1"]
            )
    if params.robustness.enabled and s.name in params.robustness.datasets:
        with _timed(seconds, "robustness", cpu):
            extra["robustness"] = robustness.evaluate(emb, s, params.robustness)
    return extra


def _leak_report(params: EvaluateParams, out: Path, sets: list[str]) -> dict[str, Any]:
    """Per model and eval set, eval images in its training data (tasks/evaluate/leakage.py);
    computed first (it is cheap, and a missing input fails before hours of evaluation), written
    to leakage.json; {} when `leakage_dir` is None."""
    if params.leakage_dir is None:
        return {}
    from tasks.evaluate import leakage
    from tasks.evaluate.loading import model_label
    from tasks.io import atomic_write_json

    reports = leakage.audit({model_label(r): r for r in params.models}, params.leakage_dir, sets)
    atomic_write_json(out / "leakage.json", leakage.as_table(reports))
    return reports


def run(params: EvaluateParams) -> dict[str, Any]:
    """Evaluate `params.models`; return per-model metrics and the scoreboard means.

    The linear probe's worker processes are stopped before returning, whatever happens: idle
    loky workers would otherwise live on for minutes holding the caller's stdout open (a
    `make demo` piping its output waited for them after the pipeline had finished).
    """
    from tasks.evaluate.linear_probe import release_workers

    try:
        return _run(params)
    finally:
        release_workers()


def _run(params: EvaluateParams) -> dict[str, Any]:
    from tasks.evaluate import scoreboard
    from tasks.io import atomic_write_json

    out = resolve_path(params.output_dir)
    sets, skipped = load_sets(params)
    if not sets:
        raise ValueError(
            "evaluate: no dataset to evaluate (params.datasets and public_datasets are empty or absent)"
        )
    metrics: dict[str, Any] = {"skipped_public_datasets": len(skipped)}
    leaks = _leak_report(params, out, [n for n in sets if n in params.datasets])
    rows: list[Row] = []
    train_sets = probe_train_images(params, sets)
    done = _evaluate_models(params, sets, out, train_sets)
    for ref in params.models:
        model = done[ref]
        metrics[model.name] = model.metrics
        rows.extend(model.rows)
        if model.name in leaks:
            metrics[model.name]["leakage"] = leaks[model.name]
    for name, mean in scoreboard.means(rows).items():
        metrics[name]["scoreboard_mean"] = mean
    scoreboard.attach(metrics, rows)
    atomic_write_json(out / "scoreboard.json", scoreboard.as_table(rows))
    scoreboard.log_table(rows)
    if params.figures:
        scoreboard.save_figures(rows, out)
    if params.membership.enabled:
        _membership(params, out, done, metrics)
    atomic_write_json(out / "metrics.json", metrics)
    return metrics


@dataclass
class ModelDone:
    """One evaluated model: its metrics and scoreboard rows; its `Embedder` when it ran in this
    process, else the membership audits of its targets, which ran beside it in its process."""

    name: str
    metrics: dict[str, Any]
    rows: list[Row]
    embedder: Embedder | None = None
    audits: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit_seconds: float = 0.0  # wall and CPU seconds of those audits
    audit_cpu_seconds: float = 0.0


def _evaluate_models(
    params: EvaluateParams,
    sets: dict[str, EvalSet],
    out: Path,
    train_sets: dict[str, EvalSet],
) -> dict[str, ModelDone]:
    """Every model of `params.models` by reference: one after the other in this process, or
    `model_processes` at a time in spawned processes of `cpu_count // model_processes` torch
    threads each. Every model's work is independent of the others' (own embeddings, own seeded
    generators; the feature store is a pure cache that takes concurrent writers), so the numbers
    are those of the sequential path, provided the kernels give the same bits on fewer threads
    (tests/evaluate/test_parallel.py checks both paths agree)."""
    workers = min(params.model_processes, len(params.models))
    if workers <= 1:
        done: dict[str, ModelDone] = {}
        root = store_root(params)
        stores: dict[str, Any] = {}  # each tower's feature store opened once for every model
        for ref in params.models:
            emb = Embedder(load_model(ref), params.embed, root, stores)
            metrics, rows = evaluate_model(emb, sets, params, out, train_sets)
            done[ref] = ModelDone(emb.name, metrics, rows, emb)
        return done
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = mp.get_context("spawn")
    init = (threads, os.getpid())
    with ProcessPoolExecutor(workers, context, _init_worker, init) as pool:
        futures = {
            ref: pool.submit(_evaluate_in_worker, ref, params, sets, out, train_sets)
            for ref in params.models
        }
        return {ref: f.result() for ref, f in futures.items()}


def _init_worker(threads: int, parent: int) -> None:
    """A model worker: `threads` torch threads, and a watchdog that ends it once the stage
    process is gone (killed, its worker would otherwise go on evaluating for minutes, orphaned:
    seen when a measuring run was stopped)."""
    import os
    import threading

    import torch

    torch.set_num_threads(threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


_WORKER_STORES: dict[str, Any] = {}  # a worker process's feature stores, for all its models


def _evaluate_in_worker(
    ref: str,
    params: EvaluateParams,
    sets: dict[str, EvalSet],
    out: Path,
    train_sets: dict[str, EvalSet],
) -> ModelDone:
    """One model in a worker process (`model_processes` > 1), with the membership audits whose
    target it is (they reuse its embeddings, as in the sequential path); the linear probe's
    workers are stopped before returning."""
    from tasks.evaluate.linear_probe import release_workers

    try:
        emb = Embedder(load_model(ref), params.embed, store_root(params), _WORKER_STORES)
        metrics, rows = evaluate_model(emb, sets, params, out, train_sets)
        done = ModelDone(emb.name, metrics, rows)
        mine = [t for t in params.membership.targets if t.model == ref]
        if params.membership.enabled and mine:
            from tasks.evaluate import membership

            timing: dict[str, float] = {}
            cpu: dict[str, float] = {}
            p = params.membership.model_copy(update={"targets": mine})
            with _timed(timing, "membership", cpu):
                done.audits = membership.run_audits(
                    p, {ref: emb}, out, params.embed, store_root(params)
                )
            done.audit_seconds, done.audit_cpu_seconds = timing["membership"], cpu["membership"]
        return done
    finally:
        release_workers()


def _membership(
    params: EvaluateParams, out: Path, done: dict[str, ModelDone], metrics: dict[str, Any]
) -> None:
    """The membership audit of every target into `metrics`, in the targets' order: those a
    worker process ran beside its model taken from it, the others run here (reusing the
    embeddings of models evaluated in this process)."""
    from tasks.evaluate import membership

    metrics["membership_seconds"] = metrics["membership_cpu_seconds"] = 0.0  # keys' place
    timing: dict[str, float] = {"membership": sum(d.audit_seconds for d in done.values())}
    cpu: dict[str, float] = {"membership": sum(d.audit_cpu_seconds for d in done.values())}
    ran = {r: d for r, d in done.items() if d.embedder is None}  # the workers' models
    embedders = {r: d.embedder for r, d in done.items() if d.embedder is not None}
    rest = [t for t in params.membership.targets if t.model not in ran]
    audits: dict[str, dict[str, Any]] = {}
    if rest:
        p = params.membership.model_copy(update={"targets": rest})
        with _timed(timing, "membership", cpu):
            audits = membership.run_audits(p, embedders, out, params.embed, store_root(params))
    from tasks.evaluate.loading import model_label

    for target in params.membership.targets:
        source = ran[target.model].audits if target.model in ran else audits
        name = model_label(target.model)
        if name in source:
            for key, value in source[name].items():  # membership, and membership_shift
                metrics.setdefault(name, {})[key] = value
    metrics["membership_seconds"] = timing["membership"]  # the audit of every target
    metrics["membership_cpu_seconds"] = cpu["membership"]
