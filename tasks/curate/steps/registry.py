"""Step name -> step class: a lookup table, so `steps` in params picks code without if/elif.

What a run prepares is the union of the built steps' `inputs()` (tasks/curate/inputs.py); the
stage never asks which steps are present.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tasks.curate.params import CurateParams
from tasks.curate.steps.balance import Balance
from tasks.curate.steps.base import Input, ReportStep, Step
from tasks.curate.steps.basic import Basic
from tasks.curate.steps.clip_score import ClipScore
from tasks.curate.steps.decontam import Decontaminate
from tasks.curate.steps.dedup import ExactDedup, PerceptualDedup
from tasks.curate.steps.image_based import ImageBased
from tasks.curate.steps.planted import PlantedQA
from tasks.curate.steps.semdedup import SemanticDedup
from tasks.curate.steps.text_based import TextBased
from tasks.curate.steps.uid_subset import UidSubset

STEPS: dict[str, type[Step[Any]]] = {
    cls.name: cls
    for cls in (
        Basic,
        ExactDedup,
        PerceptualDedup,
        Decontaminate,
        ClipScore,
        TextBased,
        ImageBased,
        SemanticDedup,
        Balance,
        UidSubset,
    )
}

REPORTS: dict[str, type[ReportStep]] = {cls.name: cls for cls in (PlantedQA,)}


def build_step(name: str, params: CurateParams) -> Step[Any]:
    """The step `name` holding its own params section (`params.<name>`, None without one)."""
    cls = STEPS[name]
    return cls(getattr(params, name) if cls.params_model is not None else None)


def build_steps(params: CurateParams) -> list[Step[Any]]:
    """The decision steps of `params.steps`, in order."""
    return [build_step(name, params) for name in params.steps]


def build_reports(params: CurateParams) -> list[ReportStep]:
    """The report steps that follow a step of this run."""
    return [cls(params) for cls in REPORTS.values() if cls.follows in params.steps]


def needed_inputs(parts: Iterable[Step[Any] | ReportStep]) -> frozenset[Input]:
    """The union of what the given steps and reports declare."""
    out: frozenset[Input] = frozenset()
    for part in parts:
        out |= part.inputs()
    return out
