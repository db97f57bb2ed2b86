"""Zero-shot retrieval recall@k with the any-positive rule, in both directions (CLIP_benchmark keys).

Each image has several captions. A text query is a hit when its image is in the top k images; an
image query is a hit when ANY of its captions is in the top k texts. Scores are cosine
similarities of normalised embeddings. `image_retrieval_recall@k` = text -> image,
`text_retrieval_recall@k` = image -> text, as CLIP_benchmark names them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def flatten_captions(captions: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """All captions in order, and for each the index of its image."""
    texts, owner = [], []
    for i, caps in enumerate(captions):
        for c in caps:
            texts.append(c)
            owner.append(i)
    return texts, owner


def _hits(scores: Any, positives: Any, k: int) -> Any:
    """Per query row: 1 if any positive column is among the top-k scores."""
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1, largest=True, sorted=True)[1]
    return positives.gather(1, top).any(dim=1).float()


def recall_at_k(
    image_emb: Any, text_emb: Any, text_owner: Sequence[int], ks: Sequence[int]
) -> dict[str, float]:
    """image_emb (N, D), text_emb (T, D) normalised; text_owner[t] = image of text t."""
    import torch

    if len(image_emb) == 0 or len(text_emb) == 0:
        raise ValueError("retrieval: empty split (no images or no captions)")
    scores = text_emb.float() @ image_emb.float().T  # (T, N)
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(text_owner)), torch.as_tensor(list(text_owner))] = True
    has_caption = positives.any(dim=0)
    out: dict[str, float] = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float(_hits(scores, positives, k).mean())
        # CLIP_benchmark averages image queries over every image; one without captions counts as a miss.
        image_hits = _hits(scores.T, positives.T, k) * has_caption.float()
        out[f"text_retrieval_recall@{k}"] = float(image_hits.mean())
    return out


def mean_recall(metrics: dict[str, float], k: int = 1) -> float:
    """DataComp's main retrieval number: mean of both directions' recall@k."""
    return (metrics[f"image_retrieval_recall@{k}"] + metrics[f"text_retrieval_recall@{k}"]) / 2
