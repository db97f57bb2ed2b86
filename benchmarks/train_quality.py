"""Quality of the train methods at equal steps (issue 14's table): the evaluate suite's average.

Every row trains the same tiny student (`--student`, default clipmill-tiny-vit, batch 32) for the
same number of steps (`--steps`) with the real command (`clipmill run train`) in a project root
holding the demo's data, once per seed; then ONE `clipmill run evaluate` per seed scores all that
seed's students (heavy extras off: probe, perception, robustness, membership), and the row's value
is the scoreboard's "average" row (unweighted mean over the eval sets). Rows:

  alone             the student trained alone (caption_fields as params/train.yaml: txt 0.8,
                    recaption 0.2)
  alone_no_recap    the same with the recaption field off (caption_fields {txt: 1.0})
  online_distill    online pure KD from the LiT teacher (data/models/teacher), w0 0, w1 1
  offline_distill   the same KD from the reinforced dataset (data/reinforce: stored teacher
                    embeddings, each stored augmentation rebuilt)
  flip_50           FLIP patch dropout 0.5
  aclip_50          A-CLIP attentive masking 0.5 (EMA model, two masked online views)
  hqclip            HQ-CLIP hard negatives + tag loss from the recaption fields (recaption on)
  inherit_text      text tower inherited (TinyCLIP manual) from the demo's trained student
                    (data/models/demo-student, clipmill-small-vit, 150 steps on the same shards);
                    the image tower cannot be inherited into the tiny ViT (patch 12 vs 8: a
                    leading slice of the kernel would be the wrong pixels), so it starts random

Writes benchmarks/results/train_quality.json: {"machine", "date", "setup", "table": {row:
{"overrides", "per_seed", "mean", "stdev"}}, "results": {}} (no targets: this is the note's
table, not a benchmark key). Seeds run one after another (all rows of a seed, then its
evaluate), the JSON is rewritten after each seed, and `--reuse` keeps scoreboards already in
the root, so an interrupted run resumes.
Root set-up (read-only demo data symlinked): data/curate, data/decontaminate, data/sample,
data/reinforce, data/models/teacher, data/models/demo-student (-> the demo's data/models/train).
Online distillation runs the teacher every step (on a loaded 2-core machine ~10x a row alone):
`--online-from-distill-benchmark` with online_distill left out of `--rows` fills that row from
train_methods.json's `distilled_vs_alone` (benchmarks/train_distill.py, the same protocol;
refused when its steps, seeds, student or KD overrides differ) and says so in the row.
Usage: nice -n 5 .venv/bin/python benchmarks/train_quality.py --root /tmp/clone [--steps 40]
       [--seeds 0 1 2] [--rows alone flip_50 ...] [--reuse] [--online-from-distill-benchmark]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_distill import EVAL_OFF, clipmill  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_quality.json"
KD = ["distill.w0=0.0", "distill.w1=1.0"]
ROWS: dict[str, list[str]] = {
    "alone": [],
    "alone_no_recap": ["caption_fields={txt: 1.0}"],
    "online_distill": ["distill.mode=online", *KD],
    "offline_distill": ["distill.mode=offline", "distill.reinforced_dir=data/reinforce", *KD],
    "flip_50": ["patch_dropout.ratio=0.5"],
    "aclip_50": ["aclip.enabled=true", "aclip.mask_ratio=0.5"],
    "hqclip": ["hqclip.enabled=true"],
    "inherit_text": ["inherit.source=data/models/demo-student", "inherit.image=false"],
}


def averages(board: Path) -> dict[str, float]:
    """Model name -> its scoreboard "average" row."""
    cols = json.loads(board.read_text())
    return {
        m: float(v)
        for m, d, v in zip(cols["model"], cols["dataset"], cols["value"], strict=True)
        if d == "average"
    }


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, float]:
    """Train every row's student for this seed, evaluate them together; row -> average."""
    board = args.root / f"data/evaluate/quality-s{seed}/scoreboard.json"
    names = {row: f"q-{row}-s{seed}" for row in args.rows}
    if args.table_only:  # whatever this seed's evaluates scored, nothing trained or evaluated
        have = {}  # quality-s<seed> and any later quality-s<seed>-<part> (a row evaluated apart)
        for part in sorted(args.root.glob(f"data/evaluate/quality-s{seed}*/scoreboard.json")):
            have.update(averages(part))
        return {row: have[n] for row, n in names.items() if n in have}
    if args.reuse and board.is_file():
        have = averages(board)
        if all(n in have for n in names.values()):
            return {row: have[n] for row, n in names.items()}
    common = [
        f"seed={seed}",
        f"steps={args.steps}",
        f"warmup_steps={max(1, args.steps // 10)}",
        f"checkpoint_every={args.steps}",
        "registered_model_name=",
        *args.student.split(),
    ]
    logs = args.root / "runs"
    logs.mkdir(exist_ok=True)
    for row, name in names.items():
        out = args.root / "data/models" / name
        if args.no_train or (args.reuse and (out / "model.safetensors").is_file()):
            continue
        t0 = time.time()
        try:
            clipmill(
                args.root,
                "train",
                [*common, f"output_dir=data/models/{name}", f"run_root=data/train_runs/{name}"]
                + ROWS[row],
                logs / f"{name}.train.log",
            )
        except RuntimeError as exc:  # one broken row must not lose the others; it is reported
            print(f"seed {seed} {row}: FAILED {exc}", file=sys.stderr)
            continue
        print(f"seed {seed} {row}: trained in {time.time() - t0:.0f} s", file=sys.stderr)
    trained = [
        n for n in names.values() if (args.root / "data/models" / n / "model.safetensors").is_file()
    ]
    models = "[" + ", ".join(f"data/models/{n}" for n in trained) + "]"
    clipmill(
        args.root,
        "evaluate",
        [f"models={models}", f"output_dir=data/evaluate/quality-s{seed}", *EVAL_OFF],
        logs / f"quality-s{seed}.evaluate.log",
    )
    have = averages(board)
    return {row: have[n] for row, n in names.items() if n in have}


def table(per_seed: dict[int, dict[str, float]], rows: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in rows:
        seeds = [s for s in sorted(per_seed) if row in per_seed[s]]
        vals = [per_seed[s][row] for s in seeds]
        if not vals:
            out[row] = {
                "overrides": ROWS[row],
                "error": "not measured: no student of this row was trained and scored",
            }
            continue
        out[row] = {
            "overrides": ROWS[row],
            "seeds": seeds,
            "per_seed": vals,
            "mean": statistics.mean(vals),
            "stdev": statistics.pstdev(vals),
        }
    return out


def online_from_distill_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """The online_distill row taken from benchmarks/results/train_methods.json's
    `distilled_vs_alone` (benchmarks/train_distill.py: the same student, steps, batch, seeds and
    KD overrides as this row), for machines where running the teacher every step does not fit the
    time; refused when that measurement's protocol differs from this run's."""
    entry = json.loads((ROOT / "benchmarks/results/train_methods.json").read_text())["results"][
        "distilled_vs_alone"
    ]
    same = (
        entry["steps"] == args.steps
        and entry["seeds"] == args.seeds
        and entry["student"] == args.student
        and entry["online"].split() == KD
    )
    if not same:
        raise ValueError(
            f"--online-from-distill-benchmark: train_methods.json's distilled_vs_alone used "
            f"steps {entry['steps']}, seeds {entry['seeds']}, student {entry['student']!r}, "
            f"{entry['online']!r}; this run: steps {args.steps}, seeds {args.seeds}, "
            f"student {args.student!r}, {' '.join(KD)!r}"
        )
    vals = list(entry["ours_per_seed"])
    return {
        "overrides": ROWS["online_distill"],
        "per_seed": vals,
        "mean": statistics.mean(vals),
        "stdev": statistics.pstdev(vals),
        "source": "benchmarks/results/train_methods.json distilled_vs_alone (same protocol, "
        "an earlier run of benchmarks/train_distill.py)",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="project root with the demo's data")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--steps", type=int, default=40, help="training steps of every student")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--student", default="model=clipmill-tiny-vit batch_size=32")
    ap.add_argument("--reuse", action="store_true", help="keep models / scoreboards in --root")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument(
        "--no-train",
        action="store_true",
        help="evaluate the students already in --root's data/models, train none",
    )
    ap.add_argument(
        "--table-only",
        action="store_true",
        help="only tabulate the scoreboards already in --root (rows a seed lacks are left out)",
    )
    ap.add_argument(
        "--online-from-distill-benchmark",
        action="store_true",
        help="fill the online_distill row from train_methods.json's distilled_vs_alone "
        "(same protocol) instead of training it; leave online_distill out of --rows",
    )
    args = ap.parse_args()
    args.root = args.root.resolve()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # same for every row; less spinning when loaded
    t0, cpu0 = time.time(), os.times()
    per_seed: dict[int, dict[str, float]] = {}
    for seed in args.seeds:
        per_seed[seed] = run_seed(args, seed)
        cpu = os.times()
        data: dict[str, Any] = {
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {platform.machine()})",
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "setup": {
                "student": args.student,
                "steps": args.steps,
                "seeds_done": sorted(per_seed),
                "metric": "evaluate suite average (scoreboard 'average' row), mean and "
                "population stdev over seeds",
                "wall_s": round(time.time() - t0),
                "cpu_s_children": round(
                    cpu.children_user
                    + cpu.children_system
                    - cpu0.children_user
                    - cpu0.children_system
                ),
                "load_average": os.getloadavg()[0],
            },
            "table": table(per_seed, args.rows),
            "results": {},
        }
        if args.online_from_distill_benchmark and "online_distill" not in args.rows:
            data["table"]["online_distill"] = online_from_distill_benchmark(args)
        if args.table_only:  # nothing ran here: no time or load to report
            for key in ("wall_s", "cpu_s_children", "load_average"):
                del data["setup"][key]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(json.dumps(data["table"], indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
