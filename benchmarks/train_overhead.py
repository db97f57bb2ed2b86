"""Train-stage overhead, measured as whole commands: `clipmill run train` vs a bare open_clip
script (benchmarks/bare_open_clip_train.py) doing the same steps, and 2 Ray Train workers vs 1.

Every side runs as its own process and is timed from its start to its exit, in one run,
alternating rounds so a busy neighbour slows both alike. Ours is the command a user runs:
params/train.yaml with only model, shards, steps, batch_size, checkpoint_every (= steps, one
checkpoint at the end as the bare script saves), exclude_uids (none) and the output folders
changed, in a scratch project root (its own mlflow.db; one untimed warm-up run of each side
first, so both find their imports in the page cache and the MLflow store exists). It includes
process start, imports, Ray (when the params use it), MLflow run, tags, per-step metrics, the
model folder, the loss plot and the model registration.
Results: benchmarks/results/train.json
  bare_open_clip_whole  ours = whole `clipmill run train` seconds, baseline = whole bare script
                        seconds, ratio = baseline / ours (higher is better; target >= 0.95);
                        extra `phases`: wall and CPU seconds of the command's phases from one more
                        run through benchmarks/train_phases.py
  bare_open_clip_median_step  extra: the stage's median-step samples/s vs the bare script's
                        (steady state only; ratio = ours / baseline)
  two_workers           ours = samples/s (median step) with 2 Ray Train workers reading their own
                        shards (shard_split), 1 torch thread each; baseline = 1 worker, 1 thread;
                        ratio = ours / baseline (target >= 1.5); with the whole-command times and
                        the CPU seconds the command's processes used, and two explaining extras:
                        1 worker with 2 threads, and 2 workers in the exact-equivalence mode;
                        per side (its best round) each rank's step split (mean wall and CPU ms
                        of data, forward_backward with the feature gather, allreduce with the
                        loss, optimizer, on_step: the run summary's `step_phases`), the ms per
                        step each rank waited (wall minus CPU) and the command's CPU seconds by
                        process (driver, Ray Train workers, Ray's actors, raylet...);
                        `cpu_bound_ratio`: one worker's CPU ms per step over the busier of the
                        two workers' (what the ratio would be with no waiting);
                        `allreduce_per_step`: ms per gradient all-reduce between two gloo ranks on
                        the model's real gradient, the previous dense flat buffer vs
                        tasks/train/loop.py's average_gradients (token table by touched rows)
  two_processes_ceiling what the hardware gives two workers at best: ours = samples/s of two
                        independent bare open_clip processes (no Ray, no communication), 1 torch
                        thread each, each on every second shard at half the batch (the work one
                        of two Ray Train workers does per step), started together; baseline = one
                        such process on all shards at the whole batch; ratio = ours / baseline.
                        Median step of each, the buffer-filling first step left out; extras:
                        one process alone at half the batch, which splits the ratio into
                        half_batch_factor x sharing_factor (x 2); with the
                        CPU seconds per step of each loop, which rise when the two share the
                        machine's cores (caches, memory bandwidth, SMT siblings under the
                        hypervisor); `cpu_bound_ratio` = 2 x CPU per sample alone / CPU per
                        sample together, the ratio with a whole core per process, which time
                        slicing on a loaded machine does not inflate as it does the wall ratio
Usage: .venv/bin/python benchmarks/train_overhead.py [--shards DIR] [--steps N] [--batch B]
       [--only whole|workers|ceiling] [--before OTHER_CHECKOUT]  (before/after of a change, timed in the same rounds)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BARE = ROOT / "benchmarks" / "bare_open_clip_train.py"
PHASES = ROOT / "benchmarks" / "train_phases.py"
ENV = {
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def make_shards(folder: Path, n_shards: int = 4, per_shard: int = 256, size: int = 160) -> Path:
    """Synthetic shards in the crawl/curate layout (uid.jpg / uid.txt) when no real ones are given."""
    from PIL import Image, ImageDraw

    sys.path.insert(0, str(ROOT))
    from tasks.io.wds import write_tar

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for s in range(n_shards):
        samples = []
        for i in range(per_shard):
            colour = tuple(rng.randrange(256) for _ in range(3))
            img = Image.new("RGB", (size, size), (10, 10, 10))
            ImageDraw.Draw(img).ellipse((8, 8, size - 8, size - 8), fill=colour)
            buf = io.BytesIO()
            img.save(buf, format="JPEG")
            samples.append(
                (f"{s:03d}{i:06d}", {"jpg": buf.getvalue(), "txt": f"a disc of colour {colour}"})
            )
        write_tar(folder / f"{s:05d}.tar", samples)
    return folder


class CpuMeter:
    """CPU seconds used by a process and all its descendants (Ray's raylet, GCS, workers...),
    sampled every 0.2 s: the last reading of each process counts, so short-lived ones are seen
    up to their last sample."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.seen: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        import psutil

        while not self.done.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    self.seen[proc.pid] = t.user + t.system
                    kind = process_kind(proc)  # each time: Ray renames its workers
                    if kind != "other" or proc.pid not in self.names:
                        self.names[proc.pid] = kind
                except psutil.Error:
                    pass
            self.done.wait(0.2)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return sum(self.seen.values())

    def by_kind(self) -> dict[str, float]:
        """CPU seconds summed by kind of process (driver, Ray Train worker, raylet, ...)."""
        out: dict[str, float] = {}
        for pid, cpu in self.seen.items():
            kind = self.names.get(pid, "other")
            out[kind] = round(out.get(kind, 0.0) + cpu, 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def process_kind(proc: Any) -> str:
    """A short name for a process of the command's tree: its Ray role or its program."""
    try:
        cmd = proc.cmdline()
    except Exception:  # gone, or a zombie: its last name stands (CpuMeter)
        return "other"
    text = " ".join(cmd)
    if text.startswith("ray::"):  # a Ray worker's title: ray::RayTrainWorker.train_fn, ray::IDLE
        return text.split()[0].split(".")[0]
    if "default_worker.py" in text:
        return "ray_worker_starting"
    if "tasks.cli" in text or "train_phases" in text:
        return "driver"
    for key in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if key in text:
            return key
    return Path(cmd[0]).name if cmd else "other"


def timed(
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    log: Path,
    kinds: dict[str, float] | None = None,
) -> tuple[float, float, str]:
    """(wall seconds from start to exit, CPU seconds of the process tree, stdout); raises with
    the log's tail when the command fails. `kinds` gets the CPU seconds by kind of process."""
    with open(log, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err, text=True
        )
        meter = CpuMeter(proc.pid)
        out, _ = proc.communicate()
        wall = time.perf_counter() - started
        cpu = meter.stop()
        if kinds is not None:
            kinds.update(meter.by_kind())
    if proc.returncode:
        raise RuntimeError(
            f"{' '.join(cmd[:6])}... failed ({proc.returncode}):\n{log.read_text()[-3000:]}"
        )
    return wall, cpu, out


class Bench:
    """A scratch project root (params, dvc.yaml, its own MLflow store) and the two commands."""

    def __init__(self, shards: Path, model: str, steps: int, batch: int, work: Path) -> None:
        self.shards, self.model, self.steps, self.batch, self.work = (
            shards,
            model,
            steps,
            batch,
            work,
        )
        self.root = work / "project"
        self.root.mkdir(parents=True)
        shutil.copytree(ROOT / "params", self.root / "params")
        shutil.copy(ROOT / "dvc.yaml", self.root / "dvc.yaml")
        self.env = {
            **os.environ,
            **ENV,
            "PYTHONPATH": str(ROOT),
            "CLIPMILL_ROOT": str(self.root),
            "CLIPMILL_RAY_NUM_CPUS": str(os.cpu_count() or 2),
        }
        for key in ("MLFLOW_TRACKING_URI", "CLIPMILL_MLFLOW_TRACKING_URI", "RAY_ADDRESS"):
            self.env.pop(key, None)
        import yaml

        self.params = yaml.safe_load((ROOT / "params" / "train.yaml").read_text())
        self.n = 0

    def ours(
        self,
        steps: int | None = None,
        code_root: Path | None = None,
        phases: bool = False,
        **over: Any,
    ) -> tuple[float, float, dict[str, Any]]:
        """The whole `clipmill run train` command (the console script's entry: tasks.cli);
        `code_root`: another checkout's code (a before/after comparison in the same rounds);
        `phases`: the same command through benchmarks/train_phases.py, its phase times returned
        in the metrics under `_phases`."""
        steps = steps or self.steps
        self.n += 1
        tag = f"r{self.n}"
        sets = {
            "model": self.model,
            "shards": str(self.shards),
            "exclude_uids": "null",
            "steps": steps,
            "batch_size": self.batch,
            "checkpoint_every": steps,
            "run_root": f"data/train_runs/{tag}",
            "output_dir": f"data/models/{tag}",
            **over,
        }
        entry = [str(PHASES)] if phases else ["-m", "tasks.cli"]
        cmd = [sys.executable, *entry, "run", "train"]
        for k, v in sets.items():
            cmd += ["-s", f"{k}={v}"]
        env = {**self.env, "PYTHONPATH": str(code_root)} if code_root else self.env
        log = self.work / f"ours-{tag}.log"
        kinds: dict[str, float] = {}
        wall, cpu, out = timed(cmd, env, self.root, log, kinds)
        metrics = json.loads(out[out.rfind("\n{\n") + 1 :])  # the metrics the CLI prints last
        metrics["_cpu_by_kind"] = kinds
        summaries = sorted((self.root / "data" / "train_runs" / tag).glob("*/summary.json"))
        if summaries:  # the per-rank step split the worker wrote (tasks/train/loop.py StepClock)
            metrics["_step_phases"] = json.loads(summaries[-1].read_text()).get("step_phases")
        if phases:
            metrics["_phases"] = json.loads(log.read_text().rsplit("PHASES ", 1)[1])
        return wall, cpu, metrics

    def bare(self, steps: int | None = None) -> tuple[float, float, float]:
        """The whole bare open_clip script; (wall s, CPU s, median-step samples/s from its log)."""
        steps = steps or self.steps
        self.n += 1
        cmd = [
            sys.executable,
            str(BARE),
            "--shards",
            str(self.shards),
            "--out",
            str(self.work / f"bare-{self.n}.pt"),
            "--model",
            self.model,
            "--steps",
            str(steps),
            "--batch",
            str(self.batch),
            "--lr",
            str(self.params["lr"]),
            "--warmup",
            str(self.params["warmup_steps"]),
            "--shuffle",
            str(self.params["shuffle_buffer"]),
            "--seed",
            str(self.params["seed"]),
        ]
        if self.params["train_augment"]:
            cmd.append("--augment")
        env = {**os.environ, **ENV}
        wall, cpu, out = timed(cmd, env, self.work, self.work / f"bare-{self.n}.log")
        seconds = float(out.rsplit("steps in ", 1)[1].split()[0])
        return wall, cpu, steps * self.batch / seconds


def entry(
    ours: float, baseline: float, ratio: float, unit: str, target: float, **extra: Any
) -> dict:
    return {
        "ours": round(ours, 2),
        "baseline": round(baseline, 2),
        "ratio": round(ratio, 3),
        "unit": unit,
        "target": target,
        "met": ratio >= target,
        **extra,
    }


def whole_command(b: Bench, rounds: int, before: Path | None = None) -> dict[str, Any]:
    b.bare(steps=3), b.ours(steps=3)  # warm-up, untimed: page cache, mlflow.db
    if before is not None:
        b.ours(steps=3, code_root=before)
    ours, bare, ours_cpu, bare_cpu, ours_sps, bare_sps, prior = [], [], [], [], [], [], []
    for r in range(rounds):
        wall, cpu, sps = b.bare()
        bare.append(wall), bare_cpu.append(cpu), bare_sps.append(sps)
        wall, cpu, metrics = b.ours()
        ours.append(wall), ours_cpu.append(cpu), ours_sps.append(metrics["samples_per_s"])
        if before is not None:  # the same command on the other checkout, in the same round
            prior.append(b.ours(code_root=before)[0])
        print(
            f"round {r}: bare {bare[-1]:.1f} s  ours {ours[-1]:.1f} s"
            + (f"  before {prior[-1]:.1f} s" if prior else "")
            + " (whole commands)",
            flush=True,
        )
    best_ours, best_bare = min(ours), min(bare)
    # where ours spends its time: one more run of the same command with phase marks (not timed
    # for the ratio); CPU seconds are the robust part on a shared machine
    phases = b.ours(phases=True)[2]["_phases"]
    extra: dict[str, Any] = {"phases": phases}
    if prior:
        extra |= {
            "before_code": str(before),
            "rounds_before_s": [round(x, 1) for x in prior],
            "ratio_before": round(best_bare / min(prior), 3),
        }
    return {
        "bare_open_clip_whole": entry(
            best_ours,
            best_bare,
            best_bare / best_ours,
            "seconds, whole command (start to exit), best of rounds; ratio = baseline / ours",
            0.95,
            rounds_ours_s=[round(x, 1) for x in ours],
            rounds_baseline_s=[round(x, 1) for x in bare],
            cpu_seconds_ours=[round(x, 1) for x in ours_cpu],
            cpu_seconds_baseline=[round(x, 1) for x in bare_cpu],
            **extra,
        ),
        "bare_open_clip_median_step": entry(
            max(ours_sps),
            max(bare_sps),
            max(ours_sps) / max(bare_sps),
            "samples/s; extra, steady state only (ours: the stage's median step; baseline: the "
            "bare script's mean over its loop, data included)",
            0.97,
        ),
    }


def two_workers(b: Bench, rounds: int, skip_equivalent: bool = False) -> dict[str, Any]:
    sides = {
        "one": {"num_workers": 1, "cpus_per_worker": 1},
        "two": {"num_workers": 2, "cpus_per_worker": 1, "shard_split": "true"},
        "one_2threads": {"num_workers": 1, "cpus_per_worker": 2},
        "two_equivalent": {"num_workers": 2, "cpus_per_worker": 1},
    }
    if skip_equivalent:
        del sides["two_equivalent"]
    got: dict[str, list[tuple[float, float, float]]] = {k: [] for k in sides}
    inside: dict[str, list[dict[str, Any]]] = {k: [] for k in sides}  # phases, CPU by process
    for r in range(rounds):
        for name, over in sides.items():
            wall, cpu, metrics = b.ours(**over)
            got[name].append((metrics["samples_per_s"], wall, cpu))
            inside[name].append(
                {
                    "step_phases": metrics.get("_step_phases"),
                    "cpu_seconds_by_process": metrics.get("_cpu_by_kind"),
                }
            )
        print(f"round {r}: " + "  ".join(f"{k} {v[-1][0]:.1f}" for k, v in got.items()), flush=True)

    def best(name: str) -> float:
        return max(s for s, _, _ in got[name])

    cores = os.cpu_count() or 1
    detail = {
        name: {
            "samples_per_s": [round(s, 1) for s, _, _ in runs],
            "whole_command_s": [round(w, 1) for _, w, _ in runs],
            "cpu_seconds": [round(c, 1) for _, _, c in runs],
            "cpu_utilisation_of_all_cores": [round(c / (w * cores), 2) for _, w, c in runs],
            **step_split(inside[name][max(range(len(runs)), key=lambda i: runs[i][0])]),
        }
        for name, runs in got.items()
    }
    one_cpu = detail["one"].get("cpu_ms_per_step_busiest_rank")
    two_cpu = detail["two"].get("cpu_ms_per_step_busiest_rank")
    return {
        "two_workers": entry(
            best("two"),
            best("one"),
            best("two") / best("one"),
            "samples/s (median step), best of rounds; 2 workers x 1 thread, own shards vs 1 "
            "worker x 1 thread",
            1.5,
            one_worker_two_threads=round(best("one_2threads"), 2),
            # the ratio if every worker had its core to itself and never waited: the one
            # worker's CPU per step over the busier of the two workers' (both steps hold the
            # same global batch); the gap to the ratio is waiting (lockstep, Ray's processes)
            cpu_bound_ratio=round(one_cpu / two_cpu, 3) if one_cpu and two_cpu else None,
            allreduce_per_step=allreduce_cost(b),
            two_workers_equivalence_mode=round(best("two_equivalent"), 2)
            if got.get("two_equivalent")
            else None,
            runs=detail,
        )
    }


def step_split(run: dict[str, Any]) -> dict[str, Any]:
    """One run's inside view: per rank the mean wall and CPU ms of each step phase
    (tasks/train/loop.py StepClock), the ms per step each rank waited (wall minus CPU, summed
    over the phases: collectives, data, or a core taken by another process), the busiest rank's
    CPU ms per step, and the command's CPU seconds by process (driver, Ray Train workers,
    raylet, Ray's actors...)."""
    phases = run.get("step_phases") or []
    out: dict[str, Any] = {"cpu_seconds_by_process": run.get("cpu_seconds_by_process")}
    if not phases:
        return out
    out["step_phases_by_rank"] = phases
    out["wait_ms_per_step_by_rank"] = [
        round(sum(ph["wall_ms"].values()) - sum(ph["cpu_ms"].values()), 1) for ph in phases
    ]
    out["cpu_ms_per_step_busiest_rank"] = round(max(sum(ph["cpu_ms"].values()) for ph in phases), 1)
    return out


ALLREDUCE_SCRIPT = """
import statistics, sys, time
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tasks.clip import build_model
from tasks.train.loop import average_gradients

OUT, MODEL, BATCH, REPS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


def dense(model, world):  # the previous average_gradients: every gradient in one flat buffer
    grads = [q.grad for q in model.parameters() if q.requires_grad and q.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def rank_main(rank):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{OUT}/store", rank=rank, world_size=2)
    torch.manual_seed(0)
    built = build_model(MODEL)
    model = built.model
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    words = "cat dog red blue disc emoji icon tux paint clip art manual photo of a the".split()
    g = torch.Generator().manual_seed(rank)
    captions = [
        " ".join(words[int(i)] for i in torch.randint(len(words), (8,), generator=g))
        for _ in range(BATCH)
    ]
    out = model(torch.randn(BATCH, 3, size, size), built.tokenizer(captions))
    (out[0] @ out[1].T).logsumexp(1).mean().backward()
    times = {"dense": [], "touched_rows": [], "dense_cpu": [], "touched_rows_cpu": []}
    for _ in range(REPS):
        for name, fn in (("dense", dense), ("touched_rows", average_gradients)):
            dist.barrier()
            t, c = time.perf_counter(), time.process_time()
            fn(model, 2)
            times[name].append(time.perf_counter() - t)
            times[name + "_cpu"].append(time.process_time() - c)
    with open(f"{OUT}/allreduce{rank}.txt", "w") as fh:
        for name, ts in times.items():
            fh.write(f"{name} {statistics.median(ts)}\\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.start_processes(rank_main, nprocs=2, start_method="fork")
"""


def allreduce_cost(b: Bench, reps: int = 15) -> dict[str, float]:
    """Milliseconds per call (median) of the gradient all-reduce between two gloo ranks (1 thread
    each) on the model's real gradient (a backward over half the batch each): the previous dense
    flat-buffer version vs average_gradients (the token table by touched rows); wall on rank 0
    and the CPU of both ranks' processes."""
    folder = Path(tempfile.mkdtemp(prefix="allreduce_", dir=b.work))
    script = folder / "ranks.py"
    script.write_text(ALLREDUCE_SCRIPT)
    env = {**os.environ, **ENV, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(script), str(folder), b.model, str(b.batch // 2), str(reps)]
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, capture_output=True, timeout=600)
    out: dict[str, float] = {}
    for rank in (0, 1):  # wall: rank 0's; CPU (every thread of the rank's process): both summed
        for line in (folder / f"allreduce{rank}.txt").read_text().splitlines():
            name, seconds = line.split()
            if name.endswith("_cpu"):
                out[f"{name}_ms_both_ranks"] = round(
                    out.get(f"{name}_ms_both_ranks", 0.0) + float(seconds) * 1000, 2
                )
            elif rank == 0:
                out[f"{name}_ms"] = round(float(seconds) * 1000, 2)
    return out


def ceiling_cmd(b: Bench, batch: int, part: str) -> list[str]:
    """The bare script as one of the ceiling's processes: 1 thread, waits for "go" on stdin."""
    b.n += 1
    cmd = [
        sys.executable,
        str(BARE),
        "--shards",
        str(b.shards),
        "--out",
        str(b.work / f"ceiling-{b.n}.pt"),
        "--model",
        b.model,
        "--steps",
        str(b.steps),
        "--batch",
        str(batch),
        "--lr",
        str(b.params["lr"]),
        "--warmup",
        str(b.params["warmup_steps"]),
        "--shuffle",
        str(b.params["shuffle_buffer"]),
        "--seed",
        str(b.params["seed"]),
        "--threads",
        "1",
        "--ready-go",
    ]
    if part:
        cmd += ["--part", part]
    if b.params["train_augment"]:
        cmd.append("--augment")
    return cmd


def run_together(cmds: list[list[str]], work: Path) -> list[tuple[float, float]]:
    """Start every command, wait until each has set up (READY), release them at once; per
    process (median step seconds, CPU seconds per step of its loop, buffer fill included)."""
    env = {**os.environ, **ENV}
    procs = []
    for i, cmd in enumerate(cmds):
        with open(work / f"ceiling-{i}.log", "w") as err:
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=work,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            )
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"ceiling process failed before its loop: {line!r}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    out = []
    for proc in procs:
        text, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"ceiling process failed ({proc.returncode}): {text[-2000:]}")
        median = float(text.rsplit("median step ", 1)[1].split()[0])
        cpu = float(text.rsplit("loop cpu ", 1)[1].split()[0])
        steps = int(text.rsplit("trained ", 1)[1].split()[0])
        out.append((median, cpu / steps))
    return out


def two_processes_ceiling(b: Bench, rounds: int) -> dict[str, Any]:
    """Two independent 1-thread processes vs one: the most a second worker can add here.

    A third side, one process alone at half the batch, splits the ratio in two factors: the
    smaller batch (each worker's step still pays a whole optimizer step and per-step costs) and
    the sharing of the machine when two processes run at once."""
    half = b.batch // 2
    runs: dict[str, list[float]] = {k: [] for k in ("one", "one_half", "two", "one_cpu", "two_cpu")}
    for r in range(rounds):
        ((t1, c1),) = run_together([ceiling_cmd(b, b.batch, "")], b.work)
        ((th, _),) = run_together([ceiling_cmd(b, half, "0/2")], b.work)
        pair = run_together([ceiling_cmd(b, half, "0/2"), ceiling_cmd(b, half, "1/2")], b.work)
        runs["one"].append(b.batch / t1)
        runs["one_half"].append(half / th)
        runs["two"].append(sum(half / t for t, _ in pair))
        runs["one_cpu"].append(c1)
        runs["two_cpu"].append(sum(c for _, c in pair))
        print(
            f"round {r}: one process {runs['one'][-1]:.1f}, one at half batch "
            f"{runs['one_half'][-1]:.1f}, two processes {runs['two'][-1]:.1f} samples/s",
            flush=True,
        )
    one, one_half, two = max(runs["one"]), max(runs["one_half"]), max(runs["two"])
    # 2 x CPU per sample alone / CPU per sample together: the ratio if each process had a whole
    # core; unlike the wall ratio it does not favour two processes on a loaded machine
    cpu_bound = 2 * min(runs["one_cpu"]) / min(runs["two_cpu"])
    return {
        "two_processes_ceiling": entry(
            two,
            one,
            two / one,
            "samples/s (median step), best of rounds; 2 independent bare open_clip processes x 1 "
            "thread, own shards, half batch each, started together vs 1 process x 1 thread, "
            "whole batch",
            1.5,
            one_process_half_batch=round(one_half, 2),
            half_batch_factor=round(one_half / one, 3),
            sharing_factor=round(two / (2 * one_half), 3),
            cpu_bound_ratio=round(cpu_bound, 3),
            rounds_one=[round(x, 1) for x in runs["one"]],
            rounds_one_half_batch=[round(x, 1) for x in runs["one_half"]],
            rounds_two=[round(x, 1) for x in runs["two"]],
            cpu_seconds_per_step_one=[round(x, 4) for x in runs["one_cpu"]],
            cpu_seconds_per_step_two_summed=[round(x, 4) for x in runs["two_cpu"]],
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="", help="folder of *.tar shards (default: synthetic)")
    parser.add_argument("--model", default="clipmill-tiny-vit")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating repeats; best kept")
    parser.add_argument(
        "--worker-steps", type=int, default=0, help="steps of the worker runs (0 = --steps)"
    )
    parser.add_argument(
        "--skip-equivalent", action="store_true", help="leave out 2 workers in equivalence mode"
    )
    parser.add_argument(
        "--only", choices=["whole", "workers", "ceiling", "allreduce"], default=None
    )
    parser.add_argument(
        "--before",
        default="",
        help="another checkout of this repo: its `clipmill run train` is timed in the same rounds",
    )
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipmill_train_bench_"))
    shards = Path(args.shards).resolve() if args.shards else make_shards(work / "shards")
    b = Bench(shards, args.model, args.steps, args.batch, work)
    path = Path(args.out)
    previous = json.loads(path.read_text()).get("results", {}) if path.exists() else {}
    results: dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    if args.only in (None, "whole"):
        before = Path(args.before).resolve() if args.before else None
        results.update(whole_command(b, args.rounds, before))
    if args.only in (None, "workers"):
        b.steps = args.worker_steps or args.steps
        results.update(two_workers(b, args.rounds, args.skip_equivalent))
    if args.only == "allreduce":
        print(json.dumps(allreduce_cost(b)))
        shutil.rmtree(work, ignore_errors=True)
        return
    if args.only in (None, "workers", "ceiling"):
        b.steps = args.worker_steps or args.steps
        results.update(two_processes_ceiling(b, args.rounds))
    import torch

    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (shared machine)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "model": args.model,
            "steps": args.steps,
            "worker_steps": args.worker_steps or args.steps,
            "batch": args.batch,
            "rounds": args.rounds,
            "shards": args.shards or "synthetic 4 x 256 samples, 160 px",
            "params": "params/train.yaml with model, shards, steps, batch_size, checkpoint_every, "
            "exclude_uids and output folders overridden",
        },
        "note": args.note,
        "results": {
            **{k: v for k, v in previous.items() if k not in ("bare_open_clip",)},
            **results,
        },
    }
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
