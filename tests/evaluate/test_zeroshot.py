"""Zero-shot classification against hand-worked cases: template averaging, top-k, balanced recall."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.evaluate import zeroshot


def test_template_average_normalises_each_embedding_then_the_mean():
    # class "a": templates give raw embeddings [3, 4] and [0, 2]; class "b": [1, 0] and [2, 0].
    table = {"x a": [3.0, 4.0], "y a": [0.0, 2.0], "x b": [1.0, 0.0], "y b": [2.0, 0.0]}

    def encode(texts):
        return torch.tensor([table[t] for t in texts])

    w = zeroshot.zeroshot_classifier(encode, ["a", "b"], ["x {c}", "y {c}"])
    # by hand: normalise -> [0.6, 0.8] and [0, 1]; mean [0.3, 0.9]; / sqrt(0.9) -> [0.3162, 0.9487]
    assert w.shape == (2, 2)
    assert torch.allclose(
        w[:, 0], torch.tensor([0.3 / math.sqrt(0.9), 0.9 / math.sqrt(0.9)]), atol=1e-6
    )
    assert torch.allclose(w[:, 1], torch.tensor([1.0, 0.0]))
    # averaging the RAW embeddings first would give [1.5, 3] / |.| = [0.447, 0.894]: a different classifier
    assert not torch.allclose(w[:, 0], torch.tensor([0.4472, 0.8944]), atol=1e-3)


def test_logits_are_scaled_by_100():
    img = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.equal(zeroshot.logits(img, w), torch.tensor([[100.0, 0.0]]))


def test_metrics_hand_worked_three_classes():
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    target = torch.tensor([0, 1, 1, 2])
    m = zeroshot.classification_metrics(scores, target, 3)
    assert m["acc1"] == pytest.approx(3 / 4)
    assert math.isnan(m["acc5"]), "top-5 is undefined with fewer than 5 classes"
    # per-class recall: class 0 -> 1/1, class 1 -> 1/2, class 2 -> 1/1; mean 2.5/3
    assert m["mean_per_class_recall"] == pytest.approx(2.5 / 3)


def test_top5_with_six_classes():
    scores = torch.tensor([[6.0, 5, 4, 3, 2, 1], [6.0, 5, 4, 3, 2, 1]])
    target = torch.tensor([4, 5])  # rank 5 (inside top 5) and rank 6 (outside)
    m = zeroshot.classification_metrics(scores, target, 6)
    assert m["acc1"] == 0.0
    assert m["acc5"] == pytest.approx(0.5)


def test_confusion_and_per_class_recall():
    matrix = zeroshot.confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    recall = zeroshot.per_class_recall(matrix)
    assert recall[:3].tolist() == [0.5, 1.0, 0.0]
    assert math.isnan(recall[3])


def test_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="no templates"):
        zeroshot.zeroshot_classifier(lambda t: torch.zeros(len(t), 2), ["a"], [])
    with pytest.raises(ValueError, match="empty split"):
        zeroshot.classification_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3)
