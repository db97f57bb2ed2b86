"""Membership-inference audit (LeakyCLIP): can training pairs be told from held-out pairs?

Two attack scores per pair: the image-text cosine similarity, and minus the pair's contrastive
loss inside a random mixed batch (image->text and text->image cross-entropy, averaged, at the
model's logit scale). Reported: ROC AUC (0.5 = nothing leaks) and the true-positive rate at 1%
false-positive rate, with the ROC plot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tasks.evaluate.datasets import (
    RETRIEVAL,
    DatasetError,
    dataset_task,
    read_samples,
    shard_paths,
)
from tasks.evaluate.params import EmbedParams, MembershipParams
from tasks.io.paths import resolve_path
from tasks.io.wds import image_bytes

Pair = tuple[bytes, str]


def read_pairs(folder: str | Path, role: str) -> list[Pair]:
    """(image bytes, first caption) from every .tar under a folder (webdataset or CLIP_benchmark layout)."""
    root = resolve_path(folder)
    if not root.is_dir():
        raise DatasetError(
            f"membership audit: {role} folder {root} does not exist (set membership.enabled=false to skip)"
        )
    if (root / "test").is_dir() and dataset_task(root) == RETRIEVAL:
        paths = shard_paths(root, "test")
    else:
        paths = sorted(root.rglob("*.tar"))
    pairs = []
    for _, fields in read_samples(paths):
        image = image_bytes(fields)
        text = fields.get("txt", b"").decode("utf-8").splitlines()
        if image is not None and text and text[0].strip():
            pairs.append((image, text[0]))
    if not pairs:
        raise DatasetError(f"membership audit: no image-text pairs in {role} folder {root}")
    return pairs


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_max: float = 0.01) -> float:
    """Highest true-positive rate reachable with a false-positive rate <= fpr_max."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= fpr_max
    return float(tpr[ok].max()) if ok.any() else 0.0


def pair_losses(img: Any, txt: Any, scale: float, batch: int, seed: int) -> np.ndarray:
    """Per pair: mean of its two cross-entropies inside a random batch of `batch` mixed pairs."""
    import torch
    import torch.nn.functional as F

    order = torch.randperm(len(img), generator=torch.Generator().manual_seed(seed))
    losses = torch.zeros(len(img))
    for start in range(0, len(img), batch):
        idx = order[start : start + batch]
        sim = scale * img[idx] @ txt[idx].T
        target = torch.arange(len(idx))
        both = F.cross_entropy(sim, target, reduction="none") + F.cross_entropy(
            sim.T, target, reduction="none"
        )
        losses[idx] = both / 2
    return losses.numpy()


def attack_scores(
    loaded: Any, pairs: list[Pair], p: MembershipParams, embed: EmbedParams
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity, minus loss) per pair: higher = more member-like."""
    import torch

    from tasks.evaluate.embed import encode_images, encode_texts

    img = encode_images(loaded, [b for b, _ in pairs], embed)
    txt = encode_texts(loaded.model, loaded.tokenizer, [t for _, t in pairs], amp=embed.amp)
    sim = (img * txt).sum(dim=1).numpy()
    scale = getattr(loaded.model, "logit_scale", None)
    scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
    return sim, -pair_losses(img, txt, scale, p.loss_batch, p.seed)


def audit(loaded: Any, p: MembershipParams, out: Path, embed: EmbedParams) -> dict[str, float]:
    """AUC and TPR@1%FPR for both attack scores, a ROC plot and a JSON record."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from tasks.evaluate import plots
    from tasks.io import atomic_write_json

    rng = np.random.default_rng(p.seed)
    members, others = read_pairs(p.members, "members"), read_pairs(p.non_members, "non-members")
    n = min(p.max_pairs, len(members), len(others))
    pick = [members[i] for i in rng.choice(len(members), n, replace=False)]
    pick += [others[i] for i in rng.choice(len(others), n, replace=False)]
    labels = np.r_[np.ones(n), np.zeros(n)]
    sim, neg_loss = attack_scores(loaded, pick, p, embed)
    result: dict[str, float] = {"pairs_per_side": float(n)}
    curves = {}
    for name, score in (("similarity", sim), ("loss", neg_loss)):
        auc = float(roc_auc_score(labels, score))
        result[f"{name}_auc"] = auc
        result[f"{name}_tpr_at_1pct_fpr"] = tpr_at_fpr(labels, score)
        fpr, tpr, _ = roc_curve(labels, score)
        curves[name] = (fpr, tpr, auc)
    fig = plots.roc_figure(curves, f"membership audit: {loaded.name} (n={n} per side)")
    plots.save(fig, out, f"{loaded.name}/membership_roc.png")
    atomic_write_json(out / loaded.name / "membership.json", result)
    return result
