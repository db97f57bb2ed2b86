"""The merge stage: open the base and the fine-tuned models lazily, check they fit, run every
method in params, write one model folder per method (and per extra OPCM order), register each
with its lineage, and report held-out accuracy per method against the base and the experts."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tasks.clip.statedict import LazyWeights, check_compatible, open_weights, write_model_folder
from tasks.io.atomic import atomic_write_text, sweep_temp
from tasks.merge.lineage import lineage, lineage_yaml, register, write_lineage
from tasks.merge.methods import METHODS, MergeJob, arrival_order
from tasks.merge.params import MergeParams


def open_inputs(params: MergeParams) -> tuple[LazyWeights, list[LazyWeights]]:
    """The base and every model, memory-mapped; a clear error naming the model and the key."""
    if not params.inputs.models:
        raise ValueError("inputs.models is empty: name the fine-tuned models to merge")
    base = open_weights(params.inputs.base)
    models = [open_weights(ref) for ref in params.inputs.models]
    for model in models:
        check_compatible(base, model)
    return base, models


def continued_state(params: MergeParams, base: LazyWeights) -> tuple[Any, list[LazyWeights]]:
    """(OPCM state, [the merged model]) when continuing a merged model, else (None, [])."""
    from tasks.merge.lineage import read_lineage
    from tasks.merge.opcm import opcm_continue

    ref = params.inputs.continue_from
    if not ref:
        return None, []
    merged = open_weights(ref)
    check_compatible(base, merged)
    record = read_lineage(merged.folder)
    if record is None or record.get("method") != "opcm":
        raise ValueError(f"inputs.continue_from {ref!r}: not an OPCM model of the merge stage")
    return opcm_continue(merged, record["method_info"]), [merged]


def task_vector_norm(base: LazyWeights, state: dict[str, Any], keys: list[str]) -> float:
    return math.sqrt(sum(float(((state[k] - base.get(k)) ** 2).sum()) for k in keys))


def make_scorer(params: MergeParams, base: LazyWeights) -> Any:
    """The held-out scorer when greedy soup or the report needs it, else None."""
    from tasks.io.paths import resolve_path
    from tasks.merge.heldout import HeldoutScorer

    h = params.heldout
    if "greedy_soup" not in params.methods and not h.report:
        return None
    store = None
    if h.feature_store:
        from tasks.clip.featurestore import default_store_root

        store = default_store_root()
    return HeldoutScorer(
        base.folder, resolve_path(h.eval_root), h.sets, h.split, h.max_items, h.batch_size, store
    )


def jobs(params: MergeParams, n: int) -> list[tuple[str, str, list[int]]]:
    """(output name, method, arrival order): OPCM once per order, the rest once."""
    o = params.opcm
    out: list[tuple[str, str, list[int]]] = []
    for method in params.methods:
        orders = o.orders if method == "opcm" and not o.order else 1
        for k in range(orders):
            name = method if k == 0 else f"{method}_order{k}"
            out.append((name, method, arrival_order(n, o.order, o.seed + k)))
    return out


def run(params: MergeParams) -> dict[str, Any]:
    """Merge by every method; metrics per output: seconds, task-vector norm, held-out scores."""
    from tasks.io.paths import resolve_path
    from tasks.merge.keys import changed_keys, merged_keys
    from tasks.merge.report import log_comparison, reference_scores

    base, models = open_inputs(params)
    resume, previous = continued_state(params, base)
    merged_before = list(resume.names) if resume else []  # the OPCM step appends to resume
    selected = merged_keys(base, params.inputs.exclude)
    keys = changed_keys(base, [*models, *previous], selected)
    out_root = resolve_path(params.outputs.out_dir)
    sweep_temp(out_root)  # model folders a killed run left half-written (never renamed in)
    scorer = make_scorer(params, base)
    metrics: dict[str, Any] = {
        "models": len(models),
        "keys_total": len(base.names()),
        "keys_selected": len(selected),  # floating keys not excluded by params
        "keys_merged": len(keys),  # of those, the keys some model changes
    }
    scores: dict[str, dict[str, float]] = {}
    if scorer is not None and params.heldout.report:
        scores.update(reference_scores(scorer, base, models))
    for name, method, order in jobs(params, len(models)):
        job = MergeJob(base, models, keys, params, order, scorer, resume)
        started = time.perf_counter()
        state, info = METHODS[method](job)
        seconds = time.perf_counter() - started
        record = lineage(
            method,
            params.inputs.base,
            [*merged_before, *params.inputs.models],
            info,
            params.model_dump(mode="json"),
        )
        folder = write_model_folder(
            out_root / name, base, state, lineage_yaml(record), params.outputs.checkpoint_pt
        )
        write_lineage(folder, record)
        metrics[f"{name}.seconds"] = round(seconds, 3)
        metrics[f"{name}.task_vector_norm"] = task_vector_norm(base, state, keys)
        if scorer is not None and params.heldout.report:
            scores[name] = scorer.per_set(state)
            metrics[f"{name}.heldout_mean"] = sum(scores[name].values()) / len(scores[name])
        prefix = params.outputs.registered_model_prefix
        version = register(folder, f"{prefix}-{name}" if prefix else "", name, record)
        if version:
            metrics[f"{name}.registered_version"] = int(version)
        del state
    if scores:
        metrics.update(log_comparison(scores, params, out_root))
    if scorer is not None:  # how often the frozen tower parts ran (once per distinct weights)
        metrics.update({f"heldout.{k}": v for k, v in scorer.stats().items()})
    atomic_write_text(
        out_root / "summary.json", json.dumps(metrics, indent=1, sort_keys=True) + "\n"
    )
    return metrics


def output_folder(params: MergeParams, name: str) -> Path:
    from tasks.io.paths import resolve_path

    return resolve_path(params.outputs.out_dir) / name
