"""Chance levels and trivial baselines next to every score, from hand-made sets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.evaluate import scoreboard
from tasks.evaluate.datasets import CLASSIFICATION, RETRIEVAL, EvalSet
from tasks.evaluate.retrieval import flatten_captions, recall_at_k
from tasks.evaluate.zeroshot import classification_metrics


def _classification(counts: list[int], name: str = "cls") -> EvalSet:
    labels = [c for c, n in enumerate(counts) for _ in range(n)]
    return EvalSet(
        name, CLASSIFICATION, Path("."), "test", [], [b""] * len(labels), labels,
        classnames=[f"c{i}" for i in range(len(counts))],
    )  # fmt: skip


def _retrieval(captions_per_image: list[int], name: str = "ret") -> EvalSet:
    captions = [[f"caption {i}.{j}" for j in range(n)] for i, n in enumerate(captions_per_image)]
    return EvalSet(name, RETRIEVAL, Path("."), "test", [], [b""] * len(captions), captions=captions)


def test_three_classes_50_30_20():
    s = _classification([50, 30, 20])
    assert scoreboard.reference_levels(s, "acc1") == pytest.approx((1 / 3, 0.5))
    assert scoreboard.reference_levels(s, "lp_acc1") == pytest.approx((1 / 3, 0.5))
    assert scoreboard.reference_levels(s, "mean_per_class_recall") == pytest.approx((1 / 3, 1 / 3))
    assert all(math.isnan(v) for v in scoreboard.reference_levels(s, "acc5"))


def test_top5_baseline_is_the_five_largest_classes():
    s = _classification([40, 20, 10, 10, 10, 10])
    assert scoreboard.reference_levels(s, "acc5") == pytest.approx((5 / 6, 0.9))


def test_majority_baseline_is_what_always_answering_it_scores():
    """The baseline equals the real metrics of a constant answer (majority class everywhere)."""
    s = _classification([5, 30, 20, 10])
    scores = torch.zeros(len(s.labels), 4)
    scores[:, 1] = 1.0
    m = classification_metrics(scores, torch.tensor(s.labels), 4)
    assert m["acc1"] == pytest.approx(scoreboard.reference_levels(s, "acc1")[1])
    assert m["mean_per_class_recall"] == pytest.approx(
        scoreboard.reference_levels(s, "mean_per_class_recall")[1]
    )


def test_retrieval_over_ten_candidates():
    s = _retrieval([1] * 10)
    assert scoreboard.reference_levels(s, "image_retrieval_recall@1") == pytest.approx((0.1, 0.1))
    assert scoreboard.reference_levels(s, "text_retrieval_recall@1") == pytest.approx((0.1, 0.1))
    assert scoreboard.reference_levels(s, "mean_recall@5") == pytest.approx((0.5, 0.5))
    assert scoreboard.reference_levels(s, "mean_recall@20") == pytest.approx((1.0, 1.0))


def test_several_captions_raise_the_random_ranking_baseline_only():
    s = _retrieval([2] * 10)  # image -> text: 2 positives among 20 captions
    chance, base = scoreboard.reference_levels(s, "text_retrieval_recall@1")
    assert (chance, base) == pytest.approx((1 / 20, 2 / 20))
    chance, base = scoreboard.reference_levels(s, "text_retrieval_recall@2")
    assert (chance, base) == pytest.approx((2 / 20, 1 - (18 / 20) * (17 / 19)))
    # an image without captions always misses, as in the recall metric itself
    assert scoreboard.reference_levels(_retrieval([1, 0]), "text_retrieval_recall@1")[1] == 0.5


def test_random_ranking_baseline_matches_random_embeddings():
    """Monte Carlo over the real recall@k: random embeddings average the expected recall."""
    s = _retrieval([1, 3, 2, 0, 1, 2, 1])
    texts, owner = flatten_captions(s.captions)
    gen = torch.Generator().manual_seed(0)
    runs = []
    for _ in range(3000):
        img = torch.nn.functional.normalize(torch.randn(len(s.captions), 8, generator=gen), dim=-1)
        txt = torch.nn.functional.normalize(torch.randn(len(texts), 8, generator=gen), dim=-1)
        runs.append(recall_at_k(img, txt, owner, [2]))
    for metric in ("image_retrieval_recall@2", "text_retrieval_recall@2"):
        simulated = np.mean([r[metric] for r in runs])
        assert simulated == pytest.approx(scoreboard.reference_levels(s, metric)[1], abs=0.015)


def test_unknown_metric_is_named():
    with pytest.raises(ValueError, match="'top3'"):
        scoreboard.reference_levels(_classification([2, 2]), "top3")
    with pytest.raises(ValueError, match="'median_rank'"):
        scoreboard.reference_levels(_retrieval([1, 1]), "median_rank")


def test_rows_table_and_metrics_show_score_chance_baseline_and_verdict():
    cls, ret = _classification([50, 30, 20]), _retrieval([1] * 10)
    rows = [
        scoreboard.make_row("m", cls, CLASSIFICATION, "acc1", 0.45),
        scoreboard.make_row("m", ret, RETRIEVAL, "mean_recall@1", 0.3),
        scoreboard.make_row("m", cls, "linear_probe", "lp_acc1", 0.9, in_mean=False),
    ]
    assert [r.beats_baseline for r in rows] == [False, True, True]  # 0.45 < majority 0.5
    table = scoreboard.as_table(rows)
    assert list(table) == list(scoreboard.COLUMNS)
    assert table["dataset"] == ["cls", "ret", "cls", "average"]
    assert table["value"][-1] == pytest.approx((0.45 + 0.3) / 2)  # probe rows stay out
    assert table["chance"][-1] == pytest.approx((1 / 3 + 0.1) / 2)
    assert table["trivial_baseline"][-1] == pytest.approx((0.5 + 0.1) / 2)
    assert table["beats_trivial_baseline"] == [False, True, True, True]
    assert scoreboard.means(rows) == {"m": pytest.approx(0.375)}
    metrics: dict = {"m": {"cls": {"acc1": 0.45}, "ret": {}}}
    scoreboard.attach(metrics, rows)
    ref = metrics["m"]["cls"]["reference"]
    assert ref["acc1"] == {
        "value": 0.45,
        "chance": pytest.approx(1 / 3),
        "trivial_baseline": 0.5,
        "beats_trivial_baseline": False,
    }
    assert ref["lp_acc1"]["beats_trivial_baseline"] is True
    assert metrics["m"]["scoreboard_mean_trivial_baseline"] == pytest.approx(0.3)
    assert metrics["m"]["scoreboard_beats_trivial_baseline"] is True
