"""Merge benchmark: OPCM's memory does not grow with the number of models, and its cost per model.

- `opcm_peak_memory_8_vs_2`: peak RSS of a fresh process running OPCM over 8 models (ours)
  vs over 2 models (baseline) of the same architecture; ratio = ours / baseline, target <= 1.15
  (a merge that held every model would need ~4x the weights at 8 models). The entry also
  carries the uniform soup's peaks measured the same way (for contrast: a one-pass soup holds
  one tensor of every model at once), the size of one checkpoint and the process's RSS before
  any merge (interpreter + torch + the merge code).
- `opcm_seconds_per_model`: OPCM's CPU seconds per merged model (ours) vs a uniform soup's CPU
  seconds per model on the same 8 models (baseline); ratio = ours / baseline (the price of the
  SVD projections; reported, no target). CPU seconds (user + sys of the merging process), not
  wall clock: the machine is shared.

Models: a randomly initialised open_clip CLIP written as fp32 safetensors model folders under
`--workdir`, and 8 experts = the base plus seeded noise on every tensor (so every key changes
and every matrix is projected); the folders are deleted at the end. Default: a text tower with
a 250k-token vocabulary (the size of open_clip's multilingual xlm-roberta towers), width 256,
2 blocks per tower, a ViT with patch 16 at 224 px: ~265 MB per checkpoint, dominated by the
token embedding, so the weights dominate the process while the SVDs stay cheap enough for the
shared 2-core machine. `--width 768 --text-width 512 --vocab 49408 --layers 12 --patch 32`
gives ViT-B-32 (~580 MB) on an idle machine (its SVDs take minutes per merged model). Each
measurement is its own process (`python benchmarks/merge.py --child ...`) that opens the inputs
exactly as the merge stage does (every model opened up front, checked, `changed_keys` over all
of them, then the method from tasks/merge/methods.py), so its peak RSS belongs to that merge
alone.

Peak RSS is the process's VmHWM (/proc/self/status), not `ru_maxrss`: Linux carries
`ru_maxrss` across fork + exec, so a child of a large parent reports the parent's peak (the
earlier version of this script measured 1.0 that way: both children inherited the ~1 GB peak of
the parent that had built the models).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

N_MODELS = 8


def clip_cfg(a: argparse.Namespace) -> dict[str, Any]:
    """The benchmark model's open_clip configuration (ViT image tower, transformer text tower)."""
    return {
        "embed_dim": 512,
        "vision_cfg": {
            "image_size": 224,
            "layers": a.layers,
            "width": a.width,
            "head_width": 64,
            "patch_size": a.patch,
        },
        "text_cfg": {
            "context_length": 77,
            "vocab_size": a.vocab,
            "width": a.text_width,
            "heads": a.text_width // 64,
            "layers": a.layers,
        },
    }


def make_models(folder: Path, n: int, cfg: dict[str, Any]) -> tuple[Path, list[Path]]:
    """A base model folder and n experts (base + seeded noise on every floating tensor)."""
    import open_clip
    import torch
    from safetensors.torch import load_file, save_file

    from tests.support.tinymodel import _preprocess_cfg

    base = folder / "base"
    base.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(base / "model.safetensors")
    )
    del model
    config = {
        "model_name": "bench-clip",
        "model_cfg": cfg,
        "preprocess_cfg": _preprocess_cfg(cfg),
    }
    (base / "open_clip_config.json").write_text(json.dumps(config, indent=2))
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
        del moved
        (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
        experts.append(out)
    return base, experts


def vm_kb(field: str) -> float:
    """A VmXXX line of /proc/self/status in MB (Linux; this benchmark needs it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")


def child(method: str, base: str, experts: list[str]) -> dict[str, float]:
    """One merge in this process, opened as the stage opens it: seconds, CPU seconds, peak RSS."""
    from tasks.clip.statedict import check_compatible, open_weights
    from tasks.merge.keys import changed_keys, merged_keys
    from tasks.merge.methods import METHODS, MergeJob
    from tasks.merge.params import MergeParams

    rss_floor = vm_kb("VmRSS")  # interpreter + torch + merge code, before any model is opened
    b = open_weights(base)
    models = [open_weights(e) for e in experts]
    for m in models:
        check_compatible(b, m)
    keys = changed_keys(b, models, merged_keys(b, []))
    params = MergeParams.model_validate({"methods": [method], "opcm": {"alpha": 0.5}})
    job = MergeJob(b, models, keys, params, list(range(len(models))))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    state, _ = METHODS[method](job)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert len(keys) == len(b.names()), "every key of the experts should differ from the base"
    del state
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "peak_rss_mb": vm_kb("VmHWM"),
        "rss_floor_mb": rss_floor,
    }


def run_child(method: str, base: Path, experts: list[Path]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", method, str(base), *map(str, experts)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{method} x{len(experts)}: {result}", file=sys.stderr, flush=True)
    return result


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
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--layers", type=int, default=2, help="blocks per tower (ViT-B-32: 12)")
    parser.add_argument("--width", type=int, default=256, help="ViT width (ViT-B-32: 768)")
    parser.add_argument("--patch", type=int, default=16, help="ViT patch size (ViT-B-32: 32)")
    parser.add_argument("--text-width", type=int, default=256, help="text width (ViT-B-32: 512)")
    parser.add_argument("--vocab", type=int, default=250002, help="vocabulary (ViT-B-32: 49408)")
    parser.add_argument("--workdir", default=None, help="where the checkpoints go (deleted after)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, base, *experts = args.child
        print(json.dumps(child(method, base, experts)))
        return
    import torch

    load_before = os.getloadavg()[0]
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="merge-bench-", dir=args.workdir))
    try:
        cfg = clip_cfg(args)
        code = (
            "import json, sys; from pathlib import Path; from benchmarks.merge import make_models"
        )
        code += f"; make_models(Path(sys.argv[1]), {N_MODELS}, json.loads(sys.argv[2]))"
        subprocess.run(
            [sys.executable, "-c", code, str(tmp), json.dumps(cfg)], check=True, cwd=ROOT
        )
        base = tmp / "base"
        experts = [tmp / f"expert{i}" for i in range(N_MODELS)]
        size_mb = (base / "model.safetensors").stat().st_size / 2**20
        runs: dict[str, list[dict[str, float]]] = {
            "opcm8": [],
            "opcm2": [],
            "soup8": [],
            "soup2": [],
        }
        for _ in range(args.rounds):  # alternating rounds: the machine's load hits all alike
            runs["opcm2"].append(run_child("opcm", base, experts[:2]))
            runs["soup2"].append(run_child("uniform_soup", base, experts[:2]))
            runs["soup8"].append(run_child("uniform_soup", base, experts))
            runs["opcm8"].append(run_child("opcm", base, experts))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = {k: min(r["peak_rss_mb"] for r in v) for k, v in runs.items()}
    floor = min(r["rss_floor_mb"] for v in runs.values() for r in v)
    opcm_s = min(r["cpu_seconds"] for r in runs["opcm8"]) / N_MODELS
    soup_s = min(r["cpu_seconds"] for r in runs["soup8"]) / N_MODELS
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after (shared machine)",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "model": f"random open_clip CLIP, fp32: {json.dumps(cfg)}",
            "checkpoint_mb": round(size_mb, 1),
            "experts": N_MODELS,
            "rounds": args.rounds,
            "peak_rss": "VmHWM of a fresh process per merge, opened as the merge stage opens it",
        },
        "runs": runs,
        "results": {
            "opcm_peak_memory_8_vs_2": entry(
                peak["opcm8"],
                peak["opcm2"],
                "MB peak RSS of the merging process (8 models vs 2)",
                1.15,
                checkpoint_mb=round(size_mb, 1),
                process_floor_mb=round(floor, 1),
                uniform_soup_peak_mb_8=round(peak["soup8"], 1),
                uniform_soup_peak_mb_2=round(peak["soup2"], 1),
                uniform_soup_ratio_8_vs_2=round(peak["soup8"] / peak["soup2"], 3),
            ),
            "opcm_seconds_per_model": entry(
                opcm_s,
                soup_s,
                "CPU seconds per merged model (OPCM vs uniform soup, same 8 models; lower is better)",
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
