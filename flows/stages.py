"""One Prefect flow per stage, for deployments with their own schedule, retries and timeout.

Each flow is the pipeline flow restricted to one stage (`dvc repro --single-item STAGE`, or one
DVC experiment when given overrides), run as a subflow: its overrides are validated against the
stage's params model before anything is pulled or computed, inputs come from the DVC remote
first (`pull`) and outputs go back after (`push`), and the stage's MLflow run nests under the
subflow's pipeline run. prefect.yaml deploys them (schedules, concurrency limits, work pool).

Retries re-run the stage through DVC: a crawl resumes from its finished parts, other stages start
over; timeouts are generous upper bounds for the demo's scale times a few hundred, so a hung
stage is stopped rather than holding the work pool's slot for days.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import Flow, flow

from flows.pipeline import pipeline
from tasks.registry import STAGES


@dataclass(frozen=True)
class StagePolicy:
    """How Prefect treats one stage's flow run."""

    retries: int  # flow-run retries after a failure (DVC re-runs only what is stale)
    retry_delay_s: int  # seconds between a failure and the retry
    timeout_s: int  # the flow run fails after this many seconds


_HOUR = 3600
POLICIES: dict[str, StagePolicy] = {
    "sample": StagePolicy(retries=2, retry_delay_s=60, timeout_s=2 * _HOUR),
    "crawl": StagePolicy(retries=3, retry_delay_s=300, timeout_s=12 * _HOUR),  # resumable
    "decontaminate": StagePolicy(retries=1, retry_delay_s=60, timeout_s=6 * _HOUR),
    "teacher": StagePolicy(retries=1, retry_delay_s=300, timeout_s=24 * _HOUR),
    "recaption": StagePolicy(retries=2, retry_delay_s=300, timeout_s=24 * _HOUR),  # resumable
    "curate": StagePolicy(retries=1, retry_delay_s=300, timeout_s=12 * _HOUR),
    "coca": StagePolicy(retries=1, retry_delay_s=300, timeout_s=24 * _HOUR),
    "reinforce": StagePolicy(retries=2, retry_delay_s=300, timeout_s=12 * _HOUR),  # resumable
    "merge": StagePolicy(retries=1, retry_delay_s=60, timeout_s=6 * _HOUR),
    "train": StagePolicy(retries=1, retry_delay_s=600, timeout_s=72 * _HOUR),
    "evaluate": StagePolicy(retries=1, retry_delay_s=300, timeout_s=12 * _HOUR),
}
DEFAULT_POLICY = StagePolicy(retries=1, retry_delay_s=300, timeout_s=12 * _HOUR)


def stage_flow(stage: str) -> Flow[..., dict[str, dict[str, Any]]]:
    """The flow `clipmill-<stage>`: one stage, its overrides validated first."""
    policy = POLICIES.get(stage, DEFAULT_POLICY)

    @flow(
        name=f"clipmill-{stage}",
        retries=policy.retries,
        retry_delay_seconds=policy.retry_delay_s,
        timeout_seconds=policy.timeout_s,
        log_prints=True,
        description=f"The {stage} stage through DVC (overrides run as a DVC experiment).",
    )
    def run_stage(
        overrides: dict[str, Any] | None = None,
        force: bool = False,
        pull: bool = False,
        push: bool = False,
        experiment: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """`overrides` are dotted keys of this stage's params (`{"balance.t": 50}`)."""
        return pipeline(
            stages=[stage],
            overrides={stage: overrides} if overrides else None,
            force=force,
            pull=pull,
            push=push,
            experiment=experiment,
        )

    return run_stage


FLOWS: dict[str, Flow[..., dict[str, dict[str, Any]]]] = {name: stage_flow(name) for name in STAGES}

# Module-level names for prefect.yaml entrypoints (flows/stages.py:<stage>_flow).
sample_flow = FLOWS["sample"]
crawl_flow = FLOWS["crawl"]
decontaminate_flow = FLOWS["decontaminate"]
teacher_flow = FLOWS["teacher"]
curate_flow = FLOWS["curate"]
train_flow = FLOWS["train"]
evaluate_flow = FLOWS["evaluate"]
merge_flow = FLOWS["merge"]
