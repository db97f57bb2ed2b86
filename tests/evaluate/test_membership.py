"""The membership audit tells a model that memorised its training pairs from one that did not,
against held-out pairs of the same distribution, with a bootstrap interval that means something."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tasks.evaluate.membership import (
    SHIFT_LABEL,
    bootstrap_auc_ci,
    pair_losses,
    read_pairs,
    run_audits,
    score_summary,
    tpr_at_fpr,
)
from tasks.evaluate.params import EmbedParams, MembershipParams, MembershipTarget
from tasks.io.wds import write_tar

from .sets import COLOURS, RGB, make_retrieval, png


def _vec(key: bytes, dim: int = 16) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(key).digest()[:4], "little")
    return torch.from_numpy(np.random.default_rng(seed).normal(size=dim)).float()


class LookupModel(torch.nn.Module):
    """A stand-in CLIP: each image and each text gets a fixed random vector. A memorising model
    maps every TRAINING image onto its caption's vector (plus a little noise); other pairs stay
    unrelated, as for a model that never saw them."""

    def __init__(self, memorised: dict[bytes, str]):
        super().__init__()
        self.memorised = memorised
        self.logit_scale = torch.nn.Parameter(torch.tensor(np.log(100.0), dtype=torch.float32))

    def encode_image(self, images):
        return torch.stack(
            [
                _vec(k)
                if k not in self.memorised
                else _vec(self.memorised[k].encode()) + 0.3 * _vec(k)
                for k in images
            ]
        )

    def encode_text(self, texts):
        return torch.stack([_vec(t.encode()) for t in texts])


def _loaded(memorised, name: str = "m"):
    return SimpleNamespace(
        name=name,
        ref=name,
        model=LookupModel(memorised),
        preprocess=lambda img: img,
        tokenizer=lambda t: t,
    )


def _scores_on_bytes(loaded, pairs, p, embed):
    """attack_scores for the stand-in model, which embeds raw bytes (no pixel decoding)."""
    import torch.nn.functional as F

    img = F.normalize(loaded.model.encode_image([b for b, _ in pairs]), dim=-1)
    txt = F.normalize(loaded.model.encode_text([t for _, t in pairs]), dim=-1)
    sim = (img * txt).sum(1).numpy()
    return sim, -pair_losses(img, txt, 100.0, p.loss_batch, p.seed)


def write_pairs(folder, n: int, seed: int) -> None:
    """Pairs in curate's shard layout (<uid>.png + <uid>.txt in NNNNN.tar), unique captions."""
    samples = []
    for i in range(n):
        c = i % len(RGB)
        uid = f"s{seed}u{i:04d}"
        caption = f"a {COLOURS[c]} square, sample {seed}-{i}"
        samples.append((uid, {"png": png(RGB[c], seed * 10_000 + i), "txt": caption.encode()}))
    write_tar(folder / "00000.tar", samples)


@pytest.fixture()
def pairs(tmp_path):
    write_pairs(tmp_path / "shards", n=60, seed=1)  # what the audited model trained on
    write_pairs(tmp_path / "holdout", n=30, seed=2)  # same distribution, never trained on
    make_retrieval(tmp_path / "retrieval", n=40, seed=3)  # another set: the shift extra
    return tmp_path


def _params(root, **kw) -> MembershipParams:
    target = MembershipTarget(
        model="m", members=str(root / "shards"), held_out=str(root / "holdout")
    )
    base = dict(
        targets=[target],
        shift_non_members=str(root / "retrieval"),
        max_pairs=40,
        loss_batch=8,
        bootstrap=300,
    )
    return MembershipParams(**{**base, **kw})


def _run(root, memorised, monkeypatch, **kw):
    from tasks.evaluate import membership

    monkeypatch.setattr(membership, "attack_scores", _scores_on_bytes)
    loaded = {"m": _loaded(memorised)}
    return run_audits(_params(root, **kw), loaded, root / "out", EmbedParams())["m"]


def _memorise(*folders) -> dict[bytes, str]:
    return {b: t for f in folders for b, t in read_pairs(f, "members")}


def test_memorising_model_leaks_and_unseen_does_not(pairs, monkeypatch):
    memorising = _run(pairs, _memorise(pairs / "shards"), monkeypatch)["membership"]
    blind = _run(pairs, {}, monkeypatch)["membership"]
    assert memorising["measured"] and memorising["held_out"] == str(pairs / "holdout")
    assert memorising["pairs_per_side"] == 30, "as many members as held-out pairs"
    for score in ("similarity", "loss"):
        assert memorising[f"{score}_auc"] > 0.95
        assert memorising[f"{score}_auc_ci_low"] > 0.5, "the interval excludes chance"
        assert memorising[f"{score}_tpr_at_1pct_fpr"] > 0.5
        low, high = blind[f"{score}_auc_ci_low"], blind[f"{score}_auc_ci_high"]
        assert low < 0.5 < high, "no memorisation: the interval holds chance"
    out = pairs / "out"
    assert (out / "plots" / "m" / "membership_roc.png").exists()
    assert (out / "m" / "membership.json").exists()


def test_main_numbers_come_from_the_held_out_pairs_not_the_retrieval_set(pairs, monkeypatch):
    """The model memorised the held-out pairs too, so members vs held-out shows nothing, while
    members vs the (unseen) retrieval set would look like a leak: the main AUC must be the former."""
    got = _run(pairs, _memorise(pairs / "shards", pairs / "holdout"), monkeypatch)
    main, shift = got["membership"], got["membership_shift"]
    assert main["similarity_auc_ci_low"] < 0.5 < main["similarity_auc_ci_high"]
    assert shift["similarity_auc"] > 0.95 and shift["label"] == SHIFT_LABEL
    assert shift["non_members"] == str(pairs / "retrieval")
    assert (pairs / "out" / "m" / "membership_shift.json").exists()
    no_shift = _run(pairs, {}, monkeypatch, shift_non_members=None)
    assert "membership_shift" not in no_shift


def test_a_model_without_held_out_data_says_so_and_is_not_loaded(tmp_path):
    teacher = MembershipTarget(
        model=str(tmp_path / "no-such-teacher"),  # loading it would fail
        members=None,
        held_out=None,
        note="trains on the whole crawl",
    )
    got = run_audits(MembershipParams(targets=[teacher]), {}, tmp_path / "out", EmbedParams())
    result = got["no-such-teacher"]["membership"]
    assert result["measured"] is False and "trains on the whole crawl" in result["note"]
    assert not any(k.endswith("_auc") for k in result), "no number without held-out pairs"
    assert (tmp_path / "out" / "no-such-teacher" / "membership.json").exists()


def test_default_targets_audit_the_student_against_curates_holdout():
    student, teacher = MembershipParams().targets
    assert (student.model, student.members, student.held_out) == (
        "data/models/train",
        "data/curate/shards",
        "data/curate/holdout",
    )
    assert teacher.model == "data/models/teacher" and teacher.held_out is None and teacher.note


def _synthetic(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(shift, 1.0, n), rng.normal(0.0, 1.0, n)]
    return np.r_[np.ones(n), np.zeros(n)], scores


def test_rank_auc_is_the_roc_auc():
    from sklearn.metrics import roc_auc_score

    labels, scores = _synthetic(50, 0.7, seed=4)
    scores[:5] = scores[-5:]  # ties count half
    got = score_summary("x", labels, scores, MembershipParams(bootstrap=50))
    assert got["x_auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_more_pairs():
    widths = []
    for n in (30, 1000):
        labels, scores = _synthetic(n, 0.5, seed=n)
        got = score_summary("s", labels, scores, MembershipParams(bootstrap=500, seed=1))
        assert got["s_auc_ci_low"] <= got["s_auc"] <= got["s_auc_ci_high"]
        widths.append(got["s_auc_ci_high"] - got["s_auc_ci_low"])
    assert widths[1] < widths[0] / 3, widths  # ~ 1 / sqrt(n): 30 -> 1000 pairs is ~5.8x
    labels, scores = _synthetic(200, 0.5, seed=9)
    wide = bootstrap_auc_ci(labels, scores, 500, 0.99, 0)
    narrow = bootstrap_auc_ci(labels, scores, 500, 0.5, 0)
    assert wide[0] < narrow[0] < narrow[1] < wide[1], "a higher confidence, a wider interval"


def test_synthetic_audit_members_higher_excludes_chance_same_distribution_holds_it():
    p = MembershipParams(bootstrap=400)
    labels, scores = _synthetic(300, 0.4, seed=0)
    leak = score_summary("s", labels, scores, p)
    assert leak["s_auc"] > 0.5 and leak["s_auc_ci_low"] > 0.5
    held = 0
    for seed in range(20):  # same distribution: a 95% interval should hold 0.5 about 19 in 20
        labels, scores = _synthetic(300, 0.0, seed=100 + seed)
        same = score_summary("s", labels, scores, p.model_copy(update={"seed": seed}))
        held += same["s_auc_ci_low"] <= 0.5 <= same["s_auc_ci_high"]
    assert held >= 17, held


def test_bootstrap_rejects_a_missing_side_and_bad_confidence():
    with pytest.raises(ValueError, match="members and non-members"):
        bootstrap_auc_ci(np.ones(4), np.arange(4.0), 10, 0.95, 0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_auc_ci(np.r_[1, 0], np.r_[1.0, 0.0], 10, 1.5, 0)


def test_tpr_at_fpr_hand_worked():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.15, 0.05])
    # thresholds above 0.7 give FPR 0 with TPR 2/3; anything catching the 3rd member lets 3 negatives in
    assert tpr_at_fpr(labels, scores, 0.01) == pytest.approx(2 / 3)
    assert tpr_at_fpr(labels, scores, 0.25) == pytest.approx(2 / 3)


def test_pair_loss_is_low_for_matching_pairs():
    img = torch.eye(4)
    txt = torch.eye(4)
    shuffled = txt[[1, 0, 3, 2]]
    assert pair_losses(img, txt, 10.0, 4, 0).max() < pair_losses(img, shuffled, 10.0, 4, 0).min()


def test_missing_folders_are_named(tmp_path, pairs, monkeypatch):
    from tasks.evaluate.datasets import DatasetError

    with pytest.raises(DatasetError, match="members folder .*absent.* does not exist"):
        read_pairs(tmp_path / "absent", "members")
    target = MembershipTarget(
        model="m", members=str(pairs / "shards"), held_out=str(pairs / "no-holdout")
    )
    with pytest.raises(DatasetError, match="held-out folder .*no-holdout"):
        _run(pairs, {}, monkeypatch, targets=[target])
