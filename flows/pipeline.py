"""The clipmill pipeline as a Prefect flow: validate overrides, write params, `dvc repro` each stage.

DVC stays the one build system: it decides what is stale, records what ran in dvc.lock, and a
scheduled run with nothing changed costs nothing. Prefect adds scheduling, retries and a UI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from tasks.base import ParamsError, parse_override, read_yaml_mapping, set_dotted
from tasks.io import atomic_write_text
from tasks.registry import STAGES, get_stage
from tasks.settings import get_settings
from tasks.tracking import FLOW_RUN_ENV, PARENT_RUN_ENV, configure_mlflow, git_commit


def validate_overrides(
    stages: list[str], overrides: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Apply overrides on top of each stage's committed YAML and validate EVERY stage first,
    so a typo in the last stage's params fails before hours of work in the first."""
    unknown = set(overrides) - set(STAGES)
    if unknown:
        raise ParamsError(
            f"overrides name unknown stage(s) {sorted(unknown)}; known: {list(STAGES)}"
        )
    merged: dict[str, dict[str, Any]] = {}
    for name in stages:
        spec = get_stage(name)
        data = read_yaml_mapping(spec.params_file)
        for key, value in overrides.get(name, {}).items():
            set_dotted(data, key, value)
        spec.model().validate_mapping(data, source=f"{spec.params_file} (with overrides)")
        merged[name] = data
    return merged


def write_params(merged: dict[str, dict[str, Any]], overrides: dict[str, dict[str, Any]]) -> None:
    """Overridden values become the params files' values, so DVC sees (and records) them."""
    for name in overrides:
        if name in merged:
            path = get_stage(name).params_file
            atomic_write_text(path, yaml.safe_dump(merged[name], sort_keys=False))


@task(name="dvc-repro", retries=0)
def repro_stage(stage: str, parent_run_id: str, force: bool = False) -> dict[str, Any]:
    """One stage through DVC; DVC calls `clipmill run STAGE`, which tags the run door=prefect."""
    logger = get_run_logger()
    root = get_settings().root
    env = {
        **os.environ,
        "CLIPMILL_DOOR": "prefect",
        PARENT_RUN_ENV: parent_run_id,
        FLOW_RUN_ENV: str(flow_run.get_id() or ""),
        "CLIPMILL_ROOT": str(root),
        # dvc.yaml calls `clipmill`: make sure it is this environment's, activated or not.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [_dvc(), "repro", "--single-item", stage] + (["--force"] if force else [])
    logger.info("running %s", " ".join(cmd))
    # The stage's own progress bars and logs go straight to the console, as they happen.
    proc = subprocess.run(cmd, cwd=root, env=env)
    if proc.returncode != 0:
        raise RuntimeError(
            f"stage {stage!r} failed (dvc exit {proc.returncode}); its output is above"
        )
    metrics_file = root / "metrics" / f"{stage}.json"
    return json.loads(metrics_file.read_text()) if metrics_file.exists() else {}


@task(name="dvc-push", retries=2, retry_delay_seconds=10)
def push_outputs() -> str:
    """Send the DVC-tracked outputs to the remote: the local folder remote by default, or the
    URL in $CLIPMILL_DVC_REMOTE_URL (s3://bucket/dvc, ...), registered in .dvc/config.local."""
    root = get_settings().root
    remote = "local"
    url = os.environ.get("CLIPMILL_DVC_REMOTE_URL")
    if url:
        remote = "clipmill-env"
        subprocess.run(
            [_dvc(), "remote", "add", "--local", "--force", remote, url], cwd=root, check=True
        )
    proc = subprocess.run([_dvc(), "push", "-r", remote], cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc push to remote {remote!r} failed (exit {proc.returncode})")
    return remote


def _dvc() -> str:
    candidate = Path(sys.executable).with_name("dvc")
    return str(candidate) if candidate.exists() else "dvc"


@flow(name="clipmill-pipeline", log_prints=True)
def pipeline(
    stages: list[str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    push: bool = False,
) -> dict[str, dict[str, Any]]:
    """Run the selected stages (default: all, in pipeline order) under one MLflow parent run,
    then optionally push the outputs to the DVC remote."""
    import mlflow

    selected = [s for s in STAGES if s in (stages or list(STAGES))]
    if stages and set(stages) - set(selected):
        raise ParamsError(
            f"unknown stage(s) {sorted(set(stages) - set(selected))}; known: {list(STAGES)}"
        )
    overrides = overrides or {}
    merged = validate_overrides(selected, overrides)
    write_params(merged, overrides)
    experiment_id = configure_mlflow()
    tags = {
        "clipmill.stage": "pipeline",
        "clipmill.door": "prefect",
        "clipmill.git_commit": git_commit(get_settings().root),
        "clipmill.prefect_flow_run_id": str(flow_run.get_id() or ""),
    }
    results: dict[str, dict[str, Any]] = {}
    with mlflow.start_run(experiment_id=experiment_id, run_name="pipeline", tags=tags) as parent:
        mlflow.log_param("stages", ",".join(selected))
        for name in selected:
            results[name] = repro_stage(name, parent.info.run_id, force)
        if push:
            mlflow.set_tag("clipmill.dvc_remote", push_outputs())
    return results


def _parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the clipmill pipeline as a Prefect flow.")
    parser.add_argument("--stages", nargs="*", help="stages to run (default: all)")
    parser.add_argument("-s", "--set", action="append", default=[], metavar="STAGE.KEY=VALUE")
    parser.add_argument(
        "--force", action="store_true", help="re-run stages even if DVC says up to date"
    )
    parser.add_argument("--push", action="store_true", help="dvc push the outputs afterwards")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_cli(sys.argv[1:] if argv is None else argv)
    overrides: dict[str, dict[str, Any]] = {}
    try:
        for text in args.set:
            key, value = parse_override(text)
            stage, _, field = key.partition(".")
            if not field:
                raise ParamsError(f"override {text!r}: expected STAGE.KEY=VALUE")
            overrides.setdefault(stage, {})[field] = value
        results = pipeline(
            stages=args.stages, overrides=overrides, force=args.force, push=args.push
        )
    except ParamsError as exc:
        print(f"clipmill pipeline: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
