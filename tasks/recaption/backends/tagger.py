"""Backend `tagger`: the teacher ranks WordNet noun entries for each image.

Short positive tags = the `top_k` entries with the highest CLIP score for the image. Short
negative tags = entries close to a positive in the teacher's text space (its `neighbours`
nearest entries) that rank below `negative_min_rank` for the image: plausible words for this
kind of picture that the image does not show (HQ-CLIP's negative tags; our definition, its
authors published none). Negatives are taken by text similarity, best first, skipping positives.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tasks.recaption.backends.base import Annotation, CaptionRequest


class Tagger:
    """Entry embeddings are computed once per actor (read from the feature store when stored)."""

    name = "tagger"

    def __init__(self, teacher: Any, entries: list[str], params: Any) -> None:
        self.teacher = teacher
        self.entries = entries
        self.params = params  # TaggerParams
        self.model_version = f"{teacher.version}+wordnet{len(entries)}"
        self.entry_emb = teacher.encode_texts(entries)  # (E, d) normalised

    def annotate(self, requests: list[CaptionRequest]) -> list[Annotation]:
        if not requests:
            return []
        img = self.teacher.encode_images([r.data for r in requests], [r.image for r in requests])
        scores = img @ self.entry_emb.T  # (n, E)
        positives = _top(scores, self.params.top_k)  # (n, k), best first
        negatives = self._negatives(scores, positives)
        source = f"{self.name}:{self.model_version}"
        out = []
        for pos, neg in zip(positives, negatives, strict=True):
            ann = Annotation(
                short_positive=[self.entries[i] for i in pos],
                short_negative=[self.entries[i] for i in neg],
            )
            ann.sources = {
                f: source for f in ("short_positive", "short_negative") if getattr(ann, f)
            }
            out.append(ann)
        return out

    def _negatives(self, scores: np.ndarray, positives: np.ndarray) -> list[list[int]]:
        """Per row: text neighbours of its positives (most similar first) that rank at or below
        `negative_min_rank` for the image; vectorised over the batch."""
        p = self.params
        n, k = positives.shape
        if not p.negatives:
            return [[] for _ in range(n)]
        entries = scores.shape[1]
        cut = min(p.negative_min_rank, entries - 1)
        # the score of the image's `cut`-th best entry: anything scoring below it ranks lower
        bar = -np.partition(-scores, cut, axis=1)[:, cut]
        near = self.entry_emb[positives.reshape(-1)] @ self.entry_emb.T  # (n*k, E)
        m = min(p.neighbours + k, entries)
        cand = _top(near, m).reshape(n, k * m)  # neighbours of each positive, best first
        sim = np.take_along_axis(near.reshape(n, k, entries), cand.reshape(n, k, m), axis=2)
        sim = sim.reshape(n, k * m)
        out = []
        for row in range(n):
            order = cand[row][np.argsort(-sim[row], kind="stable")]
            chosen: list[int] = []
            skip = set(positives[row].tolist())
            for i in order.tolist():
                if i not in skip and scores[row, i] < bar[row]:
                    chosen.append(i)
                    skip.add(i)
                    if len(chosen) == p.negatives:
                        break
            out.append(chosen)
        return out


def _top(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values of each row, largest first (ties by index)."""
    k = min(k, x.shape[1])
    part = np.argpartition(-x, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(x, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1)


def build(params: Any) -> Tagger:
    """From RecaptionParams: the teacher (paths.teacher) and the WordNet vocabulary."""
    from tasks.io.paths import resolve_path
    from tasks.recaption.teacher import load_teacher, teacher_ref
    from tasks.recaption.wordnet import load_nouns, pool_vocabulary, vocabulary

    nouns = load_nouns(str(resolve_path(params.paths.wordnet)))
    entries = vocabulary(nouns, params.tagger.vocabulary)
    if params.tagger.pool_only:
        entries = pool_vocabulary(entries, _pool_texts())
    if not entries:
        raise ValueError("tagger: the vocabulary is empty (no WordNet noun is named in the pool)")
    return Tagger(load_teacher(teacher_ref(params)), entries, params.tagger)


def _pool_texts() -> list[str]:
    """Every downloaded pool row's alt text (the pool the settings name)."""
    from tasks.pool import open_pool

    table = open_pool().search().select(["text", "status"]).limit(None).to_arrow()
    return [
        t
        for t, s in zip(table["text"].to_pylist(), table["status"].to_pylist(), strict=True)
        if t and s == "success"
    ]
