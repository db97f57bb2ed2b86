"""Merge benchmark: OPCM's memory does not grow with the number of models, and its cost per model.

- `opcm_peak_memory_8_vs_2`: peak RSS of a fresh process running OPCM over 8 models (ours)
  vs over 2 models (baseline) of the same architecture; ratio = ours / baseline, target <= 1.15
  (a merge that held every model would need ~4x the weights at 8 models).
- `opcm_seconds_per_model`: OPCM's seconds per merged model (ours) vs a uniform soup's seconds
  per model on the same 8 models (baseline); ratio = ours / baseline (the price of the SVD
  projections; reported, no target).

Models: a random open_clip CLIP (ViT image tower + text transformer, ~20M parameters, fp32) and
seeded perturbations of it as experts, written as model folders; every run reads them lazily
through tasks/clip/statedict.py exactly as the stage does. Each measurement is its own process
(`python benchmarks/merge.py --child ...`), so peak RSS belongs to that merge alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CFG: dict[str, Any] = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "layers": 6, "width": 384, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 8192, "width": 256, "heads": 4, "layers": 6},
}


def make_models(folder: Path, n: int) -> tuple[Path, list[Path]]:
    """A base folder and n experts (base + seeded noise on every floating tensor)."""
    import torch
    from safetensors.torch import save_file

    from tests.support.tinymodel import save_tiny_model

    base = save_tiny_model(folder / "base", seed=0, cfg=CFG)
    (base / "checkpoint.pt").unlink()
    (base / "open_clip_model.safetensors").unlink()
    from safetensors.torch import load_file

    state = load_file(str(base / "model.safetensors"))
    experts = []
    for i in range(n):
        gen = torch.Generator().manual_seed(i + 1)
        out = folder / f"expert{i}"
        out.mkdir(parents=True, exist_ok=True)
        moved = {
            k: (
                v + 0.05 * (v.abs().mean() + 1e-3) * torch.randn(v.shape, generator=gen)
            ).contiguous()
            for k, v in state.items()
        }
        save_file(moved, str(out / "model.safetensors"))
        (out / "open_clip_config.json").write_text((base / "open_clip_config.json").read_text())
        experts.append(out)
    return base, experts


def child(method: str, base: str, experts: list[str]) -> dict[str, float]:
    """One merge in this process: seconds and peak RSS (MB)."""
    from tasks.clip.statedict import LazyWeights
    from tasks.merge.continual import running_average  # noqa: F401  (import cost like the stage)
    from tasks.merge.keys import merged_keys
    from tasks.merge.opcm import opcm
    from tasks.merge.soup import uniform_soup

    b = LazyWeights(Path(base))
    keys = merged_keys(b, [])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if method == "opcm":
        opcm(b, (LazyWeights(Path(e)) for e in experts), keys, alpha=0.5)
    else:
        uniform_soup(b, [LazyWeights(Path(e)) for e in experts], keys)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_rss_mb": peak, "rss_before_mb": rss_before}


def run_child(method: str, base: Path, experts: list[Path]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", method, str(base), *map(str, experts)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def entry(ours: float, baseline: float, unit: str, target: float | None, **extra: Any) -> dict:
    ratio = ours / baseline
    met = None if target is None else ratio <= target
    return {
        "ours": round(ours, 3),
        "baseline": round(baseline, 3),
        "ratio": round(ratio, 3),
        "unit": unit,
        "target": target,
        "met": met,
        **extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "merge.json"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, base, *experts = args.child
        print(json.dumps(child(method, base, experts)))
        return
    import torch

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
        base, experts = make_models(Path(tmp), 8)
        size_mb = (base / "model.safetensors").stat().st_size / 2**20
        runs: dict[str, list[dict[str, float]]] = {"opcm8": [], "opcm2": [], "soup8": []}
        for _ in range(args.rounds):  # alternating rounds: the machine's load hits all alike
            runs["opcm8"].append(run_child("opcm", base, experts))
            runs["opcm2"].append(run_child("opcm", base, experts[:2]))
            runs["soup8"].append(run_child("soup", base, experts))
    peak8 = min(r["peak_rss_mb"] for r in runs["opcm8"])
    peak2 = min(r["peak_rss_mb"] for r in runs["opcm2"])
    opcm_s = min(r["seconds"] for r in runs["opcm8"]) / 8
    soup_s = min(r["seconds"] for r in runs["soup8"]) / 8
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (shared machine)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "model": "random open_clip CLIP (ViT 6x384 + text 6x256), fp32",
            "model_mb": round(size_mb, 1),
            "experts": 8,
            "rounds": args.rounds,
        },
        "runs": runs,
        "results": {
            "opcm_peak_memory_8_vs_2": entry(
                peak8, peak2, "MB peak RSS of the merging process (8 models vs 2)", 1.15
            ),
            "opcm_seconds_per_model": entry(
                opcm_s,
                soup_s,
                "seconds per merged model (OPCM vs uniform soup, same 8 models; lower is better)",
                None,
            ),
        },
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out["results"], indent=2))


if __name__ == "__main__":
    main()
