"""Curate, recaption, train and merge under faults: SIGKILL at seeded random moments through
`clipmill run <stage>`, `dvc repro <stage>` and the Prefect pipeline flow
(`python -m flows.pipeline --stages <stage>`), rerun through the same door until done; SIGTERM
mid-run; a Ray worker killed mid-stage (the stages that use Ray, and train on Ray Train
workers). Each result is compared with an uninterrupted run
of the same stage (tests/faults/cases.py); the outcomes go to $CLIPMILL_RELIABILITY_LOG.

By default seed 1 runs through the CLI for train, through DVC for curate and merge, and
through the Prefect flow for curate (every door in the default suite, which must stay under 30
minutes), with SIGTERM for recaption, train and merge and a killed Ray worker for curate and
recaption; seeds 2 and 3, the other stage-door pairs, SIGTERM on curate and the killed Ray Train
worker are marked slow (`make reliability FAULTS_ARGS="-m ''"` runs them).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.faults.cases import (
    Reference,
    ray_worker_case,
    reference,
    sigkill_case,
    sigterm_case,
)
from tests.faults.stages import SPECS, TRAIN_RAY, train_checkpointed

SLOW = pytest.mark.slow
STAGES = ("curate", "recaption", "train", "merge")

# The Ray processes a worker kill may hit, per stage (`ray::<name>`): Ray Data restarts actors
# and retries their tasks (max_restarts / max_task_retries -1, Ray Data's default), plain tasks
# retry (max_retries 3); recaption's block part and marker are written atomically, so a retried
# block rewrites it whole. Train in its multi-worker mode (`num_workers` 2) runs on Ray Train
# workers, restarted from the last checkpoint (`max_failures`): its own case below. Train's
# in-process default and merge start no Ray.
RAY_WORKERS = {
    "curate": ("MatchBatch", "TextCheckBatch", "ReadAndHash", "count_file", "tmin_table"),
    "recaption": ("RecaptionActor",),
}


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Reference]]:
    """Each stage's uninterrupted run, made once, on first use; removed with the module (a few
    hundred MB each: kept to the session's end they filled CI's disk)."""
    made: dict[str, Reference] = {}
    folders: list[Path] = []
    specs = {**SPECS, "train-ray": TRAIN_RAY}

    def get(stage: str) -> Reference:
        if stage not in made:
            folders.append(tmp_path_factory.mktemp(f"{stage}_reference"))
            made[stage] = reference(specs[stage], folders[-1])
        return made[stage]

    yield get
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


# Stages whose CLI / DVC / Prefect-flow case is in the fast subset (half a minute to a minute
# each; the others run under `-m slow`, with `make reliability`).
CLI_FAST = ("train",)
PREFECT_FAST = ("curate",)
DVC_FAST = ("curate", "merge")


def _kill_cases() -> list[object]:
    """Seed 1 through the CLI for CLI_FAST, through DVC for DVC_FAST and through the Prefect
    flow for PREFECT_FAST (the flow's door is `dvc repro` per stage, under a Prefect flow run);
    the rest slow."""
    cases: list[object] = []
    for stage in STAGES:
        if stage in CLI_FAST:
            cases.append((stage, "cli", 1))
        else:
            cases.append(pytest.param(stage, "cli", 1, marks=SLOW))
        if stage in DVC_FAST:
            cases.append((stage, "dvc", 1))
        else:
            cases.append(pytest.param(stage, "dvc", 1, marks=SLOW))
        if stage in PREFECT_FAST:
            cases.append((stage, "prefect", 1))
        else:
            cases.append(pytest.param(stage, "prefect", 1, marks=SLOW))
        cases += [
            pytest.param(stage, door, seed, marks=SLOW)
            for seed in (2, 3)
            for door in ("cli", "dvc")
        ]
    return cases


@pytest.mark.parametrize(("stage", "door", "seed"), _kill_cases())
def test_sigkill_then_rerun_equals_an_uninterrupted_run(
    references: Callable[[str], Reference], tmp_path: Path, stage: str, door: str, seed: int
) -> None:
    sigkill_case(SPECS[stage], door, seed, tmp_path, references(stage))


@pytest.mark.parametrize(
    "stage", [pytest.param(s, marks=SLOW) if s == "curate" else s for s in STAGES]
)
def test_sigterm_stops_cleanly_then_rerun_completes(
    references: Callable[[str], Reference], tmp_path: Path, stage: str
) -> None:
    sigterm_case(SPECS[stage], tmp_path, references(stage))


@pytest.mark.parametrize("stage", sorted(RAY_WORKERS))
def test_a_killed_ray_worker_is_retried_and_the_stage_completes(
    references: Callable[[str], Reference], tmp_path: Path, stage: str
) -> None:
    """SIGKILL the first matching `ray::` process seen running: the run succeeds unaided with
    the uninterrupted run's result."""
    ray_worker_case(SPECS[stage], tmp_path, references(stage), RAY_WORKERS[stage])


@SLOW  # over two minutes; Ray Train's resume on stored features runs by default (tests/train)
def test_a_killed_ray_train_worker_resumes_from_the_last_checkpoint(
    references: Callable[[str], Reference], tmp_path: Path
) -> None:
    """Train on two Ray Train workers; once a checkpoint is on disk, SIGKILL a worker
    (`ray::RayTrainWorker`): Ray Train restarts the worker group (`max_failures`), the workers
    restore the last checkpoint (the run says it resumed at a step > 0) and the run ends with
    the weights of an uninterrupted two-worker run, bit for bit (the train stage's promise)."""
    ray_worker_case(
        TRAIN_RAY,
        tmp_path,
        references("train-ray"),
        ("RayTrainWorker",),
        ready=train_checkpointed,
        shows=r"resuming \S+ at step [1-9]\d*/",
    )
