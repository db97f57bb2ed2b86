"""Held-out scoring with frozen features computed once per distinct frozen weights
(tasks/merge/heldout.py): the same logits and top-1 as running both whole towers for every
candidate, on a small LiT model (timm MobileNetV2 trunk + MiniLM, random weights, 32 px: a
code-path test, no trained weights needed). Candidates change only the heads (the frozen
features are reused) or one frozen weight (its key differs, so they must be recomputed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tasks.merge.heldout import HeldoutScorer
from tests.merge.test_stage import _eval_set

HEADS = ("visual.head.", "text.proj.")  # what a locked-tower fine-tune trains
TRUNK_KEY = "visual.trunk.conv_stem.weight"  # a frozen image weight
TEXT_KEY = "text.transformer.embeddings.word_embeddings.weight"  # a frozen text weight


@pytest.fixture(scope="module")
def lit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model folder of the teacher's architecture, eval root with two held-out sets)."""
    from tasks.clip import build_model
    from tasks.train.checkpoints import export_model_folder

    root = tmp_path_factory.mktemp("heldout")
    torch.manual_seed(0)
    built = build_model("clipmill-lit-mnv2-minilm", image_size=32)
    folder = export_model_folder(root / "base", built, "model: clipmill-lit-mnv2-minilm\n", 1)
    _eval_set(root / "eval", "alpha", ["cat", "dog"], 7, 0)
    _eval_set(root / "eval", "beta", ["red", "green", "blue"], 6, 1)
    return folder, root / "eval"


def _scorer(lit: tuple[Path, Path], **kw: Any) -> HeldoutScorer:
    folder, eval_root = lit
    return HeldoutScorer(folder, eval_root, ["alpha", "beta"], "val", 100, 4, **kw)


def _labels(scorer: HeldoutScorer, name: str) -> torch.Tensor:
    return next(s.labels for s in scorer.sets if s.name == name)


def _moved(state: dict[str, torch.Tensor], keys: list[str], seed: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k in keys:
        v = state[k]
        out[k] = v + 0.5 * (v.abs().mean() + 1e-2) * torch.randn(v.shape, generator=gen)
    return out


def _candidates(base: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    heads = [k for k in base if k.startswith(HEADS) and base[k].is_floating_point()]
    assert heads and TRUNK_KEY in base and TEXT_KEY in base, sorted(base)[:5]
    head_a = _moved(base, heads, 1)
    return {
        "base": base,
        "heads_a": head_a,
        "heads_b": _moved(base, heads, 2),
        "trunk": _moved(head_a, [TRUNK_KEY], 3),  # heads_a's heads, one trunk weight moved
        "text": _moved(head_a, [TEXT_KEY], 4),  # heads_a's heads, one text weight moved
        "base_again": base,
    }


def test_cached_frozen_features_give_the_whole_tower_scores(lit, tmp_path: Path) -> None:
    whole = _scorer(lit, reuse_frozen=False)
    cached = _scorer(lit, store_root=tmp_path / "store")
    base = {k: v.clone() for k, v in whole.model.state_dict().items()}
    candidates = _candidates(base)
    got: dict[str, dict[str, torch.Tensor]] = {}
    for name, state in candidates.items():
        expect = whole.logits(state)
        got[name] = cached.logits(state)
        for s in expect:
            torch.testing.assert_close(got[name][s], expect[s], rtol=0, atol=1e-5)
        top1 = {
            s: int((v.argmax(1) == _labels(whole, s)).sum()) / len(v) for s, v in expect.items()
        }
        assert cached.per_set(state) == top1, name
    # the frozen-weight candidates really change the logits: had the key check been skipped
    # (heads_a's cached features reused) they would differ from the whole towers above
    for name in ("trunk", "text"):
        assert any(
            float((got[name][s] - got["heads_a"][s]).abs().max()) > 1e-3 for s in got[name]
        ), name
    n_images, n_prompts = 7 + 6, 2 * 2 + 3 * 2
    stats = cached.stats()
    # frozen parts ran once per distinct frozen weights: base (+ heads-only) and the moved one
    assert stats["image_frozen_keys"] == 2 and stats["text_frozen_keys"] == 2, stats
    assert stats["image_frozen_computed"] == 2 * n_images, stats
    assert stats["text_frozen_computed"] == 2 * n_prompts, stats
    assert stats["image_frozen_from_store"] == stats["text_frozen_from_store"] == 0


def test_second_scorer_reads_the_store_and_scores_the_same(lit, tmp_path: Path) -> None:
    """The store is a pure cache: a new scorer (another run) computes nothing, same logits;
    no store root writes nothing."""
    first = _scorer(lit, store_root=tmp_path / "store")
    state = _candidates({k: v.clone() for k, v in first.model.state_dict().items()})["heads_b"]
    expect = first.logits(state)
    second = _scorer(lit, store_root=tmp_path / "store")
    got = second.logits(state)
    for s in expect:
        torch.testing.assert_close(got[s], expect[s], rtol=0, atol=1e-6)
    stats = second.stats()
    assert stats["image_frozen_computed"] == stats["text_frozen_computed"] == 0, stats
    assert stats["image_frozen_from_store"] == 13 and stats["text_frozen_from_store"] == 10
    quiet = _scorer(lit, store_root=None)
    assert quiet.per_set(state) == first.per_set(state)
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["store"]
