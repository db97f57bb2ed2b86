"""Web scale (issue 17): the driver's memory at 10M vs 1M inputs, curate's at 10M vs 1M rows,
and WAT extraction per core against cc2dataset, written to benchmarks/results/scale.json.

Each key is measured by its own part (benchmarks/scale_plan.py, scale_curate.py, scale_wat.py),
each a `measure(args) -> {KEY: entry}`; this script runs the chosen parts in one run and merges
their entries into the JSON (a part run alone with `--only` keeps the other keys already there).
Memory keys compare peak RSS (VmHWM, read in a fresh process per size), so they are ratios of
the same code at two sizes and do not depend on the machine's load; the WAT key compares CPU
seconds (user + sys of the process tree), not wall time.

    .venv/bin/python benchmarks/scale.py                 # every key
    .venv/bin/python benchmarks/scale.py --only extract_wat_per_core
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# key -> the module measuring it
PARTS = {
    "driver_rss_10m_vs_1m": "scale_plan",
    "curate_rss_10m_vs_1m": "scale_curate",
    "extract_wat_per_core": "scale_wat",
}


def machine() -> str:
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(PARTS), action="append", default=[])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    parser.add_argument("--small", action="store_true", help="100k vs 10k: a smoke run of the code")
    args = parser.parse_args()
    keys = args.only or list(PARTS)
    out = Path(args.out)
    measured: dict[str, Any] = {}
    for module_name in dict.fromkeys(PARTS[k] for k in keys):
        module = importlib.import_module(module_name)
        measured.update({k: v for k, v in module.measure(args).items() if k in keys})
    # read just before writing: a part measured in another run meanwhile keeps its key
    old: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    results: dict[str, Any] = {**old.get("results", {}), **measured}
    report = {
        "machine": machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "results": results,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
