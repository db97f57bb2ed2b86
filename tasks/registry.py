"""Stage name -> (params model, run function, params file), in pipeline order.

Entries name their code by import path so that listing stages or validating params never
imports torch, Ray or a stage's heavy dependencies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.base import StageParams


@dataclass(frozen=True)
class StageSpec:
    """What the runner, the CLI, dvc.yaml and the flow need to know about one stage."""

    name: str
    params_model: str  # "module:Class", a StageParams subclass
    run_function: str  # "module:function", run(params) -> metrics dict
    code: tuple[str, ...]  # source paths (relative to the root) this stage depends on
    uses_ray: bool = True  # the runner has Ray up (started or joined) before the stage runs
    upstream: tuple[str, ...] = field(default=())  # stages whose outputs this one reads
    in_default_run: bool = True  # in a run naming no stages (make demo); False = when named
    # params keys (dotted) of outputs written through fsspec: with CLIPMILL_DATA_ROOT a bucket,
    # the runner points them at it (tasks/io/dataroot.py) instead of a local copy
    native_outs: tuple[str, ...] = field(default=())
    # "module:function": params -> a context manager the runner enters before the MLflow run
    # opens (after the data root's pull), for work that needs no engine: train in local mode
    # starts its training process there (tasks/train/local.py); "" = none
    prestart: str = ""

    @property
    def params_file(self) -> Path:
        from tasks.settings import get_settings

        return get_settings().root / "params" / f"{self.name}.yaml"

    def model(self) -> type[StageParams]:
        return _import(self.params_model)

    def run_callable(self) -> Callable[[Any], dict[str, Any]]:
        return _import(self.run_function)

    def prestarted(self, params: StageParams) -> AbstractContextManager[Any]:
        return _import(self.prestart)(params) if self.prestart else nullcontext()


def _import(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


# Source paths each stage's DVC fingerprint hashes: equal to its `tasks/` deps in dvc.yaml, which
# tests/test_dvc_deps.py checks against the stage's import closure (so neither list can drift).
_COMMON = (
    "tasks/__init__.py",
    "tasks/base.py",
    "tasks/settings.py",
    "tasks/runner.py",
    "tasks/tracking.py",
    "tasks/io",
)

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in [
        StageSpec(
            name="sample",
            params_model="tasks.sample.params:SampleParams",
            run_function="tasks.sample.stage:run",
            code=("tasks/sample", "tasks/progress.py", *_COMMON),
        ),
        StageSpec(
            name="crawl",
            params_model="tasks.crawl.params:CrawlParams",
            run_function="tasks.crawl.stage:run",
            code=(
                "tasks/crawl",
                "tasks/imaging",
                "tasks/pool.py",
                "tasks/progress.py",
                *_COMMON,
            ),
            upstream=("sample",),
            native_outs=("output.output_dir",),  # shards written by Ray workers, any node
        ),
        StageSpec(
            name="decontaminate",
            params_model="tasks.decontaminate.params:DecontaminateParams",
            run_function="tasks.decontaminate.stage:run",
            code=(
                "tasks/decontaminate",
                "tasks/decontam",
                # eval images are hashed as the crawl resized the pool's images
                "tasks/imaging",
                "tasks/paramsfiles.py",
                "tasks/progress.py",
                *_COMMON,
            ),
            upstream=("sample", "crawl"),
        ),
        StageSpec(
            name="teacher",
            params_model="tasks.train.params:TrainParams",
            run_function="tasks.train.stage:run",
            prestart="tasks.train.local:prestart",
            code=("tasks/train", "tasks/clip", "tasks/progress.py", *_COMMON),
            upstream=("crawl", "decontaminate"),
        ),
        StageSpec(
            name="recaption",
            params_model="tasks.recaption.params:RecaptionParams",
            run_function="tasks.recaption.stage:run",
            code=("tasks/recaption", "tasks/clip", "tasks/imaging", "tasks/pool.py", *_COMMON),
            upstream=("sample", "crawl", "decontaminate", "teacher"),
        ),
        StageSpec(
            name="curate",
            params_model="tasks.curate.params:CurateParams",
            run_function="tasks.curate.stage:run",
            code=(
                "tasks/curate",
                "tasks/clip",
                "tasks/decontam",
                # eval images are hashed as the crawl resized the pool's images
                "tasks/imaging",
                "tasks/pool.py",
                "tasks/paramsfiles.py",
                "tasks/progress.py",
                *_COMMON,
            ),
            upstream=("crawl", "decontaminate", "teacher", "recaption"),
        ),
        StageSpec(
            name="coca",  # the recaption stage's `coca` backend model (params/coca.yaml)
            params_model="tasks.train.params:TrainParams",
            run_function="tasks.train.stage:run",
            prestart="tasks.train.local:prestart",
            code=("tasks/train", "tasks/clip", "tasks/progress.py", *_COMMON),
            upstream=("curate", "decontaminate"),
            in_default_run=False,  # opt-in: not needed by the demo's default chain
        ),
        StageSpec(
            name="reinforce",
            params_model="tasks.reinforce.params:ReinforceParams",
            run_function="tasks.reinforce.stage:run",
            code=("tasks/reinforce", "tasks/clip", "tasks/progress.py", *_COMMON),
            uses_ray=False,
            upstream=("curate", "teacher"),
            in_default_run=False,  # opt-in: not needed by the demo's default chain
        ),
        StageSpec(
            name="train",
            params_model="tasks.train.params:TrainParams",
            run_function="tasks.train.stage:run",
            prestart="tasks.train.local:prestart",
            code=("tasks/train", "tasks/clip", "tasks/progress.py", *_COMMON),
            upstream=("curate", "teacher", "decontaminate"),
        ),
        StageSpec(
            name="evaluate",
            params_model="tasks.evaluate.params:EvaluateParams",
            run_function="tasks.evaluate.stage:run",
            code=("tasks/evaluate", "tasks/clip", "tasks/progress.py", *_COMMON),
            upstream=("sample", "decontaminate", "teacher", "train"),
        ),
        # The merging task suite: one expert per task, fine-tuned from the teacher on the task's
        # train split (data/sample/suite) by the train stage with its own params file.
        *[
            StageSpec(
                name=f"expert_{task}",
                params_model="tasks.train.params:TrainParams",
                run_function="tasks.train.stage:run",
                prestart="tasks.train.local:prestart",
                code=("tasks/train", "tasks/clip", "tasks/progress.py", *_COMMON),
                upstream=("sample", "teacher"),
            )
            for task in ("fashion", "emoji", "tuxpaint", "openclipart")
        ],
        StageSpec(
            name="merge",
            params_model="tasks.merge.params:MergeParams",
            run_function="tasks.merge.stage:run",
            code=("tasks/merge", "tasks/clip", *_COMMON),
            uses_ray=False,  # tensors stream through one process
            upstream=(
                "sample",
                "teacher",
                "expert_fashion",
                "expert_emoji",
                "expert_tuxpaint",
                "expert_openclipart",
            ),
        ),
        StageSpec(  # the evaluate stage on the suite: every model of it on every task
            name="evaluate_merge",
            params_model="tasks.evaluate.params:EvaluateParams",
            run_function="tasks.evaluate.stage:run",
            code=("tasks/evaluate", "tasks/clip", "tasks/progress.py", *_COMMON),
            uses_ray=False,  # embeds in process (embed.ray: never): heads only, on stored features
            upstream=("sample", "teacher", "merge"),
        ),
    ]
}


class UnknownStageError(KeyError):
    def __str__(self) -> str:
        return f"unknown stage {self.args[0]!r}; known stages: {', '.join(STAGES)}"


def get_stage(name: str) -> StageSpec:
    try:
        return STAGES[name]
    except KeyError:
        raise UnknownStageError(name) from None
