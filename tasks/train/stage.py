"""The train stage: validate inputs, run the loop on Ray Train (or in-process), track and register.

Serves two registry stages with two params files: `teacher` (LiT from pretrained towers on the
crawled pool) and `train` (a student from scratch on the curated shards).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.train.params import TrainParams

if TYPE_CHECKING:
    from tasks.train.local import LocalTraining
    from tasks.train.tracking import ExportPrefetch


class TrainError(RuntimeError):
    """A training run failed on a worker; the message carries the worker's error."""


def preflight(p: TrainParams) -> tuple[list[str], int]:
    """Every input problem found before any worker starts: shards, the exclusion list, data size
    (excluded samples left out), model name, tower file."""
    from tasks.clip import model_config
    from tasks.clip.towers import resolve_pkg_path
    from tasks.train.data import DataError, check_split, count_samples, list_shards, load_excluded

    shards = list_shards(p.shards)
    excluded = load_excluded(p.exclude_uids)
    n = count_samples(shards, excluded)
    if p.shard_split and p.num_workers > 1:
        check_split(shards, p.num_workers, excluded)
    if n == 0:
        raise DataError(
            f"shards {p.shards!r}: {len(shards)} shard(s) hold no image samples"
            + (f" outside exclude_uids {p.exclude_uids!r}" if p.exclude_uids else "")
        )
    if p.batch_size > n:
        raise DataError(f"batch_size {p.batch_size} is larger than the {n} samples in {p.shards!r}")
    model_config(p.model)
    src = p.pretrained_image
    if src.startswith("pkg:"):
        resolve_pkg_path(src)
    elif (
        src
        and src != "timm"
        and not src.startswith(("http://", "https://"))
        and not Path(src).is_file()
    ):
        from tasks.clip import TowerWeightsError

        raise TowerWeightsError(f"pretrained_image {src!r}: file not found")
    return shards, n


def run_directory(p: TrainParams, name: str) -> tuple[Path, str]:
    """One folder per distinct computation: only an identical run resumes from it."""
    from tasks.io.paths import resolve_path

    fields = p.fingerprint_fields()
    if p.exclude_uids:  # another list is another computation, even under the same path
        fields["exclude_uids_sha256"] = hashlib.sha256(
            resolve_path(p.exclude_uids).read_bytes()
        ).hexdigest()
    fingerprint = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
    return resolve_path(p.run_root) / f"{name}-{fingerprint}", fingerprint


def launch(p: TrainParams, config: dict[str, Any], run_dir: Path) -> None:
    """TorchTrainer for N > 0 Ray workers; `num_workers=0` calls the same worker function in
    this process without Ray Train (its local mode ran the function in-process too, after
    importing ray.train and setting up its run context: ~2 s of a whole command that a bare
    open_clip script does not pay; benchmarks/train_overhead.py)."""
    from tasks.train.worker import train_worker

    if p.num_workers == 0:
        train_worker(config)
        return
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = ScalingConfig(
        num_workers=p.num_workers,
        use_gpu=p.use_gpu,
        resources_per_worker=None if p.num_workers == 0 else {"CPU": p.cpus_per_worker},
    )
    # On a bucket data root the run's checkpoints live in the bucket (`<data root>/train_runs`):
    # Ray Train refuses a local storage path that other nodes cannot see, and a worker on any
    # node must find them to resume.
    storage_path, storage_fs = _run_storage(run_dir.parent)
    run_config = RunConfig(
        name=run_dir.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=p.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=p.keep_checkpoints),
    )
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=config,
        scaling_config=scaling,
        run_config=run_config,
        torch_config=TorchConfig(backend="nccl" if p.use_gpu else "gloo"),
    )
    try:
        trainer.fit()
    except Exception as exc:
        raise TrainError(f"training {run_dir.name} failed on a Ray Train worker: {exc}") from exc


def _run_storage(local: Path) -> tuple[str, Any]:
    """Ray Train's storage for the runs folder: the bucket (through the same fsspec filesystem
    the data root layer uses, handed to Ray as a pyarrow filesystem) when the folder lies in the
    bucket data root's cache folder; the local folder otherwise (no filesystem: Ray's own)."""
    from tasks.io.nodefetch import bucket_uri

    uri = bucket_uri(local)
    if uri is None:
        return str(local), None
    import fsspec
    import pyarrow.fs

    fs, path = fsspec.core.url_to_fs(uri)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _mlflow_context() -> tuple[str | None, str | None]:
    import mlflow

    from tasks.settings import get_settings

    run = mlflow.active_run()
    return (get_settings().tracking_uri, run.info.run_id) if run else (None, None)


def run(params: TrainParams) -> dict[str, Any]:
    """Train, export the model folder, log the loss curve, register the model; return metrics.

    In local mode through the runner the training runs in the child process the runner started
    before opening MLflow (tasks/train/local.py); otherwise here (local mode called directly) or
    on Ray Train workers."""
    from tasks.train.local import take
    from tasks.train.tracking import ExportPrefetch

    tracking_uri, run_id = _mlflow_context()
    # Started first: the export's weight-independent work (the shard hash, whose md5 releases the
    # GIL, and imports) runs beside preflight's imports and the training steps.
    prefetch = ExportPrefetch(params.shards) if run_id is not None else None
    child = take(params)
    try:
        if child is not None:
            return _run_child(params, child, tracking_uri, run_id, prefetch)
        return _run(params, tracking_uri, run_id, prefetch)
    finally:
        if child is not None:  # stopped now if it still runs: the MLflow run ends after it
            child.close()
        if prefetch is not None:  # no thread outlives the stage, failed or not
            prefetch.join()


@dataclass(frozen=True)
class Prepared:
    """A run whose inputs passed preflight, its run folder ready: what train_worker gets, and the
    counts the metrics report."""

    shards: list[str]
    n_samples: int  # image samples trained on (excluded ones left out)
    excluded_uids: int  # uids in exclude_uids
    excluded_samples: int  # samples of the shards skipped as excluded
    out_dir: Path
    run_dir: Path
    config: dict[str, Any]

    def report(self) -> dict[str, Any]:
        """The picklable part the training process sends its parent."""
        return {
            "shards": self.shards,
            "n_samples": self.n_samples,
            "excluded_uids": self.excluded_uids,
            "excluded_samples": self.excluded_samples,
            "out_dir": str(self.out_dir),
            "run_dir": str(self.run_dir),
        }


def prepare(
    params: TrainParams, tracking_uri: str | None = None, run_id: str | None = None
) -> Prepared:
    """Preflight, then the run folder (a fresh one unless resuming; what a killed run left
    half-written swept) and train_worker's config. `tracking_uri`/`run_id`: where the worker logs
    its steps itself (None: the training process sends them to its parent instead)."""
    from tasks.clip.featurestore import default_store_root
    from tasks.io.atomic import sweep_temp
    from tasks.io.nodefetch import this_node
    from tasks.io.paths import resolve_path
    from tasks.train.data import load_excluded, sample_counts

    shards, n_samples = preflight(params)
    excluded = load_excluded(params.exclude_uids)
    _, skipped = sample_counts(shards, excluded)  # the tar indices preflight read are cached
    out_dir = resolve_path(params.output_dir)
    run_dir, fingerprint = run_directory(params, out_dir.name)
    if not params.resume and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # what a killed run left half-written: checkpoint and export folders never renamed in
    sweep_temp(run_dir, ("*.tmp", ".tmp_ckpt_*"))
    sweep_temp(out_dir.parent, (f".{out_dir.name}.tmp_*",))
    (run_dir / "summary.json").unlink(missing_ok=True)
    config = {
        "params": params.model_dump(mode="json"),
        "run_dir": str(run_dir),
        "local_mode": params.num_workers == 0,
        "output_dir": str(out_dir),
        "params_yaml": params.to_yaml(),
        "fingerprint": fingerprint,
        "tracking_uri": tracking_uri,
        "run_id": run_id,
        "feature_store": str(default_store_root()),  # resolved here: every worker uses this one
        # rank 0 on another node than this driver uploads the model folder and summary to a
        # bucket data root (tasks/io/nodefetch.py: publish), as no disk is shared
        "driver_node": this_node() if params.num_workers else None,
    }
    return Prepared(shards, n_samples, len(excluded), skipped, out_dir, run_dir, config)


def _run(
    params: TrainParams,
    tracking_uri: str | None,
    run_id: str | None,
    prefetch: ExportPrefetch | None,
) -> dict[str, Any]:
    import time

    from tasks.io.nodefetch import ensure_local, refresh

    prep = prepare(params, tracking_uri, run_id)
    run_dir, out_dir = prep.run_dir, prep.out_dir
    started = time.perf_counter()
    launch(params, prep.config, run_dir)
    seconds = time.perf_counter() - started
    if not (run_dir / "summary.json").exists():  # rank 0 ran on another node: its upload
        ensure_local(run_dir / "summary.json")
        refresh(out_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    counts = (prep.excluded_uids, prep.excluded_samples)
    return finish(params, summary, prep.shards, prep.n_samples, out_dir, seconds, prefetch, counts)


def _run_child(
    params: TrainParams,
    child: LocalTraining,
    tracking_uri: str | None,
    run_id: str | None,
    prefetch: ExportPrefetch | None,
) -> dict[str, Any]:
    """Local mode in the runner's training process: this process relays its logged steps to the
    MLflow run, then logs and registers what it wrote."""
    from tasks.train.tracking import StepLogger

    prep = child.wait_prepared()
    logger = StepLogger(tracking_uri, run_id)
    seconds = child.wait_done(logger.log, logger.flush)
    run_dir, out_dir = Path(prep["run_dir"]), Path(prep["out_dir"])
    summary = json.loads((run_dir / "summary.json").read_text())
    counts = (int(prep["excluded_uids"]), int(prep["excluded_samples"]))
    return finish(
        params, summary, prep["shards"], prep["n_samples"], out_dir, seconds, prefetch, counts
    )


def feature_cache_metrics(cache: dict[str, Any]) -> dict[str, int]:
    """Whether the run trained from stored features, and how many it computed vs reused."""
    out = {"feature_cache_used": int(bool(cache.get("used")))}
    for tower in ("image", "text"):
        if cache.get(tower):
            out[f"{tower}_features_computed"] = int(cache.get(f"{tower}_computed", 0))
            out[f"{tower}_features_reused"] = int(cache.get(f"{tower}_reused", 0))
    out["features_computed"] = sum(v for k, v in out.items() if k.endswith("_features_computed"))
    out["features_reused"] = sum(v for k, v in out.items() if k.endswith("_features_reused"))
    return out


def finish(
    p: TrainParams,
    summary: dict[str, Any],
    shards: list[str],
    n: int,
    out_dir: Path,
    seconds: float,
    prefetch: ExportPrefetch | None = None,
    counts: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Tag the data version, plot, log the model folder, register it; build the metrics dict.
    `prefetch` holds the shard hash computed beside training (None: computed here); `counts`
    (uids in exclude_uids, samples skipped as excluded) as preflight found them (None: counted
    here; the training process's parent has them from its report and reads no shard)."""
    import mlflow

    from tasks.io.atomic import atomic_write_text
    from tasks.train.tracking import data_lineage, data_version, log_loss_plot, register_model

    if counts is None:
        from tasks.train.data import load_excluded, sample_counts

        excluded = load_excluded(p.exclude_uids)
        counts = (len(excluded), sample_counts(shards, excluded)[1])
    n_excluded, skipped = counts
    history = summary["history"]
    losses = [loss for _, loss in history]
    # The training curve as a file in the model folder, for `dvc plots show` (dvc.yaml `plots:`).
    curve = [{"step": int(step), "loss": float(loss)} for step, loss in history]
    atomic_write_text(out_dir / "loss_history.json", json.dumps(curve, indent=1) + "\n")
    k = max(1, min(5, len(losses) // 4))
    metrics: dict[str, Any] = {
        "steps": p.steps,
        "resumed_from_step": summary["start_step"],
        "samples_seen": p.steps * p.batch_size,
        "train_samples": n,
        "excluded_uids": n_excluded,  # uids in exclude_uids (decontaminate's flags)
        "excluded_samples": skipped,  # samples of the shards never trained on because listed
        "loss_first": sum(losses[:k]) / k,
        "loss_last": sum(losses[-k:]) / k,
        "samples_per_s": summary["samples_per_s"],
        "train_seconds": round(seconds, 3),
        "world_size": summary["world_size"],
        "trainable_params": summary["trainable_params"],
        "total_params": summary["total_params"],
    }
    metrics.update(feature_cache_metrics(summary.get("feature_cache", {})))
    # the heads' data-driven init (tasks/train/headinit.py): pairs, canonical correlations, seconds
    metrics.update(summary.get("feature_cache", {}).get("head_init", {}))
    if mlflow.active_run():
        mlflow.set_tags(
            {
                "clipmill.data_version": (
                    prefetch.data_version() if prefetch is not None else data_version(shards)
                ),
                "clipmill.data_shards": p.shards,
                "clipmill.model_dir": str(out_dir),
                **data_lineage(p.shards),
            }
        )
        log_loss_plot(history, out_dir.name)
        version = register_model(out_dir, p.registered_model_name)
        if version:
            metrics["registered_version"] = int(version)
            mlflow.set_tag(
                "clipmill.registered_model", f"models:/{p.registered_model_name}/{version}"
            )
    return metrics
