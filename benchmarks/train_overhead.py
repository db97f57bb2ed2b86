"""Train-stage overhead: clipmill's train stage vs a bare open_clip training loop, and 2 vs 1 workers.

Same model (clipmill-tiny-vit), same webdataset shards, same global batch, same number of steps,
in one run. Samples/s = global batch / median step wall time (data loading + forward + backward +
optimizer), skipping the first steps (warm-up). Results: benchmarks/results/train.json
  bare_open_clip  ours = stage samples/s (local mode, one process), baseline = bare loop; target >= 0.97
  two_workers     ours = stage samples/s with 2 Ray Train workers, baseline = with 1 worker
Usage: .venv/bin/python benchmarks/train_overhead.py [--shards DIR] [--steps N] [--batch B]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)

MODEL = "clipmill-tiny-vit"


def make_shards(folder: Path, n_shards: int = 4, per_shard: int = 128, size: int = 96) -> Path:
    """Synthetic shards in the crawl/curate layout (uid.jpg / uid.txt) when no real ones are given."""
    from PIL import Image, ImageDraw

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


def bare_open_clip(shards: list[str], steps: int, batch: int, lr: float = 5e-4) -> float:
    """The loop a user writes from open_clip's README and its training app: ~50 lines."""
    import open_clip
    import torch
    import webdataset as wds
    from open_clip_train.scheduler import cosine_lr

    from tasks.clip import register_repo_configs

    register_repo_configs()
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL)
    tokenizer = open_clip.get_tokenizer(MODEL)
    data = (
        wds.WebDataset(shards, resampled=True, shardshuffle=False)
        .shuffle(256)
        .decode("pil")
        .to_tuple("jpg", "txt")
        .map_tuple(preprocess, lambda t: t)
        .batched(
            batch,
            collation_fn=lambda s: (torch.stack([x[0] for x in s]), tokenizer([x[1] for x in s])),
        )
    )
    exclude = lambda n, p: p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n  # noqa: E731
    named = list(model.named_parameters())
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
            {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": 0.1},
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = cosine_lr(optimizer, lr, 10, steps)
    loss_fn = open_clip.ClipLoss()
    model.train()
    times = []
    it = iter(data)
    for step in range(steps):
        t0 = time.perf_counter()
        images, texts = next(it)
        scheduler(step)
        optimizer.zero_grad()
        image_features, text_features, logit_scale = model(images, texts)
        loss = loss_fn(image_features, text_features, logit_scale)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times[3:])


def stage(shards_dir: Path, steps: int, batch: int, workers: int, work: Path) -> float:
    """The real train stage (TorchTrainer; local mode when workers == 0), fresh run directory."""
    from tasks.train.params import TrainParams
    from tasks.train.stage import run

    tag = f"w{workers}-{time.time_ns()}"
    params = TrainParams(
        model=MODEL,
        shards=str(shards_dir),
        steps=steps,
        batch_size=batch,
        lr=5e-4,
        warmup_steps=10,
        checkpoint_every=steps,
        run_root=str(work / "runs" / tag),
        output_dir=str(work / "models" / tag),
        registered_model_name="",
        resume=False,
        num_workers=workers,
        cpus_per_worker=1.0,
        caption_fields={"txt": 1.0},
    )
    return float(run(params)["samples_per_s"])


def entry(ours: float, baseline: float, unit: str, target: float) -> dict:
    return {
        "ours": round(ours, 2),
        "baseline": round(baseline, 2),
        "ratio": round(ours / baseline, 3),
        "unit": unit,
        "target": target,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", default="", help="folder of *.tar shards (default: synthetic)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating repeats; best of each is kept"
    )
    parser.add_argument(
        "--skip-workers", action="store_true", help="skip the 2-vs-1 Ray worker comparison"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (1 = no oversubscription)"
    )
    args = parser.parse_args()
    import ray
    import torch

    torch.set_num_threads(args.threads)  # bare loop and local-mode stage alike; Ray workers use 1
    work = Path(tempfile.mkdtemp(prefix="clipmill_train_bench_"))
    shards_dir = Path(args.shards) if args.shards else make_shards(work / "shards")
    shards = sorted(str(p) for p in shards_dir.glob("*.tar"))
    ours, bare = [], []
    for r in range(args.rounds):  # alternate so a busy neighbour slows both sides alike
        bare.append(bare_open_clip(shards, args.steps, args.batch))
        ours.append(stage(shards_dir, args.steps, args.batch, 0, work))
        print(f"round {r}: bare {bare[-1]:.1f}  stage {ours[-1]:.1f} samples/s", flush=True)
    results = {"bare_open_clip": entry(max(ours), max(bare), "samples/s", 0.97)}
    if not args.skip_workers:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="WARNING",
            object_store_memory=256 * 1024 * 1024,
        )
        one, two = [], []
        for r in range(args.rounds):
            one.append(stage(shards_dir, args.steps, args.batch, 1, work))
            two.append(stage(shards_dir, args.steps, args.batch, 2, work))
            print(
                f"round {r}: 1 worker {one[-1]:.1f}  2 workers {two[-1]:.1f} samples/s", flush=True
            )
        ray.shutdown()
        results["two_workers"] = entry(max(two), max(one), "samples/s", 1.5)
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {os.getloadavg()[0]:.1f} at the end (shared machine)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "model": MODEL,
            "steps": args.steps,
            "batch": args.batch,
            "rounds": args.rounds,
            "torch_threads": args.threads,
            "shards": args.shards or "synthetic 4 x 128 samples, 96 px",
        },
        "results": results,
    }
    path = ROOT / "benchmarks" / "results" / "train.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
