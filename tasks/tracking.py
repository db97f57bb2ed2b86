"""MLflow for every stage run: flattened params, metrics, artifacts, provenance tags.

The run opened by the runner is the active run while a stage executes, so stage code logs
plots and files through the helpers here without knowing which door started it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.settings import Settings, get_settings

PARENT_RUN_ENV = "CLIPMILL_PARENT_RUN_ID"  # set by the pipeline so stage runs nest under it
FLOW_RUN_ENV = "CLIPMILL_PREFECT_FLOW_RUN_ID"  # set by the Prefect flow for its children
DVC_EXP_TAGS = {  # set by `dvc exp run` for the stages it runs -> MLflow tag
    "DVC_EXP_NAME": "clipmill.dvc_exp",
    "DVC_EXP_BASELINE_REV": "clipmill.dvc_exp_baseline",
}
_METRIC_NAME = re.compile(r"[^0-9A-Za-z_\-. :/]")


def ensure_sqlite_store(tracking_uri: str, artifact_root: str) -> None:
    """Create a missing SQLite store whole or not at all: built under a temporary name, then linked.

    MLflow creates a store by running some fifty schema migrations. A process killed halfway
    (a crawl may be killed at any moment and must restart cleanly) would leave a half-migrated
    file that every later run refuses ("table ... already exists"). os.link does not replace:
    when another process created the store first, its complete store is used and ours dropped.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.creating")
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        SqlAlchemyStore(f"sqlite:///{tmp}", artifact_root).engine.dispose()
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def configure_mlflow(settings: Settings | None = None) -> str:
    """Point MLflow at the configured store and make sure the experiment exists; return its id."""
    settings = settings or get_settings()
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow

    ensure_sqlite_store(settings.tracking_uri, settings.artifact_root)
    mlflow.set_tracking_uri(settings.tracking_uri)
    exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
    if exp is None:
        # An MLflow server with no artifact root set here stores artifacts where the server
        # says (`--artifacts-destination`, e.g. S3), not in a folder of this machine.
        server = settings.tracking_uri.startswith(("http://", "https://"))
        location = None if server and not settings.mlflow_artifact_root else settings.artifact_root
        try:
            return mlflow.create_experiment(settings.mlflow_experiment, artifact_location=location)
        except Exception:  # another process created it first
            exp = mlflow.get_experiment_by_name(settings.mlflow_experiment)
            if exp is None:
                raise
    return exp.experiment_id


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {"stage.a.b": value}, lists kept as JSON text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def metric_name(name: str) -> str:
    """MLflow accepts only a few characters in metric names (`recall@5` is refused)."""
    return _METRIC_NAME.sub("_", name.replace("@", "_at_"))


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    flat = flatten(metrics)
    return {
        metric_name(k): float(v)
        for k, v in flat.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def git_commit(root: Path | None = None) -> str:
    """HEAD, with `-dirty` when the tree differs from it, so a run is traceable to its code."""
    root = root or get_settings().root
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "uncommitted") + ("-dirty" if dirty else "")


def stage_fingerprint(
    code_paths: tuple[str, ...], params_file: Path, root: Path | None = None
) -> str:
    """DVC's view of a stage (its code deps and params), as one md5 over file contents.

    DVC writes its per-dependency hashes to dvc.lock only after the command ends; this is the
    same information, available while the stage runs, to tag its MLflow run.
    """
    root = root or get_settings().root
    digest = hashlib.md5()
    files: list[Path] = []
    for rel in code_paths:
        p = root / rel
        files.extend(
            sorted(f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
            if p.is_dir()
            else [p]
        )
    for f in [*files, params_file]:
        if f.exists():
            name = f.relative_to(root) if f.is_relative_to(root) else f.name
            digest.update(str(name).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()


def _run_tags(stage: str, tags: Mapping[str, str]) -> dict[str, str]:
    all_tags = {"clipmill.stage": stage, **tags}
    parent = os.environ.get(PARENT_RUN_ENV)
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    # `dvc exp run` names its experiment to the stage commands: the run is tied to it.
    for env, tag in DVC_EXP_TAGS.items():
        if os.environ.get(env):
            all_tags[tag] = os.environ[env]
    return all_tags


def _active() -> bool:
    """True when a run is active in this thread (the runner's, while a stage executes)."""
    import mlflow

    return mlflow.active_run() is not None


@contextmanager
def tracked_run(stage: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> Iterator[Any]:
    """Open the stage's MLflow run, nested under the pipeline's run when one is set.

    The run ends FINISHED, or FAILED when the body raises.
    """
    import mlflow

    experiment_id = configure_mlflow()
    all_tags = _run_tags(stage, tags)
    with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=all_tags) as run:
        mlflow.log_params(flatten(params, prefix=stage))
        yield run


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    import mlflow

    values = numeric_metrics(metrics)
    if values and _active():
        mlflow.log_metrics(values, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    if _active():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_figure(figure: Any, name: str) -> None:
    """Plots are what people look at: every stage logs its figures as PNG artifacts."""
    import mlflow

    if _active():
        mlflow.log_figure(figure, f"plots/{name}")
