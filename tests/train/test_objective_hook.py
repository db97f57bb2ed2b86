"""The objective hook: selection by params, Batch plumbing, objective state in checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch


def test_build_objective_picks_by_params() -> None:
    from tasks.clip import build_model
    from tasks.train.objectives.aclip import AClipObjective
    from tasks.train.objectives.contrastive import ContrastiveObjective
    from tasks.train.objectives.registry import build_objective, selected
    from tasks.train.params import TrainParams

    torch.manual_seed(0)
    model = build_model("clipmill-tiny-vit").model
    plain = build_objective(TrainParams(), model, 0, 1)
    assert isinstance(plain, ContrastiveObjective) and plain.flip.keeper is None
    assert plain.accumulates and plain.state_dict() == {}
    flip = build_objective(TrainParams(patch_dropout={"ratio": 0.5}), model, 0, 1)
    assert isinstance(flip, ContrastiveObjective) and flip.flip.keeper is model.visual.patch_dropout
    aclip = build_objective(TrainParams(aclip={"enabled": True}), model, 0, 1)
    assert isinstance(aclip, AClipObjective) and not aclip.accumulates
    assert selected(TrainParams()) == "contrastive"


def test_two_objectives_switched_on_together_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from tasks.train.objectives import registry
    from tasks.train.params import TrainParams

    monkeypatch.setitem(registry.OBJECTIVES, "other", (lambda p: True, registry._contrastive))
    with pytest.raises(ValueError, match=r"objectives \['aclip', 'other'\] are switched on"):
        registry.selected(TrainParams(aclip={"enabled": True}))


def test_batch_moves_extras_and_wraps_plain_pairs() -> None:
    from tasks.train.objectives.base import Batch, as_batch

    pair = (torch.zeros(2, 3, 4, 4), torch.ones(2, 5, dtype=torch.long))
    b = as_batch(pair)
    assert isinstance(b, Batch) and b.extras == {} and len(b) == 2
    full = Batch(pair[0], pair[1], {"teacher": torch.ones(2, 3), "uid": ["a", "b"]})  # type: ignore[dict-item]
    moved = full.to(torch.device("cpu"))
    assert torch.equal(moved.extras["teacher"], full.extras["teacher"])
    assert moved.extras["uid"] == ["a", "b"]
    assert as_batch(full) is full


def test_objective_state_round_trips_through_the_checkpoint(tmp_path: Path) -> None:
    """A-CLIP's EMA model is written to objective.safetensors and read back exactly; a checkpoint
    without it cannot resume A-CLIP (the error names the checkpoint)."""
    from tasks.clip import build_model
    from tasks.train.checkpoints import (
        OBJECTIVE_FILE,
        CheckpointError,
        load_train_state,
        write_train_state,
    )
    from tasks.train.loop import make_optimizer
    from tasks.train.objectives.registry import build_objective
    from tasks.train.params import TrainParams

    torch.manual_seed(0)
    p = TrainParams(aclip={"enabled": True})
    model = build_model("clipmill-tiny-vit").model
    objective: Any = build_objective(p, model, 0, 1)
    with torch.no_grad():
        for q in model.parameters():
            q.add_(1.0)
    objective.after_step(model, 0)  # the EMA moves 0.4% of the way
    write_train_state(
        tmp_path / "a", model, make_optimizer(model, p), {"step": 1}, objective.state_dict()
    )
    assert (tmp_path / "a" / OBJECTIVE_FILE).is_file()
    fresh: Any = build_objective(p, model, 0, 1)  # a new EMA copy of the current weights
    assert not torch.equal(
        fresh.state_dict()["ema.logit_scale"], objective.state_dict()["ema.logit_scale"]
    )
    load_train_state(tmp_path / "a", model, None, fresh)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in objective.state_dict().items())

    write_train_state(tmp_path / "b", model, make_optimizer(model, p), {"step": 1})
    with pytest.raises(CheckpointError, match=r"checkpoint .*b: cannot be loaded.*no EMA model"):
        load_train_state(tmp_path / "b", model, None, fresh)
    plain = build_objective(TrainParams(), model, 0, 1)
    with pytest.raises(CheckpointError, match="objective state"):
        load_train_state(tmp_path / "a", model, None, plain)
