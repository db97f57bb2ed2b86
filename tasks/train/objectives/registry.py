"""Which objective a run trains with, chosen by its params.

`OBJECTIVES` maps a name to (is it switched on by these params?, factory). At most one may be on;
none on means the plain contrastive objective (with FLIP when patch_dropout.ratio > 0). To add a
method, add an entry (the factory imports its module lazily, so this table imports nothing heavy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.train.objectives.base import Objective
from tasks.train.params import TrainParams

Factory = Callable[[TrainParams, Any, int, int], Objective]


def _contrastive(p: TrainParams, model: Any, rank: int, world: int) -> Objective:
    from tasks.train.objectives.contrastive import ContrastiveObjective

    return ContrastiveObjective(p, model, rank, world)


def _aclip(p: TrainParams, model: Any, rank: int, world: int) -> Objective:
    from tasks.train.objectives.aclip import AClipObjective

    return AClipObjective(p, model, rank, world)


def _distill(p: TrainParams, model: Any, rank: int, world: int) -> Objective:
    from tasks.train.objectives.distill import DistillObjective

    return DistillObjective(p, model, rank, world)


def _hqclip(p: TrainParams, model: Any, rank: int, world: int) -> Objective:
    from tasks.train.objectives.hqclip import HQClipObjective

    return HQClipObjective(p, model, rank, world)


OBJECTIVES: dict[str, tuple[Callable[[TrainParams], bool], Factory]] = {
    "aclip": (lambda p: p.aclip.enabled, _aclip),
    "distill": (lambda p: p.distill.mode != "off", _distill),
    "hqclip": (lambda p: p.hqclip.enabled, _hqclip),
}


def selected(p: TrainParams) -> str:
    """The objective these params switch on ("contrastive" when none)."""
    on = [name for name, (enabled, _) in OBJECTIVES.items() if enabled(p)]
    if len(on) > 1:
        raise ValueError(
            f"objectives {on} are switched on together; this train stage runs one at a time"
        )
    return on[0] if on else "contrastive"


def build_objective(p: TrainParams, model: Any, rank: int, world: int) -> Objective:
    """The run's objective, built around the (unwrapped) model before training starts."""
    name = selected(p)
    factory = OBJECTIVES[name][1] if name in OBJECTIVES else _contrastive
    objective = factory(p, model, rank, world)
    if p.accum_steps > 1 and not objective.accumulates:
        raise ValueError(
            f"accum_steps {p.accum_steps}: the {name} objective cannot accumulate micro-batches; "
            "set accum_steps: 1"
        )
    return objective
