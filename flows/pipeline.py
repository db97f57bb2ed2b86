"""The clipmill pipeline as a Prefect flow: validate overrides, then `dvc repro` each stage, or
run the overridden stages as one DVC experiment.

DVC stays the one build system: it decides what is stale, records what ran in dvc.lock, and a
scheduled run with nothing changed costs nothing. Prefect adds scheduling, retries and a UI.
Overrides never become the committed params: they run as `dvc exp run -S ...` (listed by
`dvc exp show`, its name tagged on the MLflow runs) and the params files are put back as they were
(flows/experiments.py).

Without overrides the stages run as a DAG (flows/dag.py): each `dvc repro --single-item STAGE`
starts once the stages it depends on (dvc.yaml's deps and outs) have finished, up to `jobs` at
once, so the merge branch runs beside the main branch; `jobs=1` is the pipeline order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flows.dag import DagRun, dvc_graph, run_dag, selected_upstream
from flows.experiments import (
    EXPERIMENT_TAG,
    check_roundtrip,
    experiment_name,
    require_git_commit,
    run_dvc_experiment,
    set_param_args,
)
from tasks.base import ParamsError, StageParams, parse_override, read_yaml_mapping, set_dotted
from tasks.registry import STAGES, get_stage
from tasks.settings import get_settings
from tasks.tracking import FLOW_RUN_ENV, PARENT_RUN_ENV, configure_mlflow, git_commit


def validate_overrides(
    stages: list[str], overrides: dict[str, dict[str, Any]]
) -> dict[str, StageParams]:
    """Apply overrides on top of each stage's committed YAML and validate EVERY stage first (the
    selected ones and any other whose params file an override changes, e.g. crawl's `resize`
    section that curate reads), so a typo in the last stage's params fails before hours of work
    in the first."""
    unknown = set(overrides) - set(STAGES)
    if unknown:
        raise ParamsError(
            f"overrides name unknown stage(s) {sorted(unknown)}; known: {list(STAGES)}"
        )
    validated: dict[str, StageParams] = {}
    for name in [s for s in STAGES if s in stages or s in overrides]:
        spec = get_stage(name)
        data = read_yaml_mapping(spec.params_file)
        for key, value in overrides.get(name, {}).items():
            set_dotted(data, key, value)
        validated[name] = spec.model().validate_mapping(
            data, source=f"{spec.params_file} (with overrides)"
        )
    return validated


def experiment_args(
    overrides: dict[str, dict[str, Any]], validated: dict[str, StageParams]
) -> list[str]:
    """The `-S` arguments of `dvc exp run`, checked to write exactly the validated values."""
    root = get_settings().root
    args: list[str] = []
    for name, values in overrides.items():
        spec = get_stage(name)
        check_roundtrip(spec.model(), spec.params_file, values, validated[name])
        args += set_param_args(spec.params_file.relative_to(root).as_posix(), values)
    return args


def _stage_env(parent_run_id: str) -> dict[str, str]:
    """What a stage run under DVC needs: the door, the parent MLflow run, this environment."""
    root = get_settings().root
    return {
        **os.environ,
        "CLIPMILL_DOOR": "prefect",
        PARENT_RUN_ENV: parent_run_id,
        FLOW_RUN_ENV: str(flow_run.get_id() or ""),
        "CLIPMILL_ROOT": str(root),
        # dvc.yaml calls `clipmill`: make sure it is this environment's, activated or not.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _read_metrics(stage: str) -> dict[str, Any]:
    metrics_file = get_settings().root / "metrics" / f"{stage}.json"
    return json.loads(metrics_file.read_text()) if metrics_file.exists() else {}


_CONSOLE = threading.Lock()  # one stage's line at a time on the flow's stdout


def _copy_prefixed(stream: IO[bytes], prefix: str) -> None:
    """Copy a stage's output to stdout line by line, each line led by `[stage] `, so the lines
    of stages running side by side stay readable."""
    out = getattr(sys.stdout, "buffer", None)
    head = prefix.encode()
    for line in iter(stream.readline, b""):
        with _CONSOLE:
            if out is not None:
                out.write(head + line)
                out.flush()
            else:  # a text-only stdout (a test's capture)
                sys.stdout.write((head + line).decode(errors="replace"))
                sys.stdout.flush()


@task(name="dvc-repro", retries=0)
def repro_stage(
    stage: str, parent_run_id: str, force: bool = False, prefix: bool = False
) -> dict[str, Any]:
    """One stage through DVC; DVC calls `clipmill run STAGE`, which tags the run door=prefect.

    `--wait-for-lock`: a stage beside this one may hold DVC's repo lock while it checks or
    commits (a few seconds); without the flag this `dvc` would fail after 3 s, even when it
    has to take the lock back after a stage command that ran for an hour. `prefix`: the
    stage's output is piped and its lines prefixed (stages run side by side); otherwise it
    goes straight to the console, progress bars and all.
    """
    logger = get_run_logger()
    cmd = [_dvc(), "--wait-for-lock", "repro", "--single-item", stage]
    cmd += ["--force"] if force else []
    logger.info("running %s", " ".join(cmd))
    root, env = get_settings().root, _stage_env(parent_run_id)
    if prefix:
        env["PYTHONUNBUFFERED"] = "1"  # a pipe would hold a stage's prints until it exits
        with subprocess.Popen(
            cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as proc:
            assert proc.stdout is not None
            _copy_prefixed(proc.stdout, f"[{stage}] ")
            code = proc.wait()
    else:
        code = subprocess.run(cmd, cwd=root, env=env).returncode
    if code != 0:
        raise RuntimeError(f"stage {stage!r} failed (dvc exit {code}); its output is above")
    return _read_metrics(stage)


class PipelineFailed(RuntimeError):
    """Stages failed (or were held back by a failure); `results` holds the finished ones'."""

    def __init__(self, message: str, results: dict[str, dict[str, Any]]) -> None:
        super().__init__(message)
        self.results = results


def repro_graph(selected: list[str], parent_run_id: str, force: bool, jobs: int) -> DagRun:
    """The selected stages as `dvc repro --single-item` tasks on dvc.yaml's graph, at most
    `jobs` at once (flows/dag.py); every finished stage is committed to dvc.lock by DVC."""
    upstream = selected_upstream(
        dvc_graph(get_settings().root / "dvc.yaml"),
        selected,
        extra={name: get_stage(name).upstream for name in selected},
    )
    logger = get_run_logger()
    prefix = jobs > 1

    def submit(stage: str) -> Any:
        return repro_stage.submit(stage, parent_run_id, force, prefix)

    def on_event(stage: str, event: str) -> None:
        logger.info("stage %s %s", stage, event)

    return run_dag(selected, upstream, jobs, submit, on_event)


@task(name="clipmill-run", retries=0)
def run_on_data_root(stage: str, overrides: dict[str, Any], parent_run_id: str) -> dict[str, Any]:
    """One stage with `CLIPMILL_DATA_ROOT` a bucket: `clipmill run STAGE -s ...` (the runner
    downloads its inputs from the bucket into the local cache and uploads its outputs), since
    `dvc repro` checks outputs in a workspace that a bucket data root leaves empty."""
    sets = [a for k, v in overrides.items() for a in ("-s", f"{k}={json.dumps(v)}")]
    cmd = [_clipmill(), "run", stage, *sets]
    get_run_logger().info("running %s (data root %s)", " ".join(cmd), get_settings().data_root)
    proc = subprocess.run(cmd, cwd=get_settings().root, env=_stage_env(parent_run_id))
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage!r} failed (exit {proc.returncode}); its output is above")
    return _read_metrics(stage)


def _clipmill() -> str:
    candidate = Path(sys.executable).with_name("clipmill")
    return str(candidate) if candidate.exists() else "clipmill"


@task(name="dvc-exp-run", retries=0)
def run_experiment(
    stages: list[str], set_params: list[str], name: str, parent_run_id: str, force: bool = False
) -> dict[str, dict[str, Any]]:
    """The selected stages, in pipeline order, as ONE DVC experiment named `name`; the params
    files are put back byte for byte afterwards, whether the experiment succeeded or not."""
    get_run_logger().info("experiment %s: %s %s", name, " ".join(set_params), " ".join(stages))
    code = run_dvc_experiment(
        get_settings().root, stages, set_params, name, _stage_env(parent_run_id), force, _dvc()
    )
    if code != 0:
        raise RuntimeError(f"experiment {name!r} failed (dvc exit {code}); its output is above")
    return {stage: _read_metrics(stage) for stage in stages}


def _remote(root: Path) -> str:
    """The DVC remote to pull from / push to: the local folder remote by default, or the URL in
    $CLIPMILL_DVC_REMOTE_URL (s3://bucket/dvc, ...), else `<CLIPMILL_DATA_ROOT>/dvc` when the
    data root is a bucket (Settings.dvc_remote), registered in .dvc/config.local (with
    $AWS_ENDPOINT_URL as its endpoint when set: MinIO, an S3-compatible server)."""
    url = os.environ.get("CLIPMILL_DVC_REMOTE_URL") or get_settings().dvc_remote
    if not url:
        return "local"
    remote = "clipmill-env"
    subprocess.run(
        [_dvc(), "remote", "add", "--local", "--force", remote, url], cwd=root, check=True
    )
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and url.startswith("s3://"):
        subprocess.run(
            [_dvc(), "remote", "modify", "--local", remote, "endpointurl", endpoint],
            cwd=root,
            check=True,
        )
    return remote


@task(name="dvc-pull", retries=2, retry_delay_seconds=10)
def pull_inputs(stages: list[str]) -> str:
    """Fetch what the stages read (and what they wrote last time) from the DVC remote, so a
    worker on a fresh machine starts from the team's data; missing objects are skipped (a first
    run has nothing to pull) and DVC re-runs whatever is then stale."""
    root = get_settings().root
    remote = _remote(root)
    cmd = [_dvc(), "pull", "-r", remote, "--allow-missing", "--with-deps", *stages]
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc pull from remote {remote!r} failed (exit {proc.returncode})")
    return remote


@task(name="dvc-push", retries=2, retry_delay_seconds=10)
def push_outputs() -> str:
    """Send the DVC-tracked outputs to the remote (see `_remote`)."""
    root = get_settings().root
    remote = _remote(root)
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
    experiment: str | None = None,
    pull: bool = False,
    jobs: int = 2,
) -> dict[str, dict[str, Any]]:
    """Run the selected stages (default: all, in pipeline order) under one MLflow parent run,
    optionally pulling their inputs from the DVC remote first (after the overrides are
    validated) and pushing the outputs after.

    Without overrides each stage is a `dvc repro`, started as soon as the stages it depends on
    have finished, at most `jobs` at once (1 = one after the other, in pipeline order). A
    failed stage's downstream stages are not started; the others finish, and the flow then
    fails naming the stage (PipelineFailed). With overrides the stages run as one DVC
    experiment (named `experiment`, or clipmill-<time>) and the params files stay as they were.

    With `CLIPMILL_DATA_ROOT` a bucket (s3://...) the data lives there, not in DVC's workspace:
    each stage runs through the runner (`clipmill run STAGE`, overrides as `-s`, validated
    first), which pulls the stage's inputs from the bucket and pushes its outputs; `pull` and
    `push` are then what every stage does anyway, and every selected stage runs (DVC's
    up-to-date check needs a workspace; `force` is implied).
    """
    import mlflow

    default = [s for s, spec in STAGES.items() if spec.in_default_run]
    selected = [s for s in STAGES if s in (stages or default)]
    if stages and set(stages) - set(selected):
        raise ParamsError(
            f"unknown stage(s) {sorted(set(stages) - set(selected))}; known: {list(STAGES)}"
        )
    if jobs < 1:
        raise ParamsError(f"jobs must be >= 1, got {jobs}")
    overrides = {stage: values for stage, values in (overrides or {}).items() if values}
    validated = validate_overrides(selected, overrides)
    settings = get_settings()
    root = settings.root
    on_bucket = settings.remote_data
    exp_name, set_params = None, []
    if overrides and not on_bucket:
        exp_name = experiment_name(experiment)
        set_params = experiment_args(overrides, validated)
        require_git_commit(root)
    if pull and not on_bucket:  # on a bucket, the runner pulls each stage's inputs
        pull_inputs(selected)
    experiment_id = configure_mlflow()
    tags = {
        "clipmill.stage": "pipeline",
        "clipmill.door": "prefect",
        "clipmill.git_commit": git_commit(root),
        "clipmill.prefect_flow_run_id": str(flow_run.get_id() or ""),
    }
    if exp_name:
        tags[EXPERIMENT_TAG] = exp_name
    if on_bucket:
        tags["clipmill.data_root"] = str(settings.data_root)
    results: dict[str, dict[str, Any]] = {}
    with mlflow.start_run(experiment_id=experiment_id, run_name="pipeline", tags=tags) as parent:
        mlflow.log_param("stages", ",".join(selected))
        if overrides:
            mlflow.log_param("overrides", json.dumps(overrides, sort_keys=True, default=str))
        if on_bucket:
            for name in selected:
                results[name] = run_on_data_root(name, overrides.get(name, {}), parent.info.run_id)
        elif exp_name:
            results = run_experiment(selected, set_params, exp_name, parent.info.run_id, force)
        else:
            run = repro_graph(selected, parent.info.run_id, force, jobs)
            results = {name: run.results[name] for name in selected if name in run.results}
            # when each stage ran, in seconds since the first started: the overlap, on record
            if run.times:
                mlflow.log_metrics(
                    {
                        f"dag.{name}.{edge}_s": t
                        for name, ts in run.times.items()
                        for edge, t in zip(("start", "end"), ts, strict=True)
                    }
                )
            if not run.ok:
                mlflow.set_tag("clipmill.failed_stages", ",".join(run.failed))
                raise PipelineFailed(f"pipeline failed: {run.summary()}", results)
        if push and not on_bucket:
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
    parser.add_argument(
        "--pull", action="store_true", help="dvc pull the stages' inputs from the remote first"
    )
    parser.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=2,
        help="stages run at once, each when its upstream stages are done (1 = one by one)",
    )
    parser.add_argument(
        "-n",
        "--name",
        help="name of the DVC experiment that overrides run as (default: clipmill-<time>)",
    )
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
            stages=args.stages,
            overrides=overrides,
            force=args.force,
            push=args.push,
            experiment=args.name,
            pull=args.pull,
            jobs=args.jobs,
        )
    except ParamsError as exc:
        print(f"clipmill pipeline: error: {exc}", file=sys.stderr)
        return 2
    except PipelineFailed as exc:  # what did finish is printed, then what did not
        print(json.dumps(exc.results, indent=2, sort_keys=True, default=str))
        print(f"clipmill pipeline: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(results, indent=2, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
