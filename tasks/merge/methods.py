"""Method name -> how it merges (a lookup table, not an if/elif chain); each returns (state, info)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tasks.clip.statedict import LazyWeights
from tasks.merge import arithmetic, continual, opcm, soup
from tasks.merge.params import MergeParams


@dataclass
class MergeJob:
    """What every method gets: the inputs, the keys merged, the params, the arrival order."""

    base: LazyWeights
    models: Sequence[LazyWeights]
    keys: Sequence[str]
    params: MergeParams
    order: list[int]  # arrival order (indices into models) of the sequential methods
    scorer: Callable[[dict[str, Any]], float] | None = None  # greedy soup's held-out score
    resume: opcm.OpcmState | None = None  # OPCM continued from a merged model (continue_from)


Result = tuple[dict[str, Any], dict[str, Any]]


def arrival_order(n: int, given: Sequence[int], seed: int) -> list[int]:
    """The given order, else 0..n-1 shuffled with `seed` (Python's Random: stable across runs)."""
    if given:
        return list(given)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _uniform(job: MergeJob) -> Result:
    return soup.uniform_soup(job.base, job.models, job.keys), {"models": len(job.models)}


def _greedy(job: MergeJob) -> Result:
    if job.scorer is None:
        raise ValueError("greedy_soup needs a held-out scorer (heldout section)")
    return soup.greedy_soup(job.base, job.models, job.keys, job.scorer)


def _task_arithmetic(job: MergeJob) -> Result:
    p = job.params
    state = arithmetic.task_arithmetic(
        job.base, job.models, job.keys, p.task_arithmetic.lam, p.dare.p, p.dare.seed
    )
    return state, {"lambda": p.task_arithmetic.lam, "dare_p": p.dare.p}


def _ties(job: MergeJob) -> Result:
    p = job.params
    t = p.ties
    state = arithmetic.ties(
        job.base, job.models, job.keys, t.top_k, t.merge, t.lam, p.dare.p, p.dare.seed
    )
    return state, {"top_k": t.top_k, "merge": t.merge, "lambda": t.lam, "dare_p": p.dare.p}


def _wise_ft(job: MergeJob) -> Result:
    w = job.params.wise_ft
    state = arithmetic.wise_ft(job.base, job.models[w.model], job.keys, w.alpha)
    return state, {"alpha": w.alpha, "model": job.models[w.model].name}


def _opcm(job: MergeJob) -> Result:
    arrivals = (job.models[i] for i in job.order)
    alpha = job.params.opcm.alpha
    if job.resume is None:
        merged = opcm.opcm(job.base, arrivals, job.keys, alpha)
    else:
        merged = job.resume
        for model in arrivals:
            merged = opcm.opcm_step(merged, job.base, model, job.keys, alpha)
    return merged.merged, {**merged.info(), "alpha": alpha}


def _continual_ta(job: MergeJob) -> Result:
    lam = job.params.opcm.continual_lam
    state = continual.continual_task_arithmetic(
        job.base, (job.models[i] for i in job.order), job.keys, lam
    )
    return state, {"lambda": lam, "order": [job.models[i].name for i in job.order]}


def _running_average(job: MergeJob) -> Result:
    state = continual.running_average(job.base, (job.models[i] for i in job.order), job.keys)
    return state, {"order": [job.models[i].name for i in job.order]}


METHODS: dict[str, Callable[[MergeJob], Result]] = {
    "uniform_soup": _uniform,
    "greedy_soup": _greedy,
    "task_arithmetic": _task_arithmetic,
    "ties": _ties,
    "wise_ft": _wise_ft,
    "opcm": _opcm,
    "continual_task_arithmetic": _continual_ta,
    "running_average": _running_average,
}
SEQUENTIAL = {"opcm", "continual_task_arithmetic", "running_average"}  # use the arrival order
