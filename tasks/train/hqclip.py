"""HQ-CLIP losses: long negative descriptions as hard negatives, short tags as multi-label targets.

The HQ-CLIP paper publishes no formulas, weights or prompt; these are ours (also in
docs/CONTRACTS.md, "train"). With L2-normalised image / text embeddings I_i, T_j, the batch's
negative descriptions N_k (k over the samples that have one), logit scale s:

- contrastive with hard negatives (NegCLIP-style: every negative of the batch joins every
  image's text candidates), weighted by w_neg (`hqclip.negative_weight`) in the softmax:
  `L_i2t = mean_i -log( e^{s I_i.T_i} / (sum_j e^{s I_i.T_j} + w_neg * sum_k e^{s I_i.N_k}) )`,
  `L_t2i` = open_clip's text->image cross-entropy (negatives have no image of their own),
  `L_con = 0.5 * (L_i2t + L_t2i)`; w_neg = 0 is plain CLIP, 1 is NegCLIP's form.
- tags: a linear head over the normalised image embedding gives one logit per tag of the
  vocabulary; target y = 1 for the sample's positive tags, 0 otherwise; per-element weight 1 for
  the tags the sample names (positive or negative), `unmentioned_weight` for the rest;
  `L_tag = sum(w * BCE(logit, y)) / sum(w)`.
- total: `L = L_con + w_tag * L_tag` (`hqclip.tag_weight`).
The vocabulary is built from the training shards' JSON side files (positive and negative tags,
lower-cased and stripped; kept when at least `tag_min_count` samples name it; the `max_tags` most
frequent, ties in alphabetical order), so the same shards always give the same vocabulary.
"""

from __future__ import annotations

import json
import math
import tarfile
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any


def hard_negative_clip_loss(
    image: Any, text: Any, negatives: Any, has_negative: Any, scale: Any, negative_weight: float
) -> Any:
    """`L_con` above; `has_negative` (B,) bool marks the rows of `negatives` that are real."""
    import torch
    import torch.nn.functional as F

    logits = scale * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    i2t = logits
    if negative_weight > 0 and bool(has_negative.any()):
        neg = scale * image @ negatives[has_negative].T + math.log(negative_weight)
        i2t = torch.cat([logits, neg], dim=1)
    return 0.5 * (F.cross_entropy(i2t, labels) + F.cross_entropy(logits.T, labels))


def tag_loss(logits: Any, targets: Any, weights: Any) -> Any:
    """`L_tag` above: weighted mean of the per-element binary cross-entropies."""
    import torch.nn.functional as F

    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (weights * bce).sum() / weights.sum().clamp_min(1e-12)


def normalise_tag(tag: Any) -> str:
    return str(tag).strip().lower()


def tag_lists(meta: dict[str, Any], field: str) -> list[str]:
    """A sample's tags of one field (a list, or one comma-separated string), normalised."""
    value = meta.get(field)
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list):
        return []
    return [t for t in (normalise_tag(v) for v in value) if t]


def build_vocab(
    metas: Iterable[dict[str, Any]], fields: Sequence[str], min_count: int, max_tags: int
) -> list[str]:
    """Tags named by at least `min_count` samples (each sample counted once per tag), the
    `max_tags` most frequent, ties alphabetical."""
    counts: Counter[str] = Counter()
    for meta in metas:
        counts.update({t for f in fields for t in tag_lists(meta, f)})
    kept = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
    return kept[:max_tags]


def shard_metas(shards: Sequence[str], exclude: frozenset[str] = frozenset()) -> Iterable[dict]:
    """Every sample's JSON side file in the shards (only the .json members are read)."""
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                if member.name.rsplit("/", 1)[-1][: -len(".json")] in exclude:
                    continue
                f = tar.extractfile(member)
                if f is not None:
                    try:
                        yield json.loads(f.read())
                    except ValueError:
                        continue


def tag_targets(
    metas: Sequence[dict[str, Any]],
    vocab: Sequence[str],
    pos_field: str,
    neg_field: str,
    unmentioned_weight: float,
) -> tuple[Any, Any]:
    """(targets, weights), each (B, V) float32, for the batch's samples."""
    import torch

    index = {t: i for i, t in enumerate(vocab)}
    targets = torch.zeros(len(metas), len(vocab))
    weights = torch.full((len(metas), len(vocab)), float(unmentioned_weight))
    for row, meta in enumerate(metas):
        for t in tag_lists(meta, neg_field):
            if t in index:
                weights[row, index[t]] = 1.0
        for t in tag_lists(meta, pos_field):
            if t in index:
                targets[row, index[t]] = 1.0
                weights[row, index[t]] = 1.0
    return targets, weights
