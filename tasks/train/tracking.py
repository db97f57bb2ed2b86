"""MLflow for the train stage: per-step metrics from worker 0, the loss plot, the model registry."""

from __future__ import annotations

import hashlib
import time
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

    def log(self, step: int, values: dict[str, float]) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.buffer.extend(Metric(f"train/{k}", float(v), now, step) for k, v in values.items())
        if len(self.buffer) >= self.flush_every * len(values):
            self.flush()

    def flush(self) -> None:
        if self.client is not None and self.buffer:
            self.client.log_batch(self.run_id, metrics=self.buffer)
            self.buffer = []


def data_version(shards: list[str]) -> str:
    """Content hash of the training shards, so a registered model traces back to its exact data."""
    digest = hashlib.md5()
    for shard in shards:
        digest.update(Path(shard).name.encode())
        with open(shard, "rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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
