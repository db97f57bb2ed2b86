"""What every Ray Train worker (or the in-process local mode) runs: build, restore, train, save."""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from tasks.train.params import TrainParams


def _context() -> tuple[int, int]:
    import ray.train

    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _device(p: TrainParams, local_mode: bool) -> Any:
    import torch

    if p.use_gpu and torch.cuda.is_available():
        if local_mode:  # this process, no Ray Train context
            return torch.device("cuda")
        import ray.train.torch

        return ray.train.torch.get_device()
    return torch.device("cpu")


def _broadcast_weights(model: Any, world: int) -> None:
    """Same seed gives the same init everywhere; broadcasting from rank 0 makes it certain."""
    import torch.distributed as dist

    if world > 1:
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


class Checkpointer:
    """Saves train state every `checkpoint_every` steps: itself in local mode, through Ray Train otherwise."""

    def __init__(
        self, p: TrainParams, run_dir: Path, rank: int, world: int, local_mode: bool
    ) -> None:
        self.p, self.run_dir, self.rank, self.world, self.local_mode = (
            p,
            run_dir,
            rank,
            world,
            local_mode,
        )
        self.last_path = ""

    def restore(self, model: Any, optimizer: Any, objective: Any = None) -> dict[str, Any]:
        """Latest checkpoint of this run (Ray's on a worker restart, else the newest complete
        folder whose files match its manifest)."""
        from tasks.train.checkpoints import complete_checkpoints, load_train_state

        if not self.p.resume:
            return {"step": 0, "history": []}
        ckpt = None
        if not self.local_mode:  # local mode runs without Ray Train (stage.launch)
            import ray.train

            ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                state = load_train_state(Path(d), model, optimizer, objective)
                self.last_path = str(ckpt.path)
                return state
        # Newest first; one that fails its manifest is skipped: a Ray Train worker killed while
        # Ray copied a checkpoint into storage leaves the folder (manifest included) with a file
        # cut short, never registered by Ray. Any older checkpoint resumes exactly as well.
        from tasks.train.checkpoints import CheckpointError

        for found in reversed(complete_checkpoints(self.run_dir)):
            try:
                state = load_train_state(found, model, optimizer, objective)
            except CheckpointError as exc:
                if self.rank == 0:
                    print(f"[train] skipping checkpoint {found.name}: {exc}", flush=True)
                continue
            self.last_path = str(found)
            return state
        return {"step": 0, "history": []}

    def save(
        self,
        step: int,
        model: Any,
        optimizer: Any,
        state: dict[str, Any],
        metrics: dict[str, float],
        objective_state: dict[str, Any] | None = None,
    ) -> None:
        from tasks.train.checkpoints import save_local_checkpoint, write_train_state

        if self.local_mode:
            self.last_path = str(
                save_local_checkpoint(
                    self.run_dir,
                    step,
                    model,
                    optimizer,
                    state,
                    self.p.keep_checkpoints,
                    objective_state,
                )
            )
            return
        import ray.train

        tmp = Path(tempfile.mkdtemp(prefix="clipmill_ckpt_")) if self.rank == 0 else None
        ckpt = None
        if tmp is not None:
            write_train_state(tmp, model, optimizer, state, objective_state)
            ckpt = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"checkpoint_{step:08d}")
        self.last_path = str(self.run_dir / f"checkpoint_{step:08d}")
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _weights_file(value: str) -> str:
    """`pretrained` as open_clip gets it: a weights file path (`data/models/teacher/
    checkpoint.pt`) resolved like every params path (under the data root's cache folder with
    CLIPMILL_DATA_ROOT, fetched from the bucket on a node that lacks it); an open_clip tag or a
    `hf-hub:` id unchanged."""
    if not value or ":" in value or ("/" not in value and not Path(value).suffix):
        return value
    from tasks.io.nodefetch import ensure_local
    from tasks.io.paths import resolve_path

    path = resolve_path(value)
    ensure_local(path)
    return str(path)


def _fetch_inputs(p: TrainParams) -> None:
    """The shards folder and the exclusion list, fetched from the bucket data root where this
    node lacks them (tasks/io/nodefetch.py; nothing happens for a local data root or a glob)."""
    from tasks.io.nodefetch import ensure_local
    from tasks.io.paths import is_uri, resolve_path

    for spec in (p.shards, p.exclude_uids):
        if spec and not is_uri(spec) and not any(c in spec for c in "*?["):
            ensure_local(resolve_path(spec))


def _gather_phases(mine: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """Every rank's step-phase split (StepClock.summary), in rank order, on every rank."""
    if world == 1:
        return [mine]
    import torch.distributed as dist

    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return out


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of TorchTrainer on every worker, and called directly in local mode."""
    import torch

    from tasks.clip import build_model
    from tasks.progress import Progress
    from tasks.train.checkpoints import export_model_folder
    from tasks.train.data import list_shards, load_excluded, worker_batches, worker_samples
    from tasks.train.features import (
        cached_towers,
        encode_all,
        feature_batches,
        heads_model,
        replay,
        total_counts,
    )
    from tasks.train.loop import (
        StepClock,
        StepResult,
        apply_locks,
        make_optimizer,
        model_kwargs_for_loss,
        set_train_mode,
        train_steps,
    )
    from tasks.train.objectives.registry import build_objective
    from tasks.train.tracking import StepLogger, step_logger

    p = TrainParams.model_validate(config["params"])
    run_dir, local_mode = Path(config["run_dir"]), config["local_mode"]
    rank, world = (0, 1) if local_mode else _context()
    if not local_mode:
        torch.set_num_threads(max(1, int(p.cpus_per_worker)))
    device = _device(p, local_mode)
    torch.manual_seed(p.seed)
    built = build_model(
        p.model,
        pretrained=_weights_file(p.pretrained),
        pretrained_image=p.pretrained_image,
        pretrained_text=p.pretrained_text,
        image_size=p.image_size,
        model_kwargs=model_kwargs_for_loss(p.loss),
    )
    model = built.model.to(device)
    model.output_dict = True
    if p.inherit.source:  # TinyCLIP weight inheritance from a larger trained model
        from tasks.train.inherit import inherit_from

        inherit_from(model, p.inherit.source, image=p.inherit.image, text=p.inherit.text)
    apply_locks(model, p)
    if p.grad_checkpointing:
        model.set_grad_checkpointing(True)
    _broadcast_weights(model, world)
    optimizer = make_optimizer(model, p)
    # what each step minimises (contrastive + FLIP, A-CLIP, ...): tasks/train/objectives
    objective = build_objective(p, model, rank, world)
    own = getattr(objective, "parameters", None)  # an objective's own weights (HQ-CLIP tag head)
    if own is not None and own():  # decay on matrices only, as make_optimizer does
        optimizer.add_param_group(
            {"params": [q for q in own() if q.ndim >= 2], "weight_decay": p.weight_decay}
        )
        optimizer.add_param_group({"params": [q for q in own() if q.ndim < 2], "weight_decay": 0.0})
    make_extras = getattr(objective, "make_extras", None)  # what its loss reads besides the pairs
    extras = make_extras(built) if make_extras is not None else []
    ckpt = Checkpointer(p, run_dir, rank, world, local_mode)
    state = ckpt.restore(model, optimizer, objective)
    start, history = int(state["step"]), [list(h) for h in state.get("history", [])]
    if rank == 0 and start:
        print(
            f"[train] resuming {run_dir.name} at step {start}/{p.steps} from {ckpt.last_path}",
            flush=True,
        )
    label = Path(config["output_dir"]).name
    transform = built.preprocess_train if p.train_augment else built.preprocess_val
    towers = cached_towers(model, built, p, config["feature_store"])
    if towers is not None and extras:
        raise ValueError(
            "feature_cache with distill.mode or hqclip.enabled: these objectives read more than "
            "the stored features; set feature_cache: false"
        )
    cache_summary: dict[str, Any] = {"used": False}
    if towers is not None:  # locked towers: encode once, then steps read stored features
        encode_all(
            towers,
            p,
            transform=transform,
            tokenizer=built.tokenizer,
            rank=rank,
            world=world,
            label=label,
        )
        cache_summary = total_counts(towers, world)
        if rank == 0:
            print(f"[train] feature cache: {cache_summary}", flush=True)
    if start == 0 and p.head_init.method != "random":  # data-driven heads before step 0
        from tasks.train.headinit import init_heads

        cache_summary["head_init"] = init_heads(model, towers, p, world)
    _fetch_inputs(p)  # a node without the driver's data cache: from the bucket data root
    shards, exclude = list_shards(p.shards), load_excluded(p.exclude_uids)
    common: dict[str, Any] = dict(
        batch_size=p.batch_size,
        rank=rank,
        world=world,
        seed=p.seed,
        resample=p.resample,
        buffer=p.shuffle_buffer,
        start_step=start,
        exclude=exclude,
        split_shards=p.shard_split,
    )
    batches = (
        feature_batches(
            towers,
            worker_samples(shards, reader=replay(towers), **common),
            p,
            transform=transform,
            tokenizer=built.tokenizer,
        )
        if towers is not None
        else worker_batches(
            shards,
            transform=transform,
            tokenizer=built.tokenizer,
            fields=p.caption_fields,
            augment=p.train_augment,
            extras=extras,
            **common,
        )
    )
    # rank 0 logs to the run, or to local mode's parent process (tasks/train/local.py)
    logger = step_logger(config) if rank == 0 else StepLogger(None, None)
    speeds: list[float] = []
    # "teacher: training 120/300 (40%), 1.7 steps/s, ETA 2 min, loss ...", from rank 0 only
    progress = Progress(
        f"{label}: training",
        total=p.steps,
        unit="steps",
        done=start,
        mode=None if rank == 0 else "off",
    )

    def on_step(r: StepResult) -> None:
        history.append([r.step, r.loss])
        speeds.append(r.samples_per_s)
        values = {
            "loss": r.loss,
            "lr": r.lr,
            "logit_scale": r.logit_scale,
            "samples_per_s": r.samples_per_s,
            **{f"objective/{k}": v for k, v in r.terms.items()},
        }
        if r.step % p.log_every == 0 or r.step + 1 == p.steps:
            logger.log(r.step, values)
        progress.update(1, loss=r.loss, lr=r.lr, samples_per_s=r.samples_per_s)
        done = r.step + 1
        if done % p.checkpoint_every == 0 or done == p.steps:
            logger.flush()
            state = {
                "step": done,
                "samples_seen": done * p.batch_size,
                "history": history,
                "fingerprint": config["fingerprint"],
                "loss": r.loss,
            }
            ckpt.save(
                done,
                model,
                optimizer,
                state,
                {"step": done, "loss": r.loss},
                objective.state_dict(),
            )

    set_train_mode(model, p)
    clock = StepClock()  # each rank's per-phase step split, for the run summary
    train_steps(
        heads_model(model, towers) if towers is not None else model,
        optimizer,
        objective,
        batches,
        p,
        start_step=start,
        rank=rank,
        world=world,
        device=device,
        on_step=on_step,
        last_good=lambda: ckpt.last_path,
        clock=clock,
    )
    phases = _gather_phases(clock.summary(), world)
    progress.close()
    logger.flush()
    if rank == 0:
        model.eval()
        export_model_folder(Path(config["output_dir"]), built, config["params_yaml"], p.steps)
        summary = {
            "start_step": start,
            "steps": p.steps,
            "history": history,
            "world_size": world,
            "samples_per_s": statistics.median(speeds[1:] or speeds) if speeds else 0.0,
            "trainable_params": sum(q.numel() for q in model.parameters() if q.requires_grad),
            "total_params": sum(q.numel() for q in model.parameters()),
            "feature_cache": cache_summary,
            "step_phases": phases,  # per rank: mean wall / CPU ms of each step phase
        }
        from tasks.io.atomic import atomic_write_text

        atomic_write_text(run_dir / "summary.json", json.dumps(summary))
        # on another node than the driver (no shared disk): both go up to the bucket data root
        from tasks.io.nodefetch import publish

        publish(Path(config["output_dir"]), config.get("driver_node"))
        publish(run_dir / "summary.json", config.get("driver_node"))
