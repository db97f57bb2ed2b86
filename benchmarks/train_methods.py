"""Training methods side by side: FLIP and A-CLIP throughput against the plain contrastive step.

One run, one model (default the student, clipmill-small-vit), one set of batches, one batch size:
each configuration builds the same seeded model, optimizer and objective and runs the train
stage's own loop (`tasks.train.loop.train_steps`) over the same batches held in memory (decoded
once from the shards, so reading and JPEG decoding, identical for all, do not dilute the step
cost being compared). Configurations alternate within each round, so a busy neighbour slows all
alike; a configuration's figure is the median samples/s of its timed steps over all rounds (the
first `--warmup` steps of each run are not timed).
Results: benchmarks/results/train_methods.json (keys MERGED into an existing file)
  flip_50    ours = samples/s with 50% patch dropout (FLIP), baseline = without; target >= 1.4
  aclip_50   ours = samples/s of A-CLIP at mask ratio 0.5 (EMA forward of the zoom-out view, two
             masked online views), baseline = the plain contrastive step, no masking; target >= 1.0
  aclip_50_vs_unmasked  ours = A-CLIP at mask ratio 0.5, baseline = A-CLIP at mask ratio 0 (the
             same two online views unmasked, no EMA forward: the release's default); target >= 1.0
Both towers' costs are the stage's own: the text tower runs on the batch's used columns
(tasks/clip/texttrim.py) in every configuration alike.
More keys: add a `KEY: measure function` entry to MEASURES (a function (Setup) -> result entry).
On a loaded shared machine `--clock cpu` (process CPU seconds, one torch thread) gives steadier
ratios than wall time; the committed figure says which clock it used (setup.clock, unit).
Usage: .venv/bin/python benchmarks/train_methods.py [--keys flip_50 aclip_50] [--steps N]
       [--batch B] [--rounds R] [--model NAME] [--shards DIR] [--device cpu|cuda] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results" / "train_methods.json"
DEMO_SHARDS = Path("/tmp/demo16/clipmill/data/curate/shards")


@dataclass
class Setup:
    """What every measure shares: model, batches in memory, batch size, steps, rounds, device."""

    model: str
    shards: Path
    batch: int
    steps: int
    warmup: int
    rounds: int
    device: str
    clock: str = "wall"  # "cpu": process CPU seconds (one torch thread; steady on a shared machine)
    batches: list[Any] = field(default_factory=list)

    def params(self, **over: Any) -> Any:
        from tasks.train.params import TrainParams

        base: dict[str, Any] = dict(
            model=self.model,
            shards=str(self.shards),
            steps=self.warmup + self.steps,
            batch_size=self.batch,
            warmup_steps=1,
            lr=1e-4,
            precision="auto",
        )
        return TrainParams(**{**base, **over})

    def load_batches(self) -> None:
        """Decode `warmup + steps` batches once with the stage's reader and the model's transform."""
        from tasks.clip import build_model
        from tasks.train.data import list_shards, worker_batches

        if self.batches:
            return
        p = self.params()
        built = build_model(p.model)
        it = worker_batches(
            list_shards(p.shards),
            batch_size=p.batch_size,
            rank=0,
            world=1,
            seed=0,
            resample=True,
            buffer=256,
            transform=built.preprocess_val,
            tokenizer=built.tokenizer,
            fields={"txt": 1.0},
            augment=False,
        )
        self.batches = [next(it) for _ in range(p.steps)]

    def samples_per_s(self, **over: Any) -> list[float]:
        """One run of the stage's loop with these params; samples/s of each timed step."""
        import torch

        from tasks.clip import build_model
        from tasks.train.loop import (
            make_optimizer,
            model_kwargs_for_loss,
            set_train_mode,
            train_steps,
        )
        from tasks.train.objectives.registry import build_objective

        self.load_batches()
        p = self.params(**over)
        device = torch.device(self.device)
        torch.manual_seed(0)
        model = build_model(p.model, model_kwargs=model_kwargs_for_loss(p.loss)).model.to(device)
        model.output_dict = True
        optimizer = make_optimizer(model, p)
        objective = build_objective(p, model, 0, 1)
        set_train_mode(model, p)
        speeds: list[float] = []
        clock = time.process_time if self.clock == "cpu" else time.perf_counter
        last = [clock()]

        def on_step(r: Any) -> None:
            """Time between step ends (device synchronised): the whole step, EMA update too."""
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = clock()
            if r.step >= self.warmup:
                speeds.append(p.batch_size / (now - last[0]))
            last[0] = now

        train_steps(
            model,
            optimizer,
            objective,
            iter(self.batches),
            p,
            start_step=0,
            rank=0,
            world=1,
            device=device,
            on_step=on_step,
            last_good=lambda: "",
        )
        return speeds


def entry(ours: float, baseline: float, unit: str, target: float, **extra: Any) -> dict[str, Any]:
    ratio = ours / baseline
    return {
        "ours": round(ours, 2),
        "baseline": round(baseline, 2),
        "ratio": round(ratio, 3),
        "unit": unit,
        "target": target,
        "met": ratio >= target,
        **extra,
    }


def side_by_side(s: Setup, ours: dict[str, Any], target: float, unit: str) -> dict[str, Any]:
    """Alternate ours and the plain step `s.rounds` times; medians of all timed steps."""
    unit = unit if s.clock == "wall" else unit.replace("samples/s", "samples per CPU second")
    ours_sps: list[float] = []
    base_sps: list[float] = []
    for r in range(s.rounds):
        base_sps += s.samples_per_s()
        ours_sps += s.samples_per_s(**ours)
        print(
            f"  round {r}: baseline {statistics.median(base_sps):.1f}  "
            f"ours {statistics.median(ours_sps):.1f} samples/s",
            flush=True,
        )
    return entry(
        statistics.median(ours_sps),
        statistics.median(base_sps),
        unit,
        target,
        params=ours,
        steps_timed=len(ours_sps),
    )


def measure_flip_50(s: Setup) -> dict[str, Any]:
    return side_by_side(
        s, {"patch_dropout": {"ratio": 0.5}}, 1.4, "samples/s (median step), FLIP 50% vs none"
    )


def measure_aclip_50(s: Setup) -> dict[str, Any]:
    return side_by_side(
        s,
        {"aclip": {"enabled": True, "mask_ratio": 0.5}},
        1.0,
        "samples/s (median step), A-CLIP mask 0.5 vs plain contrastive, no masking",
    )


def measure_aclip_50_vs_unmasked(s: Setup) -> dict[str, Any]:
    """A-CLIP at mask 0.5 against A-CLIP at mask 0 (both views unmasked), alternating rounds."""
    ours_cfg = {"aclip": {"enabled": True, "mask_ratio": 0.5}}
    base_cfg = {"aclip": {"enabled": True, "mask_ratio": 0.0}}
    ours_sps: list[float] = []
    base_sps: list[float] = []
    for r in range(s.rounds):
        base_sps += s.samples_per_s(**base_cfg)
        ours_sps += s.samples_per_s(**ours_cfg)
        print(
            f"  round {r}: baseline {statistics.median(base_sps):.1f}  "
            f"ours {statistics.median(ours_sps):.1f} samples/s",
            flush=True,
        )
    unit = "samples/s (median step), A-CLIP mask 0.5 vs A-CLIP mask 0 (same two views, unmasked)"
    if s.clock == "cpu":
        unit = unit.replace("samples/s", "samples per CPU second")
    return entry(
        statistics.median(ours_sps),
        statistics.median(base_sps),
        unit,
        1.0,
        params=ours_cfg,
        baseline_params=base_cfg,
        steps_timed=len(ours_sps),
    )


MEASURES: dict[str, Callable[[Setup], dict[str, Any]]] = {
    "flip_50": measure_flip_50,
    "aclip_50": measure_aclip_50,
    "aclip_50_vs_unmasked": measure_aclip_50_vs_unmasked,
}


def merge(path: Path, machine: str, setup: dict[str, Any], results: dict[str, Any]) -> dict:
    """Keep other keys of an existing results file; replace the measured ones."""
    out = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    out["machine"], out["date"] = machine, datetime.now(UTC).isoformat(timespec="seconds")
    out.setdefault("setup", {}).update(setup)
    out["results"].update(results)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keys", nargs="+", default=list(MEASURES), choices=list(MEASURES))
    ap.add_argument("--model", default="clipmill-small-vit")
    ap.add_argument("--shards", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall: samples per wall second; cpu: per process CPU second (sets 1 torch thread)",
    )
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shards = args.shards
    if shards is None:
        if DEMO_SHARDS.is_dir():
            shards = DEMO_SHARDS
        else:
            from train_overhead import make_shards

            shards = make_shards(Path(tempfile.mkdtemp(prefix="train_methods_")) / "shards")
    s = Setup(
        args.model,
        shards,
        args.batch,
        args.steps,
        args.warmup,
        args.rounds,
        args.device,
        args.clock,
    )
    import torch

    if args.clock == "cpu":
        torch.set_num_threads(1)

    load = os.getloadavg()[0]
    results = {}
    for key in args.keys:
        print(f"{key}:", flush=True)
        results[key] = MEASURES[key](s)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, device "
        f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, load average "
        f"{load:.1f} before / {os.getloadavg()[0]:.1f} after"
    )
    setup = {
        "model": args.model,
        "shards": str(shards),
        "batch": args.batch,
        "timed_steps_per_run": args.steps,
        "warmup_steps_per_run": args.warmup,
        "rounds": args.rounds,
        "device": args.device,
        "clock": args.clock,
    }
    out = merge(args.out, machine, setup, results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
