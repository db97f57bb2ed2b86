"""MLflow for the train stage: per-step metrics from worker 0, the loss plot, the model registry."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEP_KEYS = ("loss", "lr", "logit_scale", "samples_per_s")
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")


class StepLogger:
    """Buffers per-step metrics and writes them in batches to the stage's MLflow run (any process)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, flush_every: int = 25) -> None:
        self.run_id = run_id
        self.buffer: list[Any] = []
        self.flush_every = flush_every
        self.client = None
        if tracking_uri and run_id:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri)

    def log(self, step: int, values: dict[str, float], timestamp_ms: int | None = None) -> None:
        """`timestamp_ms`: when the step was logged where it ran (None: now)."""
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        self.buffer.extend(Metric(f"train/{k}", float(v), now, step) for k, v in values.items())
        if len(self.buffer) >= self.flush_every * len(values):
            self.flush()

    def flush(self) -> None:
        if self.client is not None and self.run_id is not None and self.buffer:
            self.client.log_batch(self.run_id, metrics=self.buffer)
            self.buffer = []


class SinkStepLogger:
    """StepLogger's interface in local mode's training process (tasks/train/local.py): each
    logged step goes to the parent (`sink`, the pipe's send) with its timestamp, and the parent
    writes it to the run through a StepLogger. No MLflow here: the child never imports it."""

    def __init__(self, sink: Callable[[tuple[Any, ...]], None]) -> None:
        self.sink = sink

    def log(self, step: int, values: dict[str, float]) -> None:
        self.sink(("step", step, {k: float(v) for k, v in values.items()}, int(time.time() * 1000)))

    def flush(self) -> None:
        self.sink(("flush",))


def step_logger(config: dict[str, Any]) -> StepLogger | SinkStepLogger:
    """Rank 0's logger: to the parent when the training process has one (`step_sink` in the
    worker config), else straight to the MLflow run named in the config (when there is one)."""
    sink = config.get("step_sink")
    if sink is not None:
        return SinkStepLogger(sink)
    return StepLogger(config.get("tracking_uri"), config.get("run_id"))


def data_version(shards: list[str]) -> str:
    """Content hash of the training shards, so a registered model traces back to its exact data."""
    digest = hashlib.md5()
    for shard in shards:
        digest.update(Path(shard).name.encode())
        with open(shard, "rb") as fh:
            for chunk in iter(functools.partial(fh.read, 1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class ExportPrefetch:
    """The export work that does not depend on the trained weights, done in a background thread
    while the model trains, so the stage's fixed cost after training shrinks (measured by
    benchmarks/train_overhead.py against a bare open_clip script that has none of it):

    - the shards' content hash (`data_version`): md5 over every shard, which releases the GIL on
      its 1 MiB chunks, so it runs beside the training steps instead of after them;
    - the imports of the loss plot (matplotlib) and of MLflow's pyfunc flavour;
    - MLflow's map of installed distributions, which `mlflow.pyfunc.log_model` builds on first
      use to check our pinned requirements against the environment (importlib_metadata's
      `packages_distributions()`, a scan of every installed package's RECORD: about a second).

    The last two are warm-ups only: they change no result, and a failure there is ignored (the
    export then pays the cost itself). A failure of the hash is re-raised by `data_version()`.
    """

    def __init__(self, shards: str) -> None:
        self.shards = shards  # the `shards` param: listed in the thread, as preflight lists it
        self._version: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name="clipmill-export-prefetch", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        from tasks.train.data import list_shards

        try:
            self._version = data_version(list_shards(self.shards))
        except BaseException as exc:  # handed to the caller of data_version()
            self._error = exc
        warm_export()

    def data_version(self) -> str:
        """The shards' content hash, waiting for the background thread if it is still going."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._version is not None
        return self._version

    def join(self) -> None:
        """Wait for the background work (also when the run failed: no thread outlives the stage)."""
        self._thread.join()


def warm_export() -> None:
    """Best effort: import what the plot and the model logging use, and fill MLflow's cached map
    of installed distributions (`_init_modules_to_packages_map`, which `log_model` calls anyway)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401
        import mlflow.pyfunc  # noqa: F401
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()
    except Exception:  # a warm-up only: log_model does the same work itself if this failed
        return


def data_lineage(shards_dir: str) -> dict[str, str]:
    """Where the training data came from, as DVC and the curate stage recorded it: the md5 that
    dvc.lock holds for the output containing the shards, and the hash of the curated uid list."""
    import yaml

    from tasks.io.paths import resolve_path
    from tasks.settings import get_settings

    tags: dict[str, str] = {}
    root = get_settings().root
    target = resolve_path(shards_dir).resolve()
    lock = root / "dvc.lock"
    if lock.exists():
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        for name, stage in stages.items():
            for out in stage.get("outs", []):
                out_path = (root / out["path"]).resolve()
                if target == out_path or out_path in target.parents:
                    tags["clipmill.data_dvc_stage"] = name
                    tags["clipmill.data_dvc_md5"] = str(out.get("md5", ""))
    uid_list = target.parent / "subset_uids.parquet"
    if uid_list.exists():
        tags["clipmill.data_uid_list_sha256"] = hashlib.sha256(uid_list.read_bytes()).hexdigest()
    return tags


def log_loss_plot(history: list[list[float]], name: str) -> None:
    """The result people look at: the loss curve, as a PNG in the run's plots/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.tracking import log_figure

    if not history:
        return
    steps, losses = zip(*history, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, lw=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("contrastive loss")
    ax.set_title(f"{name}: training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    log_figure(fig, f"{name}_loss.png")
    plt.close(fig)


def register_model(model_dir: Path, registered_name: str) -> str | None:
    """Log the model folder as an MLflow pyfunc (models from code: nothing pickled) and register it."""
    import mlflow

    if not mlflow.active_run():
        return None
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(PYFUNC_FILE),
        artifacts={"clip": str(model_dir)},
        code_paths=[str(Path(__file__).resolve().parents[1])],
        pip_requirements=_requirements(),
        registered_model_name=registered_name or None,
    )
    version = getattr(info, "registered_model_version", None)
    return str(version) if version is not None else None


def _requirements() -> list[str]:
    from importlib.metadata import version

    pins = []
    for dist in (
        "torch",
        "torchvision",
        "open_clip_torch",
        "timm",
        "transformers",
        "safetensors",
        "mlflow",
    ):
        try:
            pins.append(f"{dist}=={version(dist)}")
        except Exception:
            pins.append(dist)
    return pins
