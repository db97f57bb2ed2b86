"""Distillation losses: TinyCLIP affinity mimicking and MobileCLIP's `w0 * CLIP + w1 * KD`.

Pure functions on L2-normalised embeddings, so each can be checked by hand on a 2x2 example
(tests/train/test_distill_losses.py). Our exact forms (REFERENCE.md "Train"):

- teacher affinities, per teacher k with its own logit scale t_k:
  `P_k^{i2t} = softmax_rows(t_k * I_k T_k^T)`, `P_k^{t2i} = softmax_rows(t_k * T_k I_k^T)`;
  the ensemble is the mean of the teachers' probabilities (averaged AFTER the softmax):
  `P = (1/K) sum_k P_k`.
- KD (both directions): with the student logits `S = s * I T^T` (s = student logit scale),
  `KD = 0.5 * (H(P^{i2t}, softmax(S)) + H(P^{t2i}, softmax(S^T)))`, H(p, q) = mean over rows of
  `-sum_j p_j log q_j` (soft cross-entropy; KL plus the teacher's entropy, the same gradients).
- CLIP-CE: `0.5 * (CE(S, diag) + CE(S^T, diag))` (open_clip's ClipLoss on one worker).
- MobileCLIP: per caption type c (the picked caption, or each field of `distill.caption_types`)
  `L_c = w0 * CLIP-CE_c + w1 * KD_c`; the loss is the mean over caption types.
- TinyCLIP affinity mimicking: `L = KD` with the student's scale fixed (`distill.student_scale`,
  50 in TinyCLIP's runs) instead of its learnable one; no hard-label term.
- CLIP-KD feature terms (Yang et al., CVPR 2024, "CLIP-KD"; `distill.loss: feature`), which need
  the student's embedding width to equal every teacher's (no projection, so the student's own
  space is the one evaluated). Per caption type c and teacher k, on unit vectors:
  FD (feature distillation) `||I - I_k||^2 + ||T_c - T_{c,k}||^2`, mean over the batch;
  ICL (interactive contrastive learning) `0.5 * (CE(s * I T_{c,k}^T, diag) + CE(s * T_c I_k^T, diag))`
  with the student's learnable scale s: the student's image against the teacher's texts and its
  text against the teacher's images. `L_c = w0 * CLIP-CE_c + w_fd * mean_k FD + w_icl * mean_k ICL
  + w1 * KD_c` (KD as above, ensemble after the softmax); the loss is the mean over caption types.
  Why: a per-sample target says more than the affinities of a small batch, where the teacher's
  softmax is nearly one-hot on the diagonal. Measured on the demo data, FD alone gained 1.17x over
  training alone at 40 steps (README, train_methods.json), ICL lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def soft_cross_entropy(logits: Any, target: Any) -> Any:
    """Mean over rows of `-sum_j target_j * log_softmax(logits)_j` (target rows sum to 1)."""
    return -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()


def teacher_probs(
    images: Sequence[Any], texts: Sequence[Any], scales: Sequence[float]
) -> tuple[Any, Any]:
    """Ensemble targets (image->text, text->image): each teacher's softmax over the batch with its
    own logit scale, averaged over teachers after the softmax."""
    if not (len(images) == len(texts) == len(scales)) or not images:
        raise ValueError(
            f"teacher_probs: {len(images)} image, {len(texts)} text embedding sets and "
            f"{len(scales)} logit scales; need the same number (>= 1) of each"
        )
    i2t = sum((s * i @ t.T).softmax(-1) for i, t, s in zip(images, texts, scales, strict=True))
    t2i = sum((s * t @ i.T).softmax(-1) for i, t, s in zip(images, texts, scales, strict=True))
    return i2t / len(images), t2i / len(images)


def kd_loss(image: Any, text: Any, scale: Any, p_i2t: Any, p_t2i: Any) -> Any:
    """Both directions: the student's batch softmax (logit scale `scale`) against the targets."""
    logits = scale * image @ text.T
    return 0.5 * (soft_cross_entropy(logits, p_i2t) + soft_cross_entropy(logits.T, p_t2i))


def clip_ce(image: Any, text: Any, scale: Any) -> Any:
    """Symmetric InfoNCE with the diagonal as labels (open_clip ClipLoss on one worker)."""
    import torch
    import torch.nn.functional as F

    logits = scale * image @ text.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def mobileclip_loss(
    image: Any,
    texts: Sequence[Any],
    scale: Any,
    teacher_images: Sequence[Any],
    teacher_texts: Sequence[Sequence[Any]],
    teacher_scales: Sequence[float],
    w0: float,
    w1: float,
) -> Any:
    """`mean_c (w0 * CLIP-CE_c + w1 * KD_c)` over caption types c; `teacher_texts[c][k]` is teacher
    k's embedding of caption type c, `teacher_images[k]` teacher k's image embedding."""
    return feature_distill_loss(
        image, texts, scale, teacher_images, teacher_texts, teacher_scales, w0, w1, 0.0, 0.0
    )


def affinity_loss(
    image: Any,
    text: Any,
    student_scale: float,
    teacher_images: Sequence[Any],
    teacher_texts: Sequence[Any],
    teacher_scales: Sequence[float],
) -> Any:
    """TinyCLIP affinity mimicking: KD alone, the student's logit scale fixed."""
    p_i2t, p_t2i = teacher_probs(teacher_images, teacher_texts, teacher_scales)
    return kd_loss(image, text, student_scale, p_i2t, p_t2i)


def feature_distill_loss(
    image: Any,
    texts: Sequence[Any],
    scale: Any,
    teacher_images: Sequence[Any],
    teacher_texts: Sequence[Sequence[Any]],
    teacher_scales: Sequence[float],
    w0: float,
    w1: float,
    w_fd: float,
    w_icl: float,
) -> Any:
    """`mean_c (w0 CLIP-CE_c + w1 KD_c + w_fd FD_c + w_icl ICL_c)`: MobileCLIP's loss with CLIP-KD's
    FD and ICL terms (module docstring); `teacher_texts[c][k]` is teacher k's embedding of caption
    type c. FD and ICL compare embeddings directly, so they need equal widths."""
    if len(texts) != len(teacher_texts) or not texts:
        raise ValueError(
            f"distillation loss: {len(texts)} student caption types, {len(teacher_texts)} teacher ones"
        )
    width = image.shape[-1]
    for k, t in enumerate(teacher_images):
        if (w_fd or w_icl) and t.shape[-1] != width:
            raise ValueError(
                f"distill.loss feature: the student's embeddings have {width} dimensions, "
                f"teacher {k}'s {t.shape[-1]}; feature distillation compares them directly, so "
                "pick a student with the teacher's embed_dim (or loss mobileclip / affinity)"
            )
    import torch
    import torch.nn.functional as F

    total: Any = 0.0
    for text, t_texts in zip(texts, teacher_texts, strict=True):
        term: Any = 0.0
        if w0:
            term = term + w0 * clip_ce(image, text, scale)
        if w1:
            p_i2t, p_t2i = teacher_probs(teacher_images, t_texts, teacher_scales)
            term = term + w1 * kd_loss(image, text, scale, p_i2t, p_t2i)
        if w_fd:
            fd = sum(
                (image - ti).pow(2).sum(-1).mean() + (text - tt).pow(2).sum(-1).mean()
                for ti, tt in zip(teacher_images, t_texts, strict=True)
            )
            term = term + w_fd * fd / len(teacher_images)
        if w_icl:
            labels = torch.arange(image.shape[0], device=image.device)
            icl = sum(
                0.5
                * (
                    F.cross_entropy(scale * image @ tt.T, labels)
                    + F.cross_entropy(scale * text @ ti.T, labels)
                )
                for ti, tt in zip(teacher_images, t_texts, strict=True)
            )
            term = term + w_icl * icl / len(teacher_images)
        total = total + term
    return total / len(texts)
