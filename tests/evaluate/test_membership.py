"""The membership audit tells a model that memorised its training pairs from one that did not."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tasks.evaluate.membership import audit, pair_losses, tpr_at_fpr
from tasks.evaluate.params import EmbedParams, MembershipParams

from .sets import make_retrieval


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


def _loaded(memorised):
    return SimpleNamespace(
        name="m",
        ref="m",
        model=LookupModel(memorised),
        preprocess=lambda img: img,
        tokenizer=lambda t: t,
    )


@pytest.fixture()
def pairs(tmp_path):
    make_retrieval(tmp_path / "members", n=40, seed=1)
    make_retrieval(tmp_path / "others", n=40, seed=2)
    return tmp_path


def _audit(tmp_path, memorised, monkeypatch):
    from tasks.evaluate import membership

    # the stand-in model embeds raw bytes: bypass pixel decoding
    monkeypatch.setattr(membership, "attack_scores", _scores_on_bytes(membership.attack_scores))
    p = MembershipParams(
        members=str(tmp_path / "members"),
        non_members=str(tmp_path / "others"),
        max_pairs=40,
        loss_batch=8,
    )
    return audit(_loaded(memorised), p, tmp_path / "out", EmbedParams())


def _scores_on_bytes(original):
    def run(loaded, pairs, p, embed):
        import torch.nn.functional as F

        img = F.normalize(loaded.model.encode_image([b for b, _ in pairs]), dim=-1)
        txt = F.normalize(loaded.model.encode_text([t for _, t in pairs]), dim=-1)
        sim = (img * txt).sum(1).numpy()
        return sim, -pair_losses(img, txt, 100.0, p.loss_batch, p.seed)

    return run


def test_memorising_model_leaks_and_unseen_does_not(pairs, monkeypatch):
    from tasks.evaluate.membership import read_pairs

    members = read_pairs(pairs / "members", "members")
    memorising = _audit(pairs, {b: t for b, t in members}, monkeypatch)
    blind = _audit(pairs, {}, monkeypatch)
    assert memorising["similarity_auc"] > 0.95 and memorising["loss_auc"] > 0.95
    assert memorising["similarity_tpr_at_1pct_fpr"] > 0.5
    assert 0.3 < blind["similarity_auc"] < 0.7, "no memorisation, no signal"
    assert (pairs / "out" / "plots" / "m" / "membership_roc.png").exists()


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


def test_missing_members_folder_is_named(tmp_path):
    from tasks.evaluate.datasets import DatasetError
    from tasks.evaluate.membership import read_pairs

    with pytest.raises(DatasetError, match="members folder .*absent.* does not exist"):
        read_pairs(tmp_path / "absent", "members")
