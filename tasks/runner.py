"""The one stage runner behind every door (CLI, dvc.yaml, Prefect): validate, track, run, record."""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from tasks.base import StageParams, parse_override
from tasks.io import atomic_write_json
from tasks.registry import StageSpec, get_stage
from tasks.settings import get_settings
from tasks.tracking import (
    FLOW_RUN_ENV,
    git_commit,
    log_artifact,
    log_metrics,
    stage_fingerprint,
    tracked_run,
)


def load_stage_params(
    spec: StageSpec,
    params_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
) -> StageParams:
    """The committed YAML (or another file) with `key=value` overrides on top, validated."""
    if isinstance(overrides, list):
        overrides = dict(parse_override(o) for o in overrides)
    return spec.model().from_yaml(params_file or spec.params_file, overrides)


def _nothing() -> None:
    return None


def entry_door(requested: str | None) -> str:
    """The door a person or scheduler came in by: Prefect (which calls DVC) > DVC > the caller's."""
    if os.environ.get("CLIPMILL_DOOR"):
        return os.environ["CLIPMILL_DOOR"]
    if os.environ.get("DVC_STAGE"):
        return "dvc"
    return requested or get_settings().door


def run_stage(
    name: str,
    params_file: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    door: str | None = None,
) -> dict[str, Any]:
    """Run one stage end to end; raises ParamsError before any work when params are invalid."""
    spec = get_stage(name)
    params = load_stage_params(spec, params_file, overrides)
    settings = get_settings()
    door = entry_door(door)
    tags = {
        "clipmill.door": door,
        "clipmill.git_commit": git_commit(),
        "clipmill.prefect_flow_run_id": os.environ.get(FLOW_RUN_ENV, ""),
        "clipmill.dvc_stage_hash": stage_fingerprint(
            spec.code, Path(params_file or spec.params_file)
        ),
    }
    dump = params.model_dump(mode="json")
    metrics_dir = settings.root / "metrics"
    if spec.uses_ray:
        from tasks.raysession import ray_ready, ray_session

        # Ray boots in the background while the MLflow run opens; see tasks/raysession.py.
        session, ready = ray_session(settings, background=True), ray_ready
    else:
        session, ready = nullcontext(), _nothing
    with session, tracked_run(name, dump, tags, deferred=spec.defers_tracking) as run:
        started = time.perf_counter()
        if not spec.waits_for_ray:
            ready()
        metrics = dict(spec.run_callable()(params))
        metrics["stage_seconds"] = round(time.perf_counter() - started, 3)
        log_metrics(metrics)
        out = metrics_dir / f"{name}.json"
        atomic_write_json(out, metrics)
        log_artifact(out, "metrics")
        run_id = run.info.run_id
    return {**metrics, "_mlflow_run_id": run_id}
