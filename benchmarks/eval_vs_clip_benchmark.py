"""clipmill `evaluate` vs CLIP_benchmark 1.6.2 on the same open_clip checkpoint and the same local sets.

Both tools run as the separate command-line processes users run: `clip_benchmark eval` from its
own venv (.venv-peers/clip_benchmark, created here from PyPI when missing) and `clipmill run
evaluate`. Both read the same CLIP_benchmark-layout webdataset folders (the sample stage's
data/sample/eval when present, else sets built here from scikit-learn's real 8x8 digits) and
the same model folder (`--model local-dir:<folder>`, open_clip's own local-folder schema).
Both run in fp32 (`--no_amp`). Results: benchmarks/results/evaluate.json with
  max_abs_diff_pp       largest |clipmill - CLIP_benchmark| over every shared metric, in pp
  clip_benchmark_speed  images evaluated per second of wall time, whole command, both tools
Usage: .venv/bin/python benchmarks/eval_vs_clip_benchmark.py [--sets DIR] [--model DIR]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEER = ROOT / ".venv-peers" / "clip_benchmark"
PEER_PINS = [
    "clip-benchmark==1.6.2",
    "torch==2.14.1",
    "torchvision==0.29.1",
    "requests==2.34.2",
    "numpy==2.3.5",
]
# clip-benchmark 1.6.2 imports requests without declaring it, and its accuracy() calls float() on
# a 1-element array, which numpy >= 2.4 refuses: both pinned here so that its CLI runs at all.
WORK = ROOT / "benchmarks" / ".work" / "evaluate"
RESULT = ROOT / "benchmarks" / "results" / "evaluate.json"
BENCH_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
RECALL_K = [1, 5, 10]
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}


def ensure_peer() -> Path:
    """The peer's own venv (its pins would downgrade pandas and webdataset in ours)."""
    exe = PEER / "bin" / "clip_benchmark"
    if exe.exists():
        return exe
    print(f"creating {PEER} (clip-benchmark from PyPI) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER)], check=True)
    subprocess.run([str(PEER / "bin" / "pip"), "install", "-qq", *PEER_PINS], check=True)
    return exe


def _png(arr) -> bytes:  # noqa: ANN001
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").resize((64, 64), Image.NEAREST).save(buf, format="png")
    return buf.getvalue()


def build_digit_sets(root: Path) -> list[tuple[str, str]]:
    """Real data offline: scikit-learn's 1,797 8x8 digits as a classification and a retrieval set."""
    import numpy as np
    from sklearn.datasets import load_digits

    from tests.support.wds import write_wds_set

    digits = load_digits()
    imgs = [_png((255 - im * 16).clip(0, 255).astype(np.uint8)) for im in digits.images]
    labels = [int(t) for t in digits.target]
    write_wds_set(
        root / "digits",
        imgs,
        labels=labels,
        classnames=DIGIT_NAMES,
        templates=['a photo of the number: "{c}".', "a drawing of the digit {c}.", "a blurry {c}."],
        shard_size=500,
    )
    sub = list(range(0, len(imgs), 3))[:500]
    caps = [
        [f"a handwritten {DIGIT_NAMES[labels[i]]}, scan {i}", f"digit {labels[i]} number {i}"]
        for i in sub
    ]
    write_wds_set(root / "digit_captions", [imgs[i] for i in sub], captions=caps, shard_size=200)
    return [("digits", "zeroshot_classification"), ("digit_captions", "zeroshot_retrieval")]


def existing_sets(root: Path) -> list[tuple[str, str]]:
    from tasks.evaluate.datasets import dataset_task

    return [(p.name, dataset_task(p)) for p in sorted(root.iterdir()) if (p / "test").is_dir()]


def run_clip_benchmark(
    exe: Path, sets: list[tuple[str, str]], root: Path, model: Path, out: Path
) -> float:
    """One `clip_benchmark eval` per task (several datasets each); returns the wall time."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **OFFLINE_ENV}
    started = time.perf_counter()
    for task in ("zeroshot_classification", "zeroshot_retrieval"):
        names = [f"wds/{n}" for n, t in sets if t == task]
        if not names:
            continue
        cmd = [
            str(exe),
            "eval",
            "--dataset",
            *names,
            "--dataset_root",
            f"{root}/{{dataset}}",
            "--task",
            task,
            "--model",
            f"local-dir:{model}",
            "--pretrained",
            "none",
            "--no_amp",
            "--batch_size",
            "64",
            # its webdataset loader fails ("No samples found") when workers outnumber shards;
            # the sets here have one shard per split
            "--num_workers",
            "1",
            "--recall_k",
            *map(str, RECALL_K),
            "--output",
            f"{out}/{{dataset}}_{{task}}.json",
            "--quiet",
        ]
        subprocess.run(cmd, check=True, env=env, cwd=out)
    return time.perf_counter() - started


def run_clipmill(sets: list[tuple[str, str]], root: Path, model: Path, out: Path) -> float:
    """`clipmill run evaluate` with zero-shot and retrieval only (what CLIP_benchmark computes)."""
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    params = {
        "models": [str(model)],
        "eval_root": str(root),
        "datasets": [n for n, _ in sets],
        "output_dir": str(out),
        "recall_k": RECALL_K,
        "embed": {"batch_size": 64},
        "probe": {"enabled": False},
        "perception": {"enabled": False},
        "robustness": {"enabled": False},
        "membership": {"enabled": False},
    }
    pfile = out / "evaluate.yaml"
    pfile.write_text(yaml.safe_dump(params))
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "CLIPMILL_MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "CLIPMILL_MLFLOW_ARTIFACT_ROOT": (out / "mlartifacts").as_uri(),
        "CLIPMILL_RAY_NUM_CPUS": "2",
        "CLIPMILL_RAY_OBJECT_STORE_MB": "256",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "clipmill"), "run", "evaluate", "-p", str(pfile)],
        check=True,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def compare(
    sets: list[tuple[str, str]], theirs: Path, ours: Path, model_label: str
) -> dict[str, float]:
    """|ours - theirs| in percentage points for every metric both wrote (NaN = NaN counts as equal)."""
    diffs: dict[str, float] = {}
    for name, task in sets:
        a = json.loads((theirs / f"{name}_{task}.json").read_text())["metrics"]
        b = json.loads((ours / model_label / f"{name}_{task}.json").read_text())["metrics"]
        for key in sorted(set(a) & set(b)):
            x, y = float(a[key]), float(b[key])
            diffs[f"{name}/{key}"] = 0.0 if (math.isnan(x) and math.isnan(y)) else abs(x - y) * 100
        missing = set(a) ^ set(b)
        if missing:
            raise SystemExit(f"{name}: metrics only one tool wrote: {sorted(missing)}")
    return diffs


def count_images(sets: list[tuple[str, str]], root: Path) -> int:
    from tasks.evaluate.datasets import shard_paths
    from tasks.io.wds import sample_keys

    return sum(len(sample_keys(p)) for n, _ in sets for p in shard_paths(root / n, "test"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=Path, default=None, help="folder of CLIP_benchmark-layout sets")
    ap.add_argument(
        "--model", type=Path, default=None, help="model folder (default: a random small ViT)"
    )
    args = ap.parse_args()
    exe = ensure_peer()
    sample_eval = ROOT / "data" / "sample" / "eval"
    if args.sets:
        root, sets = args.sets.resolve(), existing_sets(args.sets.resolve())
    elif sample_eval.is_dir() and existing_sets(sample_eval):
        root, sets = sample_eval, existing_sets(sample_eval)
    else:
        root = WORK / "sets"
        sets = build_digit_sets(root)
    if args.model:
        model = args.model.resolve()
    else:
        from tests.support.tinymodel import save_tiny_model

        model = save_tiny_model(WORK / "model" / "bench", seed=0, cfg=BENCH_CFG)
    n_images = count_images(sets, root)
    print(f"sets: {sets} ({n_images} images) from {root}; model {model}", flush=True)
    t_theirs = run_clip_benchmark(exe, sets, root, model, WORK / "clip_benchmark")
    t_ours = run_clipmill(sets, root, model, WORK / "clipmill")
    diffs = compare(sets, WORK / "clip_benchmark", WORK / "clipmill", model.name)
    worst = max(diffs.values())
    print(
        json.dumps(
            {"diffs_pp": diffs, "seconds": {"clip_benchmark": t_theirs, "clipmill": t_ours}},
            indent=2,
        )
    )
    ours_speed, their_speed = n_images / t_ours, n_images / t_theirs
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}, Python {platform.python_version()}",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "sets": [n for n, _ in sets],
            "images": n_images,
            "sets_root": str(root.relative_to(ROOT) if root.is_relative_to(ROOT) else root),
            "model": "random open_clip ViT (64 px, 2 layers, width 128)"
            if not args.model
            else str(model),
            "precision": "fp32 both (--no_amp)",
            "clip_benchmark": "1.6.2 (PyPI, own venv)",
            "timing": "wall time of the whole command(s), model load and process start included",
            "metrics_compared": sorted(diffs),
        },
        "results": {
            "max_abs_diff_pp": {
                "ours": worst,
                "baseline": 0.0,
                "ratio": None,
                "unit": "percentage points",
                "target": 0.1,
            },
            "clip_benchmark_speed": {
                "ours": ours_speed,
                "baseline": their_speed,
                "ratio": ours_speed / their_speed,
                "unit": "images/s",
                "target": 1.0,
            },
        },
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULT}: max |diff| {worst:.4f} pp, speed ratio {ours_speed / their_speed:.2f}")


if __name__ == "__main__":
    main()
