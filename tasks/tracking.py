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
        try:
            return mlflow.create_experiment(
                settings.mlflow_experiment, artifact_location=settings.artifact_root
            )
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
    return all_tags


class DeferredRun:
    """The stage's MLflow run, opened in a thread once the stage says it is waiting on workers.

    Importing MLflow and opening its store costs about two seconds of the driver's time; a
    stage whose driver then only waits (the crawl, while shards download) calls
    `open_run_in_background()` and that time leaves its critical path. The run is the same as
    an eagerly opened one: same tags (system tags included), params and start time. Any helper
    here, or the end of the stage, waits for it and makes it the active run.
    """

    def __init__(self, stage: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        import threading
        import time

        self.stage, self.params, self.tags = stage, dict(params), _run_tags(stage, tags)
        self.start_ms = int(time.time() * 1000)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._run: Any = None
        self._error: BaseException | None = None

    def _open(self) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
            from mlflow.tracking.context.registry import resolve_tags

            experiment_id = configure_mlflow()
            client = MlflowClient()
            run = client.create_run(
                experiment_id,
                start_time=self.start_ms,
                tags=resolve_tags(self.tags),
                run_name=self.stage,
            )
            items = [Param(k, str(v)) for k, v in flatten(self.params, self.stage).items()]
            for i in range(0, len(items), 100):  # MLflow's batch limit
                client.log_batch(run.info.run_id, params=items[i : i + 100])
            self._run = run
        except BaseException as exc:  # raised in the caller by run()
            self._error = exc

    def open_in_background(self) -> None:
        import threading

        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._open, name="mlflow-open", daemon=True)
                self._thread.start()

    def run(self) -> Any:
        """The opened run (waits for the thread; opens it now if nobody asked earlier)."""
        self.open_in_background()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._run

    @property
    def info(self) -> Any:
        return self.run().info


_deferred: DeferredRun | None = None


def open_run_in_background() -> None:
    """Called by a stage whose driver is about to wait: open the deferred run meanwhile."""
    if _deferred is not None:
        _deferred.open_in_background()


def wait_for_background_open() -> None:
    """Block while a deferred run is being opened in the background.

    For callers about to import big packages: Python's import locks can deadlock when two
    threads import packages with circular imports at once, and MLflow imports many.
    """
    handle = _deferred
    if handle is not None and handle._thread is not None:
        handle._thread.join()


def _activate() -> bool:
    """Make the deferred run (if any) the active one in this thread; True when a run is active."""
    import mlflow

    if mlflow.active_run() is None and _deferred is not None:
        mlflow.start_run(run_id=_deferred.run().info.run_id)
    return mlflow.active_run() is not None


@contextmanager
def tracked_run(
    stage: str, params: Mapping[str, Any], tags: Mapping[str, str], deferred: bool = False
) -> Iterator[Any]:
    """Open the stage's MLflow run, nested under the pipeline's run when one is set.

    `deferred=True` yields a DeferredRun at once; the run opens when the stage calls
    `open_run_in_background()` or when it is first needed, and ends with the stage's status.
    """
    global _deferred
    if not deferred:
        import mlflow

        experiment_id = configure_mlflow()
        all_tags = _run_tags(stage, tags)
        with mlflow.start_run(experiment_id=experiment_id, run_name=stage, tags=all_tags) as run:
            mlflow.log_params(flatten(params, prefix=stage))
            yield run
        return
    handle = _deferred = DeferredRun(stage, params, tags)
    status = "FAILED"
    try:
        yield handle
        status = "FINISHED"
    finally:
        _deferred = None
        try:
            import mlflow

            run = handle.run()
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run.info.run_id:
                mlflow.end_run(status)
            else:
                from mlflow.tracking import MlflowClient

                MlflowClient().set_terminated(run.info.run_id, status)
        except Exception:
            if status == "FINISHED":
                raise  # the stage worked but its run could not be recorded: say so
            # the stage's own error is the one to report


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    import mlflow

    values = numeric_metrics(metrics)
    if values and _activate():
        mlflow.log_metrics(values, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    import mlflow

    if _activate():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_figure(figure: Any, name: str) -> None:
    """Plots are what people look at: every stage logs its figures as PNG artifacts."""
    import mlflow

    if _activate():
        mlflow.log_figure(figure, f"plots/{name}")
