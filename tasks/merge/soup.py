"""Model soups: the uniform soup (mean of the fine-tuned weights) and the greedy soup.

Greedy soup (Wortsman et al.): rank the models by their held-out score, start from the best, and
add the next one to the running average only if the soup's held-out score STRICTLY improves
(a tie leaves it out). The score comes from a callable (the stage passes zero-shot accuracy on
the tasks' held-out `val` splits, tasks/merge/heldout.py), so the rule is tested without models.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tasks.clip.statedict import LazyWeights
from tasks.merge.keys import base_state

Scorer = Callable[[dict[str, Any]], float]


def uniform_soup(
    base: LazyWeights, models: Sequence[LazyWeights], keys: Sequence[str]
) -> dict[str, Any]:
    """The plain average of the models on the merged keys (excluded keys: the base's)."""
    state = base_state(base)
    for key in keys:
        tensors = [m.get(key) for m in models]
        state[key] = sum(tensors[1:], tensors[0]) / len(tensors)
    return state


def average_of(
    base: LazyWeights, models: Sequence[LazyWeights], keys: Sequence[str]
) -> dict[str, Any]:
    """The soup of a subset (the same as uniform_soup; named for what greedy soup asks)."""
    return uniform_soup(base, models, keys)


def greedy_soup(
    base: LazyWeights,
    models: Sequence[LazyWeights],
    keys: Sequence[str],
    score: Scorer,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(soup state, info): info has each model's score, the order tried and the models kept."""
    if not models:
        raise ValueError("greedy soup: no models to merge")
    singles = [score(average_of(base, [m], keys)) for m in models]
    order = sorted(range(len(models)), key=lambda i: -singles[i])
    kept = [order[0]]
    best_state = average_of(base, [models[order[0]]], keys)
    best = singles[order[0]]
    history = [best]
    for i in order[1:]:
        candidate = average_of(base, [models[j] for j in [*kept, i]], keys)
        value = score(candidate)
        history.append(value)
        if value > best:  # strictly better, else the model stays out
            kept.append(i)
            best, best_state = value, candidate
    info = {
        "scores": singles,
        "order": order,
        "kept": kept,
        "soup_score": best,
        "tried_scores": history,
    }
    return best_state, info
