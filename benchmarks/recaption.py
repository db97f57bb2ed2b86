"""Recaption stage throughput with a backend that does real per-image model work (CoCa generation).

Both sides caption the same synthetic images (a crawl shard and a LanceDB pool in a scratch
project root) with the `coca` backend, the same params (top-p, `--tokens` tokens, batch 8), no
teacher scores, one torch thread per worker, each in its own process, in one run:
  plain_loop   ours = `clipmill run recaption` captions/s on ONE actor (the stage's own
               `captions_per_s`: rows / seconds of the Ray Data actor-pool part, which includes
               the actor's start and model load); baseline = the same backend built once and
               called in a plain Python loop over the same images in batches (build + loop
               time); ratio = ours / baseline (target >= 0.9)
  two_workers  ours = the stage with two actors (1 CPU, 1 thread each), baseline = one actor;
               ratio = ours / baseline (target >= 1.6 on 2 cores)
The model is `--model` (default `random:clipmill-tiny-coca`: the tiny CoCa architecture with
random weights, which costs exactly what the trained one costs per token; `--tokens` tokens
are always generated because end-of-text is blocked until then). Timings on a shared machine
are noisy; rerun on an idle one.
Results: benchmarks/results/recaption.json
Usage: .venv/bin/python benchmarks/recaption.py [--rows N] [--model REF] [--tokens T]
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
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENV = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
sys.path.insert(0, str(ROOT))


def make_root(root: Path, rows: int) -> None:
    """A scratch project root: params/, one crawl shard of `rows` images, the LanceDB pool."""
    import lancedb
    import pyarrow as pa
    from PIL import Image, ImageDraw

    from tasks.io.wds import write_tar
    from tasks.pool import POOL_SCHEMA

    shutil.copytree(ROOT / "params", root / "params")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    rng = random.Random(0)
    samples, pool = [], []
    for i in range(rows):
        img = Image.new("RGB", (96, 96), tuple(rng.randrange(256) for _ in range(3)))
        ImageDraw.Draw(img).ellipse(
            (8, 8, 88, 88), fill=tuple(rng.randrange(256) for _ in range(3))
        )
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        uid, text = f"u{i:06d}", f"a coloured disc number {i}"
        samples.append((uid, {"jpg": buf.getvalue(), "txt": text}))
        pool.append(
            {
                "uid": uid,
                "url": f"http://sample.test/{uid}.jpg",
                "text": text,
                "texts": [text],
                "page_url": "http://sample.test/",
                "language": "en",
                "sha256": None,
                "width": 96,
                "height": 96,
                "original_width": 96,
                "original_height": 96,
                "shard": "shards/00000.tar",
                "status": "success",
                "error": None,
            }
        )
    write_tar(root / "data" / "crawl" / "shards" / "00000.tar", samples)
    db = lancedb.connect(str(root / "lancedb"))
    db.create_table("pool", pa.Table.from_pylist(pool, schema=POOL_SCHEMA))


def overrides(model: str, tokens: int, actors: int, out: str) -> list[str]:
    sets = {
        "backends": "[coca]",
        "paths.teacher": "null",
        "paths.out_dir": out,
        "select.only_passing": "false",
        "coca.model": model,
        "coca.generation": "top_p",
        "coca.max_tokens": str(tokens),
        "coca.min_tokens": str(tokens),
        "coca.device": "cpu",
        "compute.rows_per_block": "16",
        "compute.batch_size": "8",
        "compute.min_actors": str(actors),
        "compute.max_actors": str(actors),
        "compute.cpus_per_actor": "1",
        "compute.torch_threads": "1",
        "report.examples": "0",
    }
    return [a for k, v in sets.items() for a in ("-s", f"{k}={v}")]


def _env(root: Path) -> dict[str, str]:
    return {
        **os.environ,
        **ENV,
        "CLIPMILL_ROOT": str(root),
        "CLIPMILL_LANCEDB_URI": str(root / "lancedb"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }


def run_stage(root: Path, model: str, tokens: int, actors: int, tag: str) -> dict[str, Any]:
    """One `clipmill run recaption` with a fresh output folder; its metrics."""
    cmd = [str(ROOT / ".venv" / "bin" / "clipmill"), "run", "recaption"]
    cmd += overrides(model, tokens, actors, str(root / f"out-{tag}"))
    for _ in range(3):  # a Ray that cannot start on an overloaded machine: try again
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=_env(root), capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if "Ray failed to start" not in proc.stderr:
            break
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    metrics = json.loads((root / "metrics" / "recaption.json").read_text())
    metrics["whole_command_s"] = wall
    return metrics


PLAIN = """
import json, sys, time
import torch
torch.set_num_threads(1)
t0 = time.perf_counter()
from tasks.imaging.rgb import decode_rgb
from tasks.io.wds import read_images
from tasks.recaption.backends.base import CaptionRequest, build_captioner
from tasks.recaption.params import RecaptionParams
sets = json.loads(sys.argv[1])
p = RecaptionParams.model_validate(sets)
captioner = build_captioner("coca", p)
rows, errors = 0, 0
batch = []
items = list(read_images(sys.argv[2]))
for i, (uid, data, parts) in enumerate(items):
    batch.append(CaptionRequest(uid=uid, image=decode_rgb(data), alt_text=parts["txt"].decode(), data=data))
    if len(batch) == 8 or i == len(items) - 1:
        for a in captioner.annotate(batch):
            rows += 1
            errors += a.error is not None
        batch = []
print(json.dumps({"rows": rows, "errors": errors, "seconds": time.perf_counter() - t0}))
"""


def run_plain(root: Path, model: str, tokens: int) -> dict[str, Any]:
    """The baseline: the same backend, built once, called in a plain loop (own process)."""
    sets = {
        "backends": ["coca"],
        "coca": {
            "model": model,
            "generation": "top_p",
            "max_tokens": tokens,
            "min_tokens": tokens,
            "device": "cpu",
        },
    }
    shard = root / "data" / "crawl" / "shards" / "00000.tar"
    cmd = [sys.executable, "-c", PLAIN, json.dumps(sets), str(shard)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(root), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"plain loop failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["captions_per_s"] = out["rows"] / out["seconds"]
    return out


def result(ours: float, baseline: float, unit: str, target: float, **extra: Any) -> dict[str, Any]:
    return {
        "ours": round(ours, 4),
        "baseline": round(baseline, 4),
        "ratio": round(ours / baseline, 4) if baseline else 0.0,
        "unit": unit,
        "target": target,
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=384, help="images captioned by each side")
    ap.add_argument("--model", default="random:clipmill-tiny-coca", help="CoCa reference")
    ap.add_argument("--tokens", type=int, default=20, help="tokens generated per caption")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recaption.json"))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="clipmill-bench-recaption-"))
    try:
        make_root(root, args.rows)
        run_plain(root, args.model, 2)  # warm-up: imports in the page cache
        plain = run_plain(root, args.model, args.tokens)
        print(f"plain loop: {plain}", flush=True)
        one = run_stage(root, args.model, args.tokens, 1, "one")
        two = run_stage(root, args.model, args.tokens, 2, "two")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for name, m in (("one actor", one), ("two actors", two)):
        if m["rows_annotated"] != args.rows or m["rows_with_error"]:
            raise RuntimeError(f"{name}: {m['rows_annotated']} rows, {m['rows_with_error']} errors")
    common = {"rows": args.rows, "model": args.model, "tokens": args.tokens}
    results = {
        "plain_loop": result(
            one["captions_per_s"],
            plain["captions_per_s"],
            "captions/s",
            0.9,
            **common,
            ours_pool_seconds=round(one["pool_seconds"], 2),
            baseline_seconds=round(plain["seconds"], 2),
            ours_whole_command_s=round(one["whole_command_s"], 2),
        ),
        "two_workers": result(
            two["captions_per_s"],
            one["captions_per_s"],
            "captions/s",
            1.6,
            **common,
            ours_pool_seconds=round(two["pool_seconds"], 2),
            baseline_pool_seconds=round(one["pool_seconds"], 2),
        ),
    }
    report = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
