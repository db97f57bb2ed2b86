"""PerceptionCLIP: infer contextual attributes zero-shot, then classify conditioned on them.

Prompts join a class template with one value of every attribute ("a photo of a {c}, on a plain
background, a drawing"). For each image, p(z | x) is the joint softmax over (class, z) summed over
classes; the most likely z is kept and the class is the argmax of the logits under that z. The
result is compared with plain zero-shot top-1 on the same images.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from tasks.evaluate.datasets import EvalSet
from tasks.evaluate.params import PerceptionParams


def conditioned_templates(templates: list[str], values: tuple[str, ...]) -> list[str]:
    """`a photo of a {c}.` + (`on grass`, `a drawing`) -> `a photo of a {c}, on grass, a drawing.`"""
    suffix = ", ".join(v.replace("{", "{{").replace("}", "}}") for v in values)
    return [f"{t.rstrip(' .')}, {suffix}." for t in templates]


def attribute_combos(attributes: dict[str, list[str]]) -> list[tuple[str, ...]]:
    if not attributes or any(not v for v in attributes.values()):
        raise ValueError(
            f"PerceptionCLIP: every attribute needs at least one value, got {attributes}"
        )
    return list(itertools.product(*attributes.values()))


def infer_and_classify(scores: Any) -> tuple[Any, Any]:
    """scores (N, Z, C) logits -> (inferred z per image, predicted class per image)."""
    import torch

    n, z, c = scores.shape
    joint = torch.softmax(scores.reshape(n, z * c), dim=1).reshape(n, z, c)
    z_star = joint.sum(dim=2).argmax(dim=1)
    pred = scores[torch.arange(n), z_star].argmax(dim=1)
    return z_star, pred


def evaluate(
    encode: Callable[[list[str]], Any],
    s: EvalSet,
    img: Any,
    p: PerceptionParams,
    zeroshot_acc1: float,
) -> dict[str, Any]:
    """Top-1 with inferred attributes, its change against plain zero-shot, and how often each
    value was inferred; `encode` maps prompts to text embeddings (the model's `Embedder.texts`)."""
    import torch

    from tasks.evaluate.zeroshot import logits, zeroshot_classifier

    combos = attribute_combos(p.attributes)
    templates = s.templates[: p.max_templates]
    weights = [
        zeroshot_classifier(encode, s.classnames, conditioned_templates(templates, z))
        for z in combos
    ]
    scores = torch.stack([logits(img, w) for w in weights], dim=1)  # (N, Z, C)
    z_star, pred = infer_and_classify(scores)
    acc = float((pred == torch.as_tensor(s.labels)).float().mean())
    inferred: dict[str, dict[str, float]] = {}
    chosen = np.asarray([combos[i] for i in z_star.tolist()], dtype=object)
    for a, name in enumerate(p.attributes):
        inferred[name] = {v: float(np.mean(chosen[:, a] == v)) for v in p.attributes[name]}
    return {"acc1": acc, "delta_acc1": acc - zeroshot_acc1, "inferred": inferred}
