"""Membership-inference audit (LeakyCLIP): can a model's training pairs be told from held-out pairs
of the SAME distribution?

Per audited model (`membership.targets`): members = pairs it trained on (the student: curate's
training shards), non-members = pairs of the same curated distribution it never trained on
(curate's holdout, `data/curate/holdout`); as many members are drawn as there are held-out pairs
(at most `max_pairs` a side). Two attack scores per pair: the image-text cosine similarity, and
minus the pair's contrastive loss inside a random mixed batch (image->text and text->image
cross-entropy, averaged, at the model's logit scale). Reported per score: ROC AUC (0.5 = nothing
leaks) with a stratified bootstrap percentile interval (members and non-members resampled
separately, `bootstrap` times, at `confidence`), and the TPR at 1% FPR, with the ROC plot.

A model without a held-out part of its training data (the teacher trains on the whole crawled
pool) gets no AUC: its result says so instead of comparing against some other set. Members vs the
retrieval eval set (another distribution: that AUC measures distribution shift as much as
membership) stays only as the extra `membership_shift`, labelled "distribution shift, not
membership".
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
from tasks.evaluate.params import EmbedParams, MembershipParams, MembershipTarget
from tasks.io.paths import resolve_path
from tasks.io.wds import image_bytes

Pair = tuple[bytes, str]
SCORES = ("similarity", "loss")  # attack score names, in result keys
SHIFT_LABEL = "distribution shift, not membership"
HELD_OUT_KIND = "held-out pairs of the same distribution (never trained on)"


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


def _rank_auc(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """AUC of each row: P(member score > non-member score) + half the ties (Mann-Whitney U)."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([pos, neg], axis=-1), axis=-1)
    n_pos, n_neg = pos.shape[-1], neg.shape[-1]
    return (ranks[..., :n_pos].sum(axis=-1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc_ci(
    labels: np.ndarray, scores: np.ndarray, resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile interval of the AUC over `resamples` stratified bootstrap draws: members and
    non-members are resampled separately, so every draw keeps both sides' sizes."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"membership audit: confidence must lie in (0, 1), got {confidence}")
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("membership audit: the bootstrap needs members and non-members")
    rng = np.random.default_rng(seed)
    aucs = _rank_auc(
        pos[rng.integers(0, len(pos), (resamples, len(pos)))],
        neg[rng.integers(0, len(neg), (resamples, len(neg)))],
    )
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(aucs, [tail, 1.0 - tail])
    return float(low), float(high)


def score_summary(
    name: str, labels: np.ndarray, scores: np.ndarray, p: MembershipParams
) -> dict[str, float]:
    """`<name>_auc`, its interval `<name>_auc_ci_low/high`, `<name>_tpr_at_1pct_fpr`."""
    auc = float(_rank_auc(scores[labels == 1], scores[labels == 0]))
    low, high = bootstrap_auc_ci(labels, scores, p.bootstrap, p.confidence, p.seed)
    return {
        f"{name}_auc": auc,
        f"{name}_auc_ci_low": low,
        f"{name}_auc_ci_high": high,
        f"{name}_tpr_at_1pct_fpr": tpr_at_fpr(labels, scores),
    }


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
    emb: Any, pairs: list[Pair], p: MembershipParams, embed: EmbedParams
) -> tuple[np.ndarray, np.ndarray]:
    """(cosine similarity, minus loss) per pair: higher = more member-like. `emb` is the model's
    `Embedder`: pairs met before (the shift comparison draws the same members) are not re-encoded."""
    import torch

    img = emb.images([b for b, _ in pairs], label="evaluate: embedding audit pairs")
    txt = emb.texts([t for _, t in pairs])
    sim = (img * txt).sum(dim=1).numpy()
    scale = getattr(emb.loaded.model, "logit_scale", None)
    scale = float(scale.detach().exp()) if isinstance(scale, torch.Tensor) else 100.0
    return sim, -pair_losses(img, txt, scale, p.loss_batch, p.seed)


def compare(
    loaded: Any,
    members: list[Pair],
    others: list[Pair],
    p: MembershipParams,
    embed: EmbedParams,
    plot: tuple[Path, str, str],
) -> dict[str, Any]:
    """Equal numbers of members and others (as many members as others, at most max_pairs),
    both attack scores summarised; the ROC plot saved at `plot` = (out, file name, title)."""
    from sklearn.metrics import roc_curve

    from tasks.evaluate import plots

    rng = np.random.default_rng(p.seed)
    n = min(p.max_pairs, len(members), len(others))
    pick = [members[i] for i in rng.choice(len(members), n, replace=False)]
    pick += [others[i] for i in rng.choice(len(others), n, replace=False)]
    labels = np.r_[np.ones(n), np.zeros(n)]
    result: dict[str, Any] = {"pairs_per_side": n, "bootstrap": p.bootstrap}
    result["confidence"] = p.confidence
    curves = {}
    for name, score in zip(SCORES, attack_scores(loaded, pick, p, embed), strict=True):
        result.update(score_summary(name, labels, score, p))
        fpr, tpr, _ = roc_curve(labels, score)
        curves[name] = (fpr, tpr, result[f"{name}_auc"])
    out, file, title = plot
    plots.save(plots.roc_figure(curves, f"{title} (n={n} per side)"), out, file)
    return result


def _not_measured(target: MembershipTarget) -> dict[str, Any]:
    """What a model without held-out training data gets: the reason, no number."""
    why = target.note or "no held-out part of its training data was given (held_out is null)"
    return {
        "measured": False,
        "model": target.model,
        "held_out": None,
        "note": f"membership not measured: {why}",
    }


def audit(
    loaded: Any, target: MembershipTarget, p: MembershipParams, out: Path, embed: EmbedParams
) -> dict[str, dict[str, Any]]:
    """{"membership": members vs held-out (or why not), "membership_shift": members vs the shift
    set, labelled as such (when both are given)}; each also written as <model>/<key>.json."""
    from tasks.io import atomic_write_json

    results: dict[str, dict[str, Any]] = {}
    members = read_pairs(target.members, "members") if target.members else None
    if target.held_out is None or members is None:
        results["membership"] = _not_measured(target)
    else:
        held = read_pairs(target.held_out, "held-out")
        main = compare(
            loaded,
            members,
            held,
            p,
            embed,
            (out, f"{loaded.name}/membership_roc.png", f"membership: {loaded.name} vs held-out"),
        )
        results["membership"] = {
            "measured": True,
            "model": target.model,
            "members": target.members,
            "held_out": target.held_out,
            "non_members_kind": HELD_OUT_KIND,
            "note": target.note,
            **main,
        }
    if members is not None and p.shift_non_members:
        shift_pairs = read_pairs(p.shift_non_members, "shift non-members")
        plot = (out, f"{loaded.name}/membership_shift_roc.png", f"{loaded.name}: {SHIFT_LABEL}")
        results["membership_shift"] = {
            "label": SHIFT_LABEL,
            "members": target.members,
            "non_members": p.shift_non_members,
            **compare(loaded, members, shift_pairs, p, embed, plot),
        }
    for key, value in results.items():
        atomic_write_json(out / loaded.name / f"{key}.json", value)
    return results


def run_audits(
    p: MembershipParams,
    embedders: dict[str, Any],
    out: Path,
    embed: EmbedParams,
    store_root: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Every target: model name -> its audit results. `embedders` are the evaluated models'
    (`Embedder` by reference, so their embeddings are reused); another model is loaded only when
    something is measured on it (a target without members or held-out pairs records why not)."""
    from types import SimpleNamespace

    from tasks.evaluate.loading import load_model, model_label

    results: dict[str, dict[str, Any]] = {}
    for target in p.targets:
        model: Any
        if target.members is not None:
            model = embedders.get(target.model)
            if model is None:
                from tasks.evaluate.features import Embedder

                model = Embedder(load_model(target.model), embed, store_root)
        else:  # nothing to embed: only the name is needed
            model = SimpleNamespace(name=model_label(target.model))
        results[model.name] = audit(model, target, p, out, embed)
    return results
