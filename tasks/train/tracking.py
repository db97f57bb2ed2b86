"""MLflow for the train stage: per-step metrics from worker 0, the loss plot, the model registry."""

from __future__ import annotations

import functools
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
        if self.client is not None and self.run_id is not None and self.buffer:
            self.client.log_batch(self.run_id, metrics=self.buffer)
            self.buffer = []


def data_version(shards: list[str]) -> str:
    """Content hash of the training shards, so a registered model traces back to its exact data."""
    digest = hashlib.md5()
    for shard in shards:
        digest.update(Path(shard).name.encode())
        with open(shard, "rb") as fh:
            for chunk in iter(functools.partial(fh.read, 1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


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
