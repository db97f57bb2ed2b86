"""The evaluate stage's linear probe on real features: every set's fits pooled (what the stage
runs, tasks/evaluate/linear_probe.py `probe_all`) against set by set (`probe` / `kfold_probe`,
the previous path), same process, same embeddings, same warm worker processes, alternating
rounds; the numbers must be identical (the run fails otherwise).

    .venv/bin/python benchmarks/evaluate_probe.py [--model data/models/teacher] [--rounds 2]

Reads the model and the eval sets under the settings' root (a `make demo`'s data/); the
embeddings come from the feature store where they are stored (heads only), else are computed
first (not timed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}"
    )


def main() -> None:
    from tasks.evaluate import suite
    from tasks.evaluate.datasets import CLASSIFICATION
    from tasks.evaluate.features import Embedder
    from tasks.evaluate.linear_probe import parallel_map, release_workers
    from tasks.evaluate.loading import load_model
    from tasks.evaluate.params import EvaluateParams
    from tasks.evaluate.stage import load_sets, probe_train_images, store_root

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/models/teacher")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "evaluate_probe.json")
    )
    args = parser.parse_args()
    params = EvaluateParams(models=[args.model])
    sets, _ = load_sets(params)
    train_sets = probe_train_images(params, sets)
    emb = Embedder(load_model(args.model), params.embed, store_root(params))
    emb.images([b for s in [*sets.values(), *train_sets.values()] for b in s.images])
    parallel_map(os.getpid, [()] * 4, params.probe.n_jobs)  # the workers up before timing

    def per_set() -> dict[str, Any]:
        return {
            n: suite._probe_one(
                emb,
                s,
                emb.images(s.images),
                params,
                suite._probe_train(s, params, train_sets.get(n)),
            )
            for n, s in sets.items()
            if s.task == CLASSIFICATION and n in params.probe.datasets
        }

    def pooled() -> dict[str, Any]:
        return suite.probe_results(emb, sets, params, train_sets)

    times: dict[str, list[float]] = {"pooled": [], "per_set": []}
    got: dict[str, dict[str, Any]] = {}
    try:
        for r in range(args.rounds):
            order = [("per_set", per_set), ("pooled", pooled)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                got[name] = fn()
                times[name].append(time.perf_counter() - start)
    finally:
        release_workers()
    for n in got["per_set"]:  # raises on any difference
        np.testing.assert_equal(vars(got["pooled"][n]), vars(got["per_set"][n]))
    ours, base = min(times["pooled"]), min(times["per_set"])
    report = {
        "machine": machine(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": {
            "model": args.model,
            "rounds": times,
            "load_average": os.getloadavg(),
            "lp_acc1": {n: r.metrics["lp_acc1"] for n, r in got["pooled"].items()},
            "identical": True,
        },
        "results": {
            "probe_pooled_vs_per_set": {
                "ours": round(ours, 2),
                "baseline": round(base, 2),
                "ratio": round(ours / base, 3),
                "unit": "wall s of one model's probes, best round (lower is better; same numbers)",
                "target": 1.0,
                "met": ours / base <= 1.0,
            }
        },
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["results"], indent=2))


if __name__ == "__main__":
    main()
