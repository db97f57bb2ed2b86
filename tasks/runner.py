"""The one stage runner behind every door (CLI, dvc.yaml, Prefect): validate, track, run, record."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.base import StageParams, parse_override
from tasks.io import atomic_write_json, dataroot
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
    # CLIPMILL_DATA_ROOT a bucket: checked here, before any work; native outputs pointed at it
    shared = dataroot.for_stage(name, spec.native_outs, params.model_dump(mode="json"), settings)
    if shared is not None and shared.native:
        if isinstance(overrides, list):
            overrides = dict(parse_override(o) for o in overrides)
        params = load_stage_params(spec, params_file, {**(overrides or {}), **shared.native})
    door = entry_door(door)

    def tags() -> dict[str, str]:
        return {
            "clipmill.door": door,
            "clipmill.git_commit": git_commit(),
            "clipmill.prefect_flow_run_id": os.environ.get(FLOW_RUN_ENV, ""),
            "clipmill.dvc_stage_hash": stage_fingerprint(
                spec.code, Path(params_file or spec.params_file)
            ),
        }

    dump = params.model_dump(mode="json")
    metrics_dir = settings.root / "metrics"
    run_function = spec.run_callable()
    use_ray = spec.uses_ray and params.needs_ray()
    # inputs from the bucket before the MLflow run or Ray start: a missing one fails cleanly
    pulled = shared.pull() if shared is not None else None
    # work that needs no engine starts first, overlapping the MLflow and Ray start-up below
    # (train in local mode: its training process, tasks/train/local.py); stopped on the way out
    with spec.prestarted(params), engines(spec, name, dump, tags, use_ray=use_ray) as run:
        started = time.perf_counter()
        metrics = dict(run_function(params))
        metrics["stage_seconds"] = round(time.perf_counter() - started, 3)
        if use_ray:
            from tasks.raysession import release_ray

            release_ray()  # Ray shuts down while the run's results are recorded below
        if shared is not None and pulled is not None:  # outputs up to the bucket
            pushed = shared.push()
            metrics.update(
                dataroot_downloaded=pulled.moved,
                dataroot_download_skipped=pulled.skipped,
                dataroot_uploaded=pushed.moved,
                dataroot_skipped=pushed.skipped,
                dataroot_deleted=pushed.deleted,
            )
        log_metrics(metrics)
        out = metrics_dir / f"{name}.json"
        atomic_write_json(out, metrics)
        log_artifact(out, "metrics")
        run_id = run.info.run_id
    return {**metrics, "_mlflow_run_id": run_id}


@contextmanager
def engines(
    spec: StageSpec,
    name: str,
    params: dict[str, Any],
    tags: Callable[[], dict[str, str]],
    use_ray: bool | None = None,
) -> Iterator[Any]:
    """Ray up (when the stage uses it) and the stage's MLflow run open; both closed on the way out.

    Stage code calls no boot or release helper: when the body runs, `ray.is_initialized()` is
    true and the run is the active MLflow run. Start-up is overlapped here and only here: a
    local Ray boots in a thread (tasks/raysession.py) while this thread computes the run's
    provenance tags (`tags()`: git, file hashes) and opens the MLflow run, all together taking
    about as long as the slowest. The run ends (FINISHED, or FAILED when the body raises)
    before Ray is shut down. `use_ray` (default: the registry's `uses_ray`) is False when the
    params say this run needs no Ray (`StageParams.needs_ray`, e.g. train in local mode): then
    no Ray is started at all.
    """
    if not (spec.uses_ray if use_ray is None else use_ray):
        with tracked_run(name, params, tags()) as run:
            yield run
        return
    from tasks.raysession import ray_ready, ray_session

    with ray_session(get_settings(), background=True), tracked_run(name, params, tags()) as run:
        ray_ready()
        yield run
